"""Running sweeps: resuming, failing runs, the recommendation and the files written."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from kvsim.sweep import load_sweep, run_sweep
from kvsim.sweep.table import pareto_front

STUB = "tests.sweep.stubs:linear_latency"
GOODPUT = "  goodput: {low: 0.5, high: 64, tolerance: 0.05, max_steps: 6}\nslo: {p90_ttft_ms: 1 s}\n"


class Interrupt(Exception):
    """Stands for a Ctrl-C in the middle of a sweep."""


def test_resume_skips_finished_runs(sweep_file: Callable[[str], Path], tmp_path: Path) -> None:
    spec = load_sweep(sweep_file("sweep:\n  grid: {server.tp: [1, 2, 4]}\n" + GOODPUT))
    out = tmp_path / "out"
    seen: list[str] = []

    def interrupt_after_four(record: Mapping[str, Any]) -> None:
        seen.append(record["run_id"])
        if len(seen) == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep(spec, out, jobs=1, plots=False, simulator=STUB, on_record=interrupt_after_four)
    assert len(list((out / "runs").glob("*.json"))) == 4

    resumed = run_sweep(spec, out, jobs=1, plots=False, simulator=STUB)
    assert resumed.reused == 4
    total = len(resumed.table)
    assert resumed.simulated == total - 4

    again = run_sweep(spec, out, jobs=1, plots=False, simulator=STUB)
    assert (again.simulated, again.reused) == (0, total)
    pd.testing.assert_frame_equal(again.table, resumed.table, check_exact=True)

    # A fresh directory gives the same table as the interrupted-then-resumed one.
    fresh = run_sweep(spec, tmp_path / "fresh", jobs=1, plots=False, simulator=STUB)
    pd.testing.assert_frame_equal(fresh.table, resumed.table, check_exact=True)


def test_a_growing_grid_reuses_the_runs_it_has(sweep_file: Callable[[str], Path], tmp_path: Path) -> None:
    small = load_sweep(sweep_file("sweep:\n  grid: {server.tp: [1]}\n" + GOODPUT))
    first = run_sweep(small, tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    grown = load_sweep(sweep_file("sweep:\n  grid: {server.tp: [1, 2]}\n" + GOODPUT))
    second = run_sweep(grown, tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    assert second.reused == first.simulated
    assert second.simulated == len(second.table) - first.simulated


def test_a_failing_run_is_reported_in_its_row(sweep_file: Callable[[str], Path], tmp_path: Path) -> None:
    # Qwen3-32B's bf16 weights (about 61 GiB) do not fit one 48 GB L40S: that run fails, the others run.
    body = (
        "sweep:\n  grid:\n    model: [Qwen3-0.6B, Qwen3-32B]\n    gpu: [L40S]\n"
        "    workload.request_rate: [2, 8]\n"
    )
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=2, plots=False)
    table = result.table.set_index(["model", "rate"])
    assert list(result.table["status"]) == ["ok", "ok", "failed", "failed"]
    assert table.loc[("Qwen3-0.6B", 2.0), "completed"] == 8
    error = table.loc[("Qwen3-32B", 8.0), "error"]
    assert error.startswith("Qwen3-32B needs ") and error.endswith("more than one L40S's 44.4 GiB")
    assert math.isnan(table.loc[("Qwen3-32B", 8.0), "completed"])
    record = json.loads(
        (tmp_path / "out" / "runs" / f"{table.loc[('Qwen3-32B', 2.0), 'run_id']}.json").read_text()
    )
    assert record["status"] == "failed" and "Traceback" in record["traceback"]
    assert list(result.configs["failed_runs"]) == [0, 2]


def test_a_failure_in_a_goodput_search_ends_that_search_only(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20, H100]}\n" + GOODPUT))
    result = run_sweep(
        spec, tmp_path / "out", jobs=1, plots=False, simulator="tests.sweep.stubs:fails_on_h100"
    )
    configs = result.configs.set_index("gpu")
    assert configs.loc["H100", "goodput_rps"] == 0.0
    assert configs.loc["H100", "goodput_status"] == "none"
    assert configs.loc["H100", "first_error"] == "RuntimeError: stub failure on H100"
    # The stub's known bisection: 0.5 met, 64 missed, 5.65685 missed, 1.68179 met, 3.08442 met, 4.17709
    # missed, and 6 steps are spent.
    assert configs.loc["H20", "goodput_rps"] == 3.08442
    assert result.recommendation.config_id == 0


def test_no_configuration_meeting_the_slo_is_a_clear_message(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    body = "sweep:\n  grid: {server.tp: [1, 2]}\n  goodput: {low: 9, high: 64}\nslo: {p90_ttft_ms: 1 s}\n"
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    assert not result.recommendation.feasible
    assert result.recommendation.config_id is None
    assert result.recommendation.text == (
        "no configuration meets the SLOs (p90_ttft_ms <= 1000) at any rate tried (the lowest: 9 req/s).\n"
        "closest: config 1 (tp=2) at 9 req/s: p90_ttft_ms=1125 (<= 1000).\n"
        "Relax the SLOs, lower sweep.goodput.low, or add larger configurations."
    )
    assert list(result.configs["goodput_rps"]) == [0.0, 0.0]


def test_target_rate_recommends_the_cheapest_reaching_it(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    # Goodput ~4 req/s per TP rank; a 7 req/s target needs tp 2, the cheaper of tp 2 and tp 4.
    body = (
        "sweep:\n  grid: {server.tp: [1, 2, 4]}\n  target_rate: 7\n"
        "  goodput: {low: 0.5, high: 64, tolerance: 0.01, max_steps: 12}\nslo: {p90_ttft_ms: 1 s}\n"
        "cost: {gpu_hour: {H20: 1.0}}\n"
    )
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    assert result.recommendation.config_id == 1
    assert result.recommendation.text.startswith("recommended: config 1 (tp=2)\n")
    assert "why: the cheapest of 2 configurations reaching 7 req/s" in result.recommendation.text
    assert list(result.configs["cost_per_hour"]) == [1.0, 2.0, 4.0]
    assert list(result.configs["recommended"]) == [False, True, False]
    assert list(result.table.groupby("config_id")["recommended"].all()) == [False, True, False]


def test_unreachable_target_rate_says_which_configuration_comes_closest(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    body = "sweep:\n  grid: {server.tp: [1, 2]}\n  target_rate: 100\n" + GOODPUT
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    assert not result.recommendation.feasible
    assert result.recommendation.text.startswith(
        "no configuration reaches the target rate 100 req/s within the SLOs (p90_ttft_ms <= 1000); "
        "the highest goodput is config 1 (tp=2)"
    )


def test_pareto_front_keeps_the_undominated() -> None:
    points = {0: (1.0, 4.0), 1: (2.0, 8.0), 2: (2.0, 6.0), 3: (4.0, 8.0), 4: (0.5, 0.0), 5: (math.nan, 9.0)}
    assert pareto_front(points) == {0, 1}


def test_cost_adds_gpus_and_host_memory(sweep_file: Callable[[str], Path], tmp_path: Path) -> None:
    body = (
        "sweep:\n  grid: {server.tp: [1, 2]}\n  variants:\n    l2:\n      none: {}\n"
        "      200GB: {server.enable_hierarchical_cache: true, server.hicache_size: 200}\n"
        "slo: {p90_ttft_ms: 10 s}\ncost: {gpu_hour: {H20: 1.0}, storage_gb_month: {host_dram: 7.3}}\n"
    )
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=2)
    configs = result.configs.set_index("configuration")
    assert configs.loc["tp=1 l2=none", "cost_per_hour"] == 1.0
    l2 = result.table.set_index("configuration").loc["tp=2 l2=200GB"]
    # hicache_size is GB per GPU: two GPUs hold 2 x 200 GB (whole tokens, so a little less).
    assert 399.99e9 < l2["l2_bytes"] <= 400e9
    assert configs.loc["tp=2 l2=200GB", "storage_cost_per_hour"] == l2["l2_bytes"] / 1e9 * 7.3 / 730
    assert configs.loc["tp=2 l2=200GB", "gpu_cost_per_hour"] == 2.0
    assert list(result.table["status"]) == ["ok"] * 4
    assert sorted(p.name for p in result.plots) == ["goodput.png", "pareto.png", "slo_vs_rate.png"]
    for name in ("sweep.parquet", "configs.csv", "timings.csv", "summary.txt", "sweep.resolved.yaml"):
        assert (tmp_path / "out" / name).is_file()
    assert pd.read_parquet(tmp_path / "out" / "sweep.parquet").equals(result.table)
    assert not [c for c in result.table.columns if "wall" in c]


def test_a_cluster_sweep_runs_fleets_and_counts_their_gpus(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    cluster = pytest.importorskip("kvsim.cluster", reason="needs kvsim.cluster (the clusters issue)")
    if not hasattr(cluster, "run_cluster"):
        pytest.skip("kvsim.cluster has no run_cluster yet")
    body = (
        "server: {enable_hierarchical_cache: true, hicache_size: 200}\n"
        "sweep:\n  grid: {cluster.instances: [1, 2], workload.request_rate: [4]}\nslo: {p90_ttft_ms: 10 s}\n"
        "cost: {gpu_hour: {H20: 1.0}, storage_gb_month: {host_dram: 0.0}}\n"
    )
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=1, plots=False)
    table = result.table
    assert list(table["status"]) == ["ok", "ok"]
    assert list(table["gpus"]) == [1, 2]
    assert list(table["completed"]) == [8, 8]
    # Each instance has its own host pool: two instances provision twice the bytes.
    assert table["l2_bytes"].iloc[1] == 2 * table["l2_bytes"].iloc[0]
    assert list(result.configs["cost_per_hour"]) == [1.0, 2.0]
