"""Compare a simulated run with a real ``sglang.bench_serving`` result: read the result, measure the errors.

``bench_serving --output-file F`` appends one JSON object per benchmark to ``F`` (JSON Lines). Each object
holds the run's arguments (``backend``, ``dataset_name``, ``request_rate``, ``max_concurrency``,
``random_input_len``, ``random_output_len``, ``random_range_ratio``), the server's ``/get_server_info``
answer under ``server_info`` (the server arguments plus the scheduler's ``max_total_num_tokens``), and the
results under the names kvsim's ``metrics.json`` also uses (``duration``, ``completed``,
``total_input_tokens``, ``request_throughput``, ``input_throughput``, ``mean_ttft_ms``,
``p99_e2e_latency_ms``, ...). With ``--output-details`` it adds per-request lists: ``input_lens``,
``output_lens``, ``ttfts`` (seconds) and ``itls`` (one list of gaps in seconds per request).

Error conventions used everywhere in kvsim's comparisons:

- the **error** of a metric is ``kvsim / real - 1`` (signed; ``+0.10`` means kvsim is 10% high);
- it is undefined (``None``) where the real value is 0, missing or not finite;
- **MAPE** is the mean of ``|error|`` over the metrics (or points) where the error is defined.

Layering: imports ``kvsim.core`` only; matplotlib is imported inside :func:`plot_comparison`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvsim.core.errors import UserInputError

#: The metrics ``kvsim compare`` reports, in order: ``(key, label)``. Keys are bench_serving's.
COMPARED_METRICS: tuple[tuple[str, str], ...] = (
    ("mean_ttft_ms", "Mean TTFT (ms)"),
    ("median_ttft_ms", "Median TTFT (ms)"),
    ("p99_ttft_ms", "P99 TTFT (ms)"),
    ("mean_tpot_ms", "Mean TPOT (ms)"),
    ("median_tpot_ms", "Median TPOT (ms)"),
    ("p99_tpot_ms", "P99 TPOT (ms)"),
    ("mean_itl_ms", "Mean ITL (ms)"),
    ("median_itl_ms", "Median ITL (ms)"),
    ("p99_itl_ms", "P99 ITL (ms)"),
    ("mean_e2e_latency_ms", "Mean E2E Latency (ms)"),
    ("median_e2e_latency_ms", "Median E2E Latency (ms)"),
    ("p99_e2e_latency_ms", "P99 E2E Latency (ms)"),
    ("duration", "Benchmark duration (s)"),
    ("request_throughput", "Request throughput (req/s)"),
    ("input_throughput", "Input token throughput (tok/s)"),
    ("output_throughput", "Output token throughput (tok/s)"),
    ("total_throughput", "Total token throughput (tok/s)"),
)

#: What the two runs were asked to do; shown beside the errors but never counted in MAPE, because a
#: difference here is a difference in the workload, not an error of the simulator.
WORKLOAD_FIELDS: tuple[tuple[str, str], ...] = (
    ("completed", "Successful requests"),
    ("total_input_tokens", "Total input tokens"),
    ("total_output_tokens", "Total generated tokens"),
)

#: bench_serving's argument fields copied into :attr:`BenchServingResult.settings` when present.
SETTING_FIELDS: tuple[str, ...] = (
    "backend",
    "dataset_name",
    "request_rate",
    "max_concurrency",
    "random_input_len",
    "random_output_len",
    "random_range_ratio",
)

_MAX_TOTAL_RE = re.compile(r"max_total_num_tokens\s*=\s*(\d+)")


@dataclass(frozen=True, slots=True)
class BenchServingResult:
    """One line of a ``bench_serving`` result file.

    Attributes:
        path: The file it was read from.
        line: Its 1-based line number among the file's non-empty lines.
        raw: The whole JSON object.
        settings: The benchmark's arguments found in it (see :data:`SETTING_FIELDS`); ``request_rate``
            is a float (``inf`` for bench_serving's ``inf``/``Infinity``) or the string ``"trace"``.
        server_info: The server's ``/get_server_info`` answer, or None when absent.
        input_lens: Per-request prompt lengths (``--output-details``), or None.
        output_lens: Per-request output lengths (``--output-details``), or None.
        ttfts_s: Per-request TTFTs in seconds (``--output-details``), or None.
    """

    path: Path
    line: int
    raw: dict[str, Any]
    settings: dict[str, Any]
    server_info: dict[str, Any] | None
    input_lens: list[int] | None
    output_lens: list[int] | None
    ttfts_s: list[float] | None

    @property
    def max_total_num_tokens(self) -> int | None:
        """The server's KV pool size in tokens, from ``server_info`` when the result has it."""
        info = self.server_info or {}
        value = info.get("max_total_num_tokens")
        return int(value) if isinstance(value, int | float) and value > 0 else None

    @property
    def num_prompts(self) -> int:
        """Requests the benchmark sent: the per-request lists' length when present, else ``completed``."""
        if self.input_lens is not None:
            return len(self.input_lens)
        return int(self.raw.get("completed") or 0)


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _rate(value: Any) -> float | str | None:
    """bench_serving's ``request_rate`` as a float (``inf`` included) or ``"trace"``; None if unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "infinity"):
            return math.inf
        if text == "trace":
            return "trace"
        try:
            return float(text)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # json.dumps writes bench_serving's float("inf") as Infinity, which json.loads reads back as inf.
    return None if math.isnan(value) else float(value)


def read_bench_serving(path: str | os.PathLike[str], line: int | None = None) -> BenchServingResult:
    """Read one result from a ``bench_serving`` JSONL output file.

    Args:
        path: The ``--output-file`` of ``sglang.bench_serving`` (one JSON object per line; a file holding
            a single JSON object also works).
        line: Which result, 1-based among the non-empty lines; default the last one, because
            ``bench_serving`` appends and the latest run is usually the one wanted.

    Returns:
        The result.

    Raises:
        UserInputError: The file is missing or unreadable, the line does not exist or is not a JSON
            object, or the object has none of the compared metrics.
    """
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"bench_serving result not found: {file}")
    try:
        lines = [text for text in file.read_text(encoding="utf-8").splitlines() if text.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{file}: cannot read it ({exc})") from None
    if not lines:
        raise UserInputError(f"{file}: empty, expected bench_serving's JSON lines")
    index = len(lines) if line is None else line
    if not 1 <= index <= len(lines):
        raise UserInputError(f"{file}: --line {line} is out of range (the file has {len(lines)} results)")
    try:
        raw = json.loads(lines[index - 1])
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{file}: result {index} is not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{file}: result {index} is not a JSON object")
    if not any(_number(raw.get(key)) is not None for key, _ in COMPARED_METRICS):
        raise UserInputError(
            f"{file}: result {index} has none of bench_serving's metrics (mean_ttft_ms, duration, ...)"
        )
    settings = {key: raw[key] for key in SETTING_FIELDS if key in raw}
    if "request_rate" in settings:
        settings["request_rate"] = _rate(settings["request_rate"])
    info = raw.get("server_info")

    def ints(key: str) -> list[int] | None:
        values = raw.get(key)
        if not isinstance(values, list) or not values:
            return None
        return [int(v) for v in values]

    ttfts = raw.get("ttfts")
    return BenchServingResult(
        path=file,
        line=index,
        raw=raw,
        settings=settings,
        server_info=info if isinstance(info, dict) else None,
        input_lens=ints("input_lens"),
        output_lens=ints("output_lens"),
        ttfts_s=[float(v) for v in ttfts] if isinstance(ttfts, list) and ttfts else None,
    )


def read_max_total_num_tokens(path: str | os.PathLike[str]) -> int:
    """The KV pool size an SGLang server logged at start-up (``max_total_num_tokens=N``).

    The last occurrence wins: a log that spans a restart describes the latest server last.

    Raises:
        UserInputError: The file is missing or holds no ``max_total_num_tokens=N``.
    """
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"server log not found: {file}")
    found = _MAX_TOTAL_RE.findall(file.read_text(encoding="utf-8", errors="replace"))
    if not found:
        raise UserInputError(f"{file}: no 'max_total_num_tokens=N' line (is it the SGLang server's log?)")
    return int(found[-1])


def relative_error(sim: Any, real: Any) -> float | None:
    """``sim / real - 1``; None when either value is missing or not finite, or ``real`` is 0."""
    s, r = _number(sim), _number(real)
    if s is None or r is None or r == 0.0:
        return None
    return s / r - 1.0


def mape(errors: Iterable[float | None]) -> float | None:
    """Mean absolute (relative) error over the defined errors; None when none is defined."""
    defined = [abs(e) for e in errors if e is not None]
    return sum(defined) / len(defined) if defined else None


@dataclass(frozen=True, slots=True)
class MetricError:
    """One metric of a comparison: both values and the error (see the module docstring)."""

    key: str
    label: str
    sim: float | None
    real: float | None
    error: float | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``kvsim compare --json`` prints."""
        return {"key": self.key, "sim": self.sim, "real": self.real, "error": self.error}


def compare_metrics(
    sim: Mapping[str, Any],
    real: Mapping[str, Any],
    metrics: Sequence[tuple[str, str]] = COMPARED_METRICS,
) -> list[MetricError]:
    """Per-metric errors of a simulated summary against a real one (both with bench_serving's keys).

    Metrics missing on both sides are left out; a metric missing on one side is kept with error None.
    """
    rows = []
    for key, label in metrics:
        s, r = _number(sim.get(key)), _number(real.get(key))
        if s is None and r is None:
            continue
        rows.append(MetricError(key, label, s, r, relative_error(s, r)))
    return rows


def _value(value: float | None, decimals: int = 2) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def format_error(error: float | None) -> str:
    """An error as a signed percentage with one decimal (``+12.5%``), or ``n/a``."""
    return "n/a" if error is None else f"{error * 100:+.1f}%"


def format_comparison(rows: Sequence[MetricError], workload: Sequence[MetricError] = ()) -> str:
    """The comparison as a text table (bench_serving's label column, then kvsim, real and the error).

    Args:
        rows: The compared metrics (from :func:`compare_metrics`).
        workload: Workload rows (:data:`WORKLOAD_FIELDS`), shown first and kept out of the MAPE line.

    Returns:
        The table, ending in a ``MAPE`` line and a newline.
    """
    head = f"{'':<34} {'kvsim':>12} {'real':>12} {'error':>9}"
    lines = ["{s:{c}^{n}}".format(s=" kvsim vs real (bench_serving) ", n=len(head), c="="), head]
    if workload:
        for row in workload:
            # Counts: whole numbers, as bench_serving prints them.
            sim, real = _value(row.sim, 0), _value(row.real, 0)
            lines.append(f"{row.label + ':':<34} {sim:>12} {real:>12} {'':>9}")
        lines.append("-" * len(head))
    for row in rows:
        lines.append(
            f"{row.label + ':':<34} {_value(row.sim):>12} {_value(row.real):>12} {format_error(row.error):>9}"
        )
    lines.append("-" * len(head))
    total = mape(row.error for row in rows)
    counted = sum(row.error is not None for row in rows)
    shown = "n/a" if total is None else f"{total * 100:.1f}%"
    lines.append(f"{'MAPE over ' + str(counted) + ' metrics:':<34} {shown:>12}")
    return "\n".join(lines) + "\n"


def plot_comparison(
    rows: Sequence[MetricError],
    path: str | os.PathLike[str],
    *,
    sim_ttfts_s: Sequence[float] | None = None,
    real_ttfts_s: Sequence[float] | None = None,
    title: str = "kvsim vs real",
) -> Path:
    """Draw the comparison: kvsim and real bars for each latency and throughput metric, and TTFT CDFs.

    Panels: TTFT, TPOT, ITL and E2E latency (mean, median, p99 side by side), throughputs, and the TTFT
    CDFs of both runs when per-request TTFTs are known on both sides (bench_serving's
    ``--output-details``). Each bar pair is labelled with its error.

    Returns:
        ``path``.
    """
    # Imported only when plotting, which keeps `kvsim compare --no-plot` light.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    by_key = {row.key: row for row in rows}
    groups = [
        ("TTFT (ms)", ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms")),
        ("TPOT (ms)", ("mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms")),
        ("ITL (ms)", ("mean_itl_ms", "median_itl_ms", "p99_itl_ms")),
        ("E2E latency (ms)", ("mean_e2e_latency_ms", "median_e2e_latency_ms", "p99_e2e_latency_ms")),
        ("throughput (tok/s)", ("input_throughput", "output_throughput", "total_throughput")),
    ]
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (name, keys) in zip(axes, groups, strict=False):
        present = [by_key[k] for k in keys if k in by_key]
        ax.set_title(name)
        ax.grid(True, axis="y", alpha=0.3)
        if not present:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = range(len(present))
        sims = [row.sim or 0.0 for row in present]
        reals = [row.real or 0.0 for row in present]
        ax.bar([x - 0.2 for x in xs], sims, width=0.4, label="kvsim", color="tab:blue")
        ax.bar([x + 0.2 for x in xs], reals, width=0.4, label="real", color="tab:orange")
        ax.set_xticks(list(xs), [row.key.split("_")[0] for row in present])
        for x, row in zip(xs, present, strict=True):
            top = max(row.sim or 0.0, row.real or 0.0)
            ax.annotate(format_error(row.error), (x, top), ha="center", va="bottom", fontsize="small")
        ax.margins(y=0.12)  # room for the error labels above the bars
    cdf = axes[5]
    cdf.set_title("TTFT CDF")
    cdf.grid(True, alpha=0.3)
    if sim_ttfts_s and real_ttfts_s:
        series = ((sim_ttfts_s, "kvsim", "tab:blue"), (real_ttfts_s, "real", "tab:orange"))
        for values, label, color in series:
            ordered = sorted(v * 1000.0 for v in values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            cdf.plot(ordered, fractions, drawstyle="steps-post", label=label, color=color)
        cdf.set_xlabel("TTFT (ms)")
        cdf.set_ylabel("fraction of requests")
        cdf.legend(loc="lower right", fontsize="small")
    else:
        cdf.text(
            0.5,
            0.5,
            "per-request TTFTs need\nbench_serving --output-details",
            ha="center",
            va="center",
            transform=cdf.transAxes,
        )
    handles = [Patch(color="tab:blue", label="kvsim"), Patch(color="tab:orange", label="real")]
    fig.legend(handles=handles, loc="outside upper right", ncols=2)
    fig.suptitle(title)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    return target
