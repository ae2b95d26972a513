"""The comparison of a simulated run with a real bench_serving result: reading, error math, the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvsim.core.errors import UserInputError
from kvsim.metrics.compare import (
    COMPARED_METRICS,
    MetricError,
    compare_metrics,
    format_comparison,
    format_error,
    mape,
    plot_comparison,
    read_bench_serving,
    read_max_total_num_tokens,
    relative_error,
)

RESULT = {
    "backend": "sglang",
    "dataset_name": "random",
    "request_rate": 4.0,
    "max_concurrency": None,
    "random_input_len": 2000,
    "random_output_len": 512,
    "random_range_ratio": 0.5,
    "duration": 50.0,
    "completed": 3,
    "mean_ttft_ms": 200.0,
    "p99_ttft_ms": 400.0,
    "input_throughput": 1000.0,
}


def _write(path: Path, *results: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return path


def test_relative_error_is_sim_over_real_minus_one() -> None:
    assert relative_error(3.0, 2.0) == 0.5
    assert relative_error(1.0, 4.0) == -0.75
    assert relative_error(5, 5) == 0.0


@pytest.mark.parametrize(("sim", "real"), [(1.0, 0.0), (None, 1.0), (1.0, None), (math.nan, 1.0), (1.0, "x")])
def test_relative_error_is_undefined_without_a_usable_real_value(sim: object, real: object) -> None:
    assert relative_error(sim, real) is None


def test_mape_averages_the_defined_absolute_errors() -> None:
    assert mape([0.5, -0.25, None]) == 0.375
    assert mape([None]) is None
    assert mape([]) is None


def test_compare_metrics_keeps_one_sided_metrics_and_drops_absent_ones() -> None:
    rows = compare_metrics(
        {"mean_ttft_ms": 300.0, "duration": 25.0}, {"mean_ttft_ms": 200.0, "p99_ttft_ms": 1.0}
    )
    assert [(r.key, r.sim, r.real, r.error) for r in rows] == [
        ("mean_ttft_ms", 300.0, 200.0, 0.5),
        ("p99_ttft_ms", None, 1.0, None),
        ("duration", 25.0, None, None),
    ]


def test_format_comparison_rows_and_mape_line() -> None:
    rows = [
        MetricError("mean_ttft_ms", "Mean TTFT (ms)", 300.0, 200.0, 0.5),
        MetricError("duration", "Benchmark duration (s)", 25.0, 50.0, -0.5),
        MetricError("p99_ttft_ms", "P99 TTFT (ms)", None, 1.0, None),
    ]
    workload = [MetricError("completed", "Successful requests", 3.0, 3.0, 0.0)]
    lines = format_comparison(rows, workload).splitlines()
    assert lines[2] == f"{'Successful requests:':<34} {'3':>12} {'3':>12} {'':>9}"
    assert lines[4] == f"{'Mean TTFT (ms):':<34} {'300.00':>12} {'200.00':>12} {'+50.0%':>9}"
    assert lines[5] == f"{'Benchmark duration (s):':<34} {'25.00':>12} {'50.00':>12} {'-50.0%':>9}"
    assert lines[6] == f"{'P99 TTFT (ms):':<34} {'-':>12} {'1.00':>12} {'n/a':>9}"
    assert lines[-1] == f"{'MAPE over 2 metrics:':<34} {'50.0%':>12}"
    assert format_error(None) == "n/a" and format_error(-0.125) == "-12.5%"


def test_read_bench_serving_takes_the_last_result_by_default(tmp_path: Path) -> None:
    first = {**RESULT, "mean_ttft_ms": 100.0}
    second = {
        **RESULT,
        "request_rate": float("inf"),  # json.dumps writes Infinity, as bench_serving's file has it
        "server_info": {"max_total_num_tokens": 123456, "disable_overlap_schedule": True},
        "input_lens": [1500, 1200, 1800],
        "output_lens": [300, 400, 500],
        "ttfts": [0.1, 0.2, 0.3],
        "itls": [[0.01], [0.02], [0.03]],
    }
    path = _write(tmp_path / "bench.jsonl", first, second)
    path.write_text(path.read_text() + "\n")  # a trailing blank line is ignored
    last = read_bench_serving(path)
    assert last.line == 2 and last.raw["mean_ttft_ms"] == 200.0
    assert last.settings["request_rate"] == math.inf
    assert last.max_total_num_tokens == 123456
    assert last.input_lens == [1500, 1200, 1800] and last.output_lens == [300, 400, 500]
    assert last.ttfts_s == [0.1, 0.2, 0.3]
    assert last.num_prompts == 3
    one = read_bench_serving(path, line=1)
    assert one.line == 1 and one.raw["mean_ttft_ms"] == 100.0
    assert one.settings == {
        "backend": "sglang",
        "dataset_name": "random",
        "request_rate": 4.0,
        "max_concurrency": None,
        "random_input_len": 2000,
        "random_output_len": 512,
        "random_range_ratio": 0.5,
    }
    assert one.server_info is None and one.max_total_num_tokens is None and one.num_prompts == 3


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("", None, "empty, expected bench_serving's JSON lines"),
        ("{not json\n", None, "result 1 is not valid JSON"),
        ("[1, 2]\n", None, "result 1 is not a JSON object"),
        ('{"backend": "sglang"}\n', None, "result 1 has none of bench_serving's metrics"),
        (json.dumps(RESULT) + "\n", 2, "--line 2 is out of range (the file has 1 results)"),
    ],
)
def test_read_bench_serving_refuses_bad_files(
    tmp_path: Path, content: str, line: int | None, message: str
) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_bench_serving(path, line)


def test_read_bench_serving_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="bench_serving result not found"):
        read_bench_serving(tmp_path / "nope.jsonl")


def test_max_total_num_tokens_from_a_server_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "[2026-01-01 10:00:00] Load weight end. type=Qwen3ForCausalLM, dtype=torch.bfloat16\n"
        "[2026-01-01 10:00:05] max_total_num_tokens=493876, chunked_prefill_size=8192, "
        "max_prefill_tokens=16384, max_running_requests=4096, context_len=40960\n"
        "[2026-01-01 11:00:05] max_total_num_tokens=400000, chunked_prefill_size=8192\n",
        encoding="utf-8",
    )
    assert read_max_total_num_tokens(log) == 400000  # the latest server start wins
    log.write_text("nothing here\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="no 'max_total_num_tokens=N' line"):
        read_max_total_num_tokens(log)
    with pytest.raises(UserInputError, match="server log not found"):
        read_max_total_num_tokens(tmp_path / "missing.log")


def test_plot_comparison_writes_a_png(tmp_path: Path) -> None:
    sim = {key: 2.0 for key, _ in COMPARED_METRICS}
    real = {key: 1.0 for key, _ in COMPARED_METRICS}
    path = plot_comparison(
        compare_metrics(sim, real), tmp_path / "c.png", sim_ttfts_s=[0.1, 0.2], real_ttfts_s=[0.15, 0.3]
    )
    assert path == tmp_path / "c.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
