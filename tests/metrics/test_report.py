"""Tests of the bench_serving-style result table."""

from __future__ import annotations

from kvsim.metrics import RequestRecord, format_report, summarize


def test_report_rows_match_bench_serving(three_requests: list[RequestRecord]) -> None:
    text = format_report(summarize(three_requests), request_rate=float("inf"))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[-1] == "=" * 50
    assert lines[1] == f"{'Backend:':<40} {'kvsim':<10}"
    assert lines[2] == f"{'Traffic request rate:':<40} {'inf':<10}"
    assert lines[3] == f"{'Max request concurrency:':<40} {'not set':<10}"
    assert f"{'Successful requests:':<40} {3:<10}" in lines
    assert f"{'Benchmark duration (s):':<40} {0.9:<10.2f}" in lines
    assert f"{'Total input tokens:':<40} {600:<10}" in lines
    assert f"{'Total generated tokens:':<40} {9:<10}" in lines
    assert f"{'Request throughput (req/s):':<40} {3.33:<10.2f}" in lines
    assert f"{'Output token throughput (tok/s):':<40} {10.0:<10.2f}" in lines
    assert f"{'Mean TTFT (ms):':<40} {200.0:<10.2f}" in lines
    assert f"{'P99 TTFT (ms):':<40} {298.0:<10.2f}" in lines
    assert f"{'Median TPOT (ms):':<40} {150.0:<10.2f}" in lines
    assert f"{'Max ITL (ms):':<40} {200.0:<10.2f}" in lines
    sections = [line.strip("-") for line in lines if line.startswith("-")]
    assert sections == [
        "End-to-End Latency",
        "Time to First Token",
        "Time per Output Token (excl. 1st token)",
        "Inter-Token Latency",
    ]
    assert all(len(line) == 50 for line in lines if line.startswith(("-", "=")))


def test_report_without_run_rows_and_with_missing_keys() -> None:
    text = format_report({"completed": 1}, backend=None)
    lines = text.splitlines()
    assert lines[1] == f"{'Successful requests:':<40} {1:<10}"
    assert f"{'Mean TTFT (ms):':<40} {-1:<10.2f}" in lines
    assert not any(line.startswith(("Backend:", "Traffic request rate:")) for line in lines)
