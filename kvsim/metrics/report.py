"""The ``bench_serving`` result table, for printing a simulated run the way a real benchmark prints.

Row labels, order and formatting (``"{:<40} {:<10}"``, two decimals for rates and latencies, 50-wide
rules) are ``sglang.bench_serving``'s, so a simulated and a measured run can be read side by side or
diffed. Rows ``bench_serving`` fills from things a simulation does not have (retokenized output
counts, text/vision input split, speculative accept length) are left out rather than faked. One row
is added: ``P99 E2E Latency (ms)``, which ``bench_serving`` saves but does not print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_WIDTH = 50


def _row(label: str, value: Any, decimals: bool) -> str:
    if decimals:
        return f"{label:<40} {float(value):<10.2f}"
    return f"{label:<40} {value:<10}"


def _section(title: str) -> str:
    return "{s:{c}^{n}}".format(s=title, n=_WIDTH, c="-")


def format_report(
    summary: Mapping[str, Any],
    *,
    backend: str | None = "kvsim",
    request_rate: float | str | None = None,
    max_concurrency: int | None = None,
) -> str:
    """Format a summary as ``bench_serving``'s "Serving Benchmark Result" block.

    Args:
        summary: Output of :func:`~kvsim.metrics.summary.summarize` (missing keys print as -1, as
            HiSim's client does).
        backend: Shown on the ``Backend:`` row; ``None`` omits the row.
        request_rate: Shown on ``Traffic request rate:`` (``inf``, a number, or ``"trace"``); ``None``
            omits the row.
        max_concurrency: Shown on ``Max request concurrency:`` ("not set" when ``None``); the row is
            printed whenever ``request_rate`` is given.

    Returns:
        The block as text, lines joined with newlines, ending in a newline.
    """

    def get(key: str) -> Any:
        return summary.get(key, -1)

    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=_WIDTH, c="=")]
    if backend is not None:
        lines.append(_row("Backend:", backend, False))
    if request_rate is not None:
        rate = request_rate
        if isinstance(rate, float) and math.isinf(rate):
            rate = "inf"
        lines.append(_row("Traffic request rate:", rate, False))
        lines.append(_row("Max request concurrency:", max_concurrency or "not set", False))
    lines += [
        _row("Successful requests:", get("completed"), False),
        _row("Benchmark duration (s):", get("duration"), True),
        _row("Total input tokens:", get("total_input_tokens"), False),
        _row("Total generated tokens:", get("total_output_tokens"), False),
        _row("Request throughput (req/s):", get("request_throughput"), True),
        _row("Input token throughput (tok/s):", get("input_throughput"), True),
        _row("Output token throughput (tok/s):", get("output_throughput"), True),
        _row("Peak output token throughput (tok/s):", get("max_output_tokens_per_s"), True),
        _row("Peak concurrent requests:", get("max_concurrent_requests"), False),
        _row("Total token throughput (tok/s):", get("total_throughput"), True),
        _row("Concurrency:", get("concurrency"), True),
        _section("End-to-End Latency"),
        _row("Mean E2E Latency (ms):", get("mean_e2e_latency_ms"), True),
        _row("Median E2E Latency (ms):", get("median_e2e_latency_ms"), True),
        _row("P99 E2E Latency (ms):", get("p99_e2e_latency_ms"), True),
        _section("Time to First Token"),
        _row("Mean TTFT (ms):", get("mean_ttft_ms"), True),
        _row("Median TTFT (ms):", get("median_ttft_ms"), True),
        _row("P99 TTFT (ms):", get("p99_ttft_ms"), True),
        _section("Time per Output Token (excl. 1st token)"),
        _row("Mean TPOT (ms):", get("mean_tpot_ms"), True),
        _row("Median TPOT (ms):", get("median_tpot_ms"), True),
        _row("P99 TPOT (ms):", get("p99_tpot_ms"), True),
        _section("Inter-Token Latency"),
        _row("Mean ITL (ms):", get("mean_itl_ms"), True),
        _row("Median ITL (ms):", get("median_itl_ms"), True),
        _row("P95 ITL (ms):", get("p95_itl_ms"), True),
        _row("P99 ITL (ms):", get("p99_itl_ms"), True),
        _row("Max ITL (ms):", get("max_itl_ms"), True),
        "=" * _WIDTH,
    ]
    return "\n".join(lines) + "\n"
