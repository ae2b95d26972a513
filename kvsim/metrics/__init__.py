"""Metrics: per-request and per-step records, ``bench_serving``-compatible summaries, files and plots.

A run collects :class:`RequestRecord` objects (one per finished request) and logs one line per
engine step with :class:`IterationLogWriter`; at the end :func:`summarize` gives the numbers
``sglang.bench_serving`` reports, :func:`write_metrics` / :func:`write_requests` write them,
:func:`format_report` prints the familiar table and :func:`plot_run` draws the standard plots.

Layering: this package imports ``kvsim.core`` and ``kvsim.models`` only (in practice neither yet).
``kvsim.metrics.plots`` imports matplotlib; it is not imported here, so engines that only record
never pay for it.
"""

from kvsim.metrics.records import ITERATION_KINDS, IterationKind, IterationRecord, RequestRecord
from kvsim.metrics.report import format_report
from kvsim.metrics.summary import LATENCY_METRICS, LATENCY_STATS, latency_stats, summarize
from kvsim.metrics.writers import (
    ITERATIONS_FILE,
    METRICS_FILE,
    REQUESTS_FILE,
    IterationLogWriter,
    format_metrics,
    read_iterations,
    read_requests,
    write_metrics,
    write_requests,
)

__all__ = [
    "ITERATIONS_FILE",
    "ITERATION_KINDS",
    "LATENCY_METRICS",
    "LATENCY_STATS",
    "METRICS_FILE",
    "REQUESTS_FILE",
    "IterationKind",
    "IterationLogWriter",
    "IterationRecord",
    "RequestRecord",
    "format_metrics",
    "format_report",
    "latency_stats",
    "read_iterations",
    "read_requests",
    "summarize",
    "write_metrics",
    "write_requests",
]
