"""Merging two calibration runs, run-to-run spread, and the guided leave-one-out."""

from __future__ import annotations

import pytest

from kvsim.hardware import load_profile
from kvsim.hardware.tables import Table
from kvsim.perf.calibration import row_guide, table_points
from kvsim.perf.interp import GroupedTable
from kvsim.perf.validation import HOST_BOUND_RATIO, guided_table_loo, merge_runs, run_spread


def _decode(batch: int, kv_len: int, ms: float, heads: int = 32, kv: int = 8) -> dict[str, str]:
    return {
        "batch": str(batch),
        "kv_len": str(kv_len),
        "num_heads": str(heads),
        "num_kv_heads": str(kv),
        "head_dim": "128",
        "dtype": "bf16",
        "latency_ms": f"{ms:.6f}",
        "backend": "triton",
        "page_size": "1",
    }


def test_a_host_bound_row_takes_the_other_runs_value() -> None:
    run1 = [_decode(1, 1024, 0.060), _decode(1, 4096, 0.020)]
    run2 = [_decode(1, 1024, 0.015), _decode(1, 4096, 0.021)]
    kept, fixes = merge_runs("attention_decode", run1, run2)
    assert [r["latency_ms"] for r in kept] == ["0.015000", "0.020000"]  # run 2 only where 1.5x faster
    assert [(f.action, f.faster_ms) for f in fixes] == [("run2", 0.015)]


def test_a_row_slower_than_more_work_is_dropped_when_both_runs_were_host_bound() -> None:
    run = [_decode(1, 1024, 0.060), _decode(1, 8192, 0.017), _decode(8, 1024, 0.016), _decode(8, 512, 0.013)]
    kept, fixes = merge_runs("attention_decode", run, run)
    assert [(r["batch"], r["kv_len"]) for r in kept] == [("1", "8192"), ("8", "1024"), ("8", "512")]
    assert fixes[0].action == "dropped" and fixes[0].faster_ms == pytest.approx(0.016)
    # more KV heads under the same query heads read more: a config with fewer may not be slower
    fewer = [_decode(1, 4096, 0.062, kv=2), _decode(1, 4096, 0.012, kv=4)]
    assert len(merge_runs("attention_decode", fewer)[0]) == 1
    # below the ratio, or with dropping off (single cheap launches), nothing goes
    close = [_decode(1, 1024, 0.017 * HOST_BOUND_RATIO * 0.99), _decode(1, 8192, 0.017)]
    assert len(merge_runs("attention_decode", close)[0]) == 2
    assert len(merge_runs("attention_decode", run, drop_dominated=False)[0]) == 4


def test_kept_rows_are_the_text_as_read() -> None:
    row = {"m": "1", "n": "64", "k": "64", "dtype": "bf16", "latency_ms": "0.0100", "shape_of": "x"}
    kept, fixes = merge_runs("gemm", [row], [dict(row, latency_ms="0.0101")], drop_dominated=False)
    assert kept == [row] and fixes == []


def test_run_spread_pairs_rows_by_shape() -> None:
    run1 = [_decode(1, 1024, 0.020), _decode(8, 1024, 0.040)]
    run2 = [_decode(8, 1024, 0.044), _decode(32, 1024, 0.1)]
    ((row, spread),) = run_spread("attention_decode", run1, run2)
    assert row["batch"] == "8" and spread == pytest.approx(0.1)


def test_guided_loo_matches_the_naive_refit_free_version() -> None:
    """Rows sharing one guide object share its evaluation; the result equals a per-row rebuild."""
    gpu = load_profile("H200")
    full = gpu.tables["attention_prefill"]
    rows = tuple(r for r in full.rows if r["num_heads"] == 32 and r["num_kv_heads"] == 8)
    table = Table(full.family, full.path, full.columns, rows)
    guide = row_guide(gpu, "attention_prefill")
    errors = guided_table_loo(table, lambda _i: guide)
    for index, row in enumerate(rows):
        rest = Table(table.family, table.path, table.columns, rows[:index] + rows[index + 1 :])
        (key, points), *_ = table_points(
            Table(table.family, table.path, table.columns, (row,)), guide=guide
        ).items()
        others = table_points(rest, guide=guide).get(key)
        if not others:
            assert errors[index] is None
            continue
        g, x, w, t, model = points[0]
        assert errors[index] == pytest.approx(GroupedTable(others)(g, x, w, model) / t - 1, rel=1e-12)
