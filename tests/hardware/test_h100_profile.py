"""The packaged H100 profile: one kvsim-calibrate run, host-bound rows dropped against the H200's runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from kvsim.hardware import load_profile
from kvsim.perf.validation import ROW_SHAPES
from scripts.fit_h100 import TABLES, TWIN_RATIO, TableRule, Twins, clean_run
from tests.conftest import REPO_ROOT

H100 = REPO_ROOT / "kvsim" / "hardware" / "profiles" / "H100"
RUNS = REPO_ROOT / "calibration" / "results"
RUN = RUNS / "h100-2026-11-28-run1"
REFERENCE = (RUNS / "h200-2026-11-28-run1", RUNS / "h200-2026-11-28-run2")
SERVED = {"gemm", "attention_prefill", "attention_decode", "elementwise", "host_copy"}


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_bundled_h100_profile_loads_with_a_source_per_family() -> None:
    h100 = load_profile("NVIDIA H100 80GB HBM3")
    assert h100.name == "H100" and h100.calibrated is True
    assert h100.memory_bytes == 81559 * 1024**2  # as the driver reports it
    assert set(h100.tables) == SERVED
    assert {f for f, source in h100.sources.items() if source == "table"} == SERVED
    assert h100.sources["communication"] == "fitted"  # one GPU: a stated prior
    assert set(h100.fitted) == SERVED | {"communication"}
    assert h100.table_backends == {}  # every attention row names its backend
    assert h100.table_timing_floor_s == 0.0  # kvsim calibrate's rows are kernel time
    assert {r["dtype"] for r in h100.tables["gemm"].rows} == {"bf16", "fp8"}
    assert {r["backend"] for r in h100.tables["attention_prefill"].rows} == {"torch_sdpa_flash"}
    assert h100.fitted["attention_decode"]["backend"] == "triton"
    for family in SERVED:
        assert 0 < h100.validation_error(family, "table") < 0.1, family


def test_fa3_factor_is_the_h200s_and_says_so() -> None:
    h100, h200 = load_profile("H100"), load_profile("H200")
    key = "torch_sdpa_flash->fa3"
    assert h100.extra["attention_backend_factors"][key] == h200.extra["attention_backend_factors"][key]
    basis = yaml.safe_load((H100 / "fitted.yaml").read_text())["attention_backend_factors_basis"][key]
    assert basis.startswith("the H200's factor, reused")


@pytest.mark.parametrize("rule", TABLES, ids=lambda rule: rule.table)
def test_packaged_h100_tables_are_the_run_cleaned_by_the_single_run_rule(rule: TableRule) -> None:
    """The run's rows less the host-bound ones: rebuilt exactly from the H100 run and the H200's two."""
    header, packaged = _read(H100 / rule.file)
    _, rows = _read(RUN / rule.file)
    reference = [_read(folder / rule.file)[1] for folder in REFERENCE]
    if rule.table == "prefill_attention":
        assert header[-1] == "backend"
        rows = [{**r, "backend": "torch_sdpa_flash"} for r in rows]
        reference = [[{**r, "backend": "torch_sdpa_flash"} for r in run] for run in reference]
    kept, fixes = clean_run(rule, rows, reference)
    assert packaged == kept
    assert len(packaged) + len(fixes) == len(rows)
    if rule.table == "copy":
        assert fixes == []  # timed as served: never compared with the H200


def test_packaged_h100_meta_records_the_derivation() -> None:
    meta = json.loads((H100 / "meta.json").read_text())
    assert meta["gpu"] == "NVIDIA H100 80GB HBM3" and meta["complete"] is True
    packaged = meta["packaged"]
    assert packaged["by"] == "scripts/fit_h100.py"
    assert packaged["from"] == ["calibration/results/h100-2026-11-28-run1"]
    assert packaged["prefill_attention_backend"] == "torch_sdpa_flash"
    assert packaged["tables"]["elementwise"]["over_twin"] > 0
    assert (H100 / "launch.csv").read_bytes() == (RUN / "launch.csv").read_bytes()


def _gemm(m: int, ms: float) -> dict[str, str]:
    return {"m": str(m), "n": "4096", "k": "4096", "dtype": "bf16", "latency_ms": f"{ms:.6f}"}


def test_a_row_far_slower_than_its_h200_twin_is_dropped() -> None:
    rule = TableRule("gemm", "gemm", "gemm.csv", True, False)
    h200 = [[_gemm(1, 0.010), _gemm(2, 0.011), _gemm(4, 0.012)], [_gemm(1, 0.012), _gemm(2, 0.030)]]
    # 1.6x the faster H200 run is kept; past it the row timed the host. No twin: kept.
    run = [_gemm(1, 0.010 * TWIN_RATIO), _gemm(2, 0.011 * TWIN_RATIO * 1.01), _gemm(8, 0.5)]
    kept, fixes = clean_run(rule, run, h200)
    assert [r["m"] for r in kept] == ["1", "8"]
    assert [(f.action, f.faster_ms) for f in fixes] == [("twin", 0.011)]


def _decode(batch: int, kv_len: int, ms: float) -> dict[str, str]:
    return {
        "batch": str(batch),
        "kv_len": str(kv_len),
        "num_heads": "32",
        "num_kv_heads": "8",
        "head_dim": "128",
        "dtype": "bf16",
        "latency_ms": f"{ms:.6f}",
        "backend": "triton",
        "page_size": "1",
    }


def test_a_row_whose_h200_twin_was_host_bound_is_dropped_then_dominance_runs() -> None:
    rule = TableRule("decode_attention", "attention_decode", "decode_attention.csv", True, True)
    # Both H200 runs timed the host at batch 1 x 1024 (slower than batch 1 x 8192): its merge drops it.
    h200 = [[_decode(1, 1024, 0.060), _decode(1, 8192, 0.017), _decode(8, 1024, 0.020)]] * 2
    assert Twins.of(rule, h200).host_bound == frozenset(
        {("32", "128", "bf16", "triton", "1", "1", "1024", "8")}
    )
    run = [_decode(1, 1024, 0.070), _decode(1, 8192, 0.020), _decode(8, 1024, 0.025), _decode(8, 512, 0.05)]
    kept, fixes = clean_run(rule, run, h200)
    assert [(r["batch"], r["kv_len"]) for r in kept] == [("1", "8192"), ("8", "1024")]
    assert [f.action for f in fixes] == ["twin_host_bound", "dropped"]  # 8 x 512 slower than 8 x 1024


def test_no_packaged_kernel_row_exceeds_the_cut() -> None:
    """Every kernel-time row kept is within TWIN_RATIO of its H200 twin (the rule's invariant)."""
    for rule in TABLES:
        if not rule.against_twin:
            continue
        _, packaged = _read(H100 / rule.file)
        reference = [_read(folder / rule.file)[1] for folder in REFERENCE]
        if rule.table == "prefill_attention":
            reference = [[{**r, "backend": "torch_sdpa_flash"} for r in run] for run in reference]
        twins = Twins.of(rule, reference)
        for row in packaged:
            key = tuple(row.get(c, "") for part in ROW_SHAPES[rule.family] for c in part)
            assert key not in twins.host_bound
            assert float(row["latency_ms"]) <= TWIN_RATIO * twins.times[key], (rule.table, row)
