"""Standard plots of a run, written as PNG files into the run directory.

- ``latency_cdf.png``: CDFs of TTFT, TPOT, ITL and E2E latency (ms), one panel each.
- ``throughput.png``: output tokens per second over time, in fixed-width bins.
- ``queues.png``: running and waiting requests over time, from the iteration log.

Figures are built with matplotlib's object API on the Agg renderer (``matplotlib.figure.Figure``,
no ``pyplot``), so plotting needs no display and never changes the process-wide backend of a
notebook or application that imports kvsim.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from kvsim.metrics.records import IterationRecord, RequestRecord
from kvsim.metrics.summary import output_token_times
from kvsim.metrics.writers import ITERATIONS_FILE, REQUESTS_FILE, read_iterations, read_requests

LATENCY_CDF_PNG = "latency_cdf.png"
THROUGHPUT_PNG = "throughput.png"
QUEUES_PNG = "queues.png"

#: CDFs are drawn through at most this many quantiles; enough for the eye, cheap for 10^7 samples.
_CDF_POINTS = 2000


@dataclass
class RunData:
    """The records a run produced, in memory."""

    records: Sequence[RequestRecord]
    iterations: Sequence[IterationRecord] = field(default_factory=list)


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read ``requests.jsonl`` and, if present, ``iterations.jsonl`` from a run directory."""
    directory = Path(run_dir)
    iterations_path = directory / ITERATIONS_FILE
    iterations = read_iterations(iterations_path) if iterations_path.exists() else []
    return RunData(records=read_requests(directory / REQUESTS_FILE), iterations=iterations)


def _cdf(ax: Axes, values_s: np.ndarray, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if values_s.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    values_ms = np.sort(values_s) * 1000.0
    fractions = np.arange(1, values_ms.size + 1) / values_ms.size
    if values_ms.size > _CDF_POINTS:
        keep = np.linspace(0, values_ms.size - 1, _CDF_POINTS).astype(np.int64)
        values_ms, fractions = values_ms[keep], fractions[keep]
    ax.plot(values_ms, fractions, drawstyle="steps-post")
    ax.set_ylim(0.0, 1.0)
    p99 = float(np.percentile(values_s, 99)) * 1000.0
    ax.axvline(p99, color="grey", linestyle=":", linewidth=1, label=f"p99 = {p99:.2f} ms")
    ax.legend(loc="lower right", fontsize="small")


def plot_latency_cdf(records: Sequence[RequestRecord], path: Path) -> Path:
    """Draw the four latency CDFs (TTFT, TPOT, ITL, E2E) into ``path``."""
    ttft = np.array([r.ttft_s for r in records], dtype=np.float64)
    e2e = np.array([r.e2e_latency_s for r in records], dtype=np.float64)
    tpot = np.array([r.tpot_s for r in records if r.tpot_s is not None], dtype=np.float64)
    gaps = [np.diff(r.token_times) for r in records if r.token_times is not None]
    itl = np.concatenate(gaps) if gaps else np.zeros(0)

    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    _cdf(axes[0, 0], ttft, "Time to first token (TTFT)", "fraction of requests")
    _cdf(axes[0, 1], tpot, "Time per output token (TPOT, excl. 1st token)", "fraction of requests")
    _cdf(axes[1, 0], itl, "Inter-token latency (ITL)", "fraction of token gaps")
    _cdf(axes[1, 1], e2e, "End-to-end latency (E2E)", "fraction of requests")
    fig.suptitle(f"Latency CDFs ({len(records)} requests)")
    fig.savefig(path, dpi=100)
    return path


def plot_throughput(records: Sequence[RequestRecord], path: Path, bin_s: float | None = None) -> Path:
    """Draw output tokens per second over time, binned, into ``path``.

    Args:
        records: Finished requests; token times come from ``token_times`` (or an even spread from
            first token to finish when a record has none).
        path: The PNG to write.
        bin_s: Bin width in seconds; default 1 s (``bench_serving``'s bucket) for runs of 30 s or
            more, else a thirtieth of the run.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_title("Output token throughput over time")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("output tokens/s")
    ax.grid(True, alpha=0.3)
    if records:
        times = np.concatenate([output_token_times(r) for r in records])
        start = min(r.send_s for r in records)
        end = max(float(times.max()), start)
        span = end - start
        width = bin_s if bin_s is not None else (1.0 if span >= 30.0 else max(span / 30.0, 1e-3))
        edges = start + width * np.arange(int(np.floor(span / width)) + 2)
        counts, _ = np.histogram(times, bins=edges)
        ax.stairs(counts / width, edges, fill=True, alpha=0.6, label=f"{width:.3g} s bins")
        if span > 0:
            mean = times.size / span
            ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.1f} tok/s")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no requests", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=100)
    return path


def plot_queues(iterations: Sequence[IterationRecord], path: Path) -> Path:
    """Draw running and waiting requests over time (one point per engine step) into ``path``."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_title("Requests running and waiting")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests")
    ax.grid(True, alpha=0.3)
    if iterations:
        times = np.array([it.time_s for it in iterations], dtype=np.float64)
        running = np.array([it.num_running for it in iterations], dtype=np.int64)
        waiting = np.array([it.num_waiting for it in iterations], dtype=np.int64)
        ax.plot(times, running, drawstyle="steps-post", label="running")
        ax.plot(times, waiting, drawstyle="steps-post", label="waiting")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no iteration records", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=100)
    return path


def plot_run(
    source: str | os.PathLike[str] | RunData,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    throughput_bin_s: float | None = None,
) -> dict[str, Path]:
    """Write ``latency_cdf.png``, ``throughput.png`` and ``queues.png`` for a run.

    Args:
        source: A run directory (its ``requests.jsonl`` and ``iterations.jsonl`` are read; write
            ``requests.jsonl`` with ``include_token_times=True`` to get the ITL panel) or a
            :class:`RunData` with the records in memory.
        out_dir: Where to write the PNGs; default the run directory. Required for :class:`RunData`.
        throughput_bin_s: Bin width of the throughput plot (see :func:`plot_throughput`).

    Returns:
        ``{"latency_cdf": path, "throughput": path, "queues": path}``.
    """
    if isinstance(source, RunData):
        if out_dir is None:
            raise ValueError("plot_run needs out_dir when given in-memory RunData")
        data = source
    else:
        data = load_run(source)
        out_dir = source if out_dir is None else out_dir
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    return {
        "latency_cdf": plot_latency_cdf(data.records, target / LATENCY_CDF_PNG),
        "throughput": plot_throughput(data.records, target / THROUGHPUT_PNG, throughput_bin_s),
        "queues": plot_queues(data.iterations, target / QUEUES_PNG),
    }
