"""Files of ``kvsim optimize --output-dir``: per-read CSVs, ``summary.json`` and PNG plots.

- ``<policy>_<capacity>/<instance>_hit_rates.csv`` (``<group>_<policy>_<capacity>/`` for a KVCM config):
  one row per read with KVCM's columns (reference study §5.4; values separated by ``", "``, rates over
  blocks, masked blocks counted as *internal*), then three kvsim columns: ``InputTokens``,
  ``HitTokens`` and ``AccTokenHitRate``.
- ``summary.json``: the ``--json`` document plus what was replayed.
- ``hit_rate_over_time.png``: cumulative token hit rate and cached blocks against trace time.
- ``capacity_curve.png``: token hit rate against capacity, one line per policy, ``opt`` dashed as the
  bound, the unbounded cache as a dotted ceiling.
- ``policy_comparison.png``: token hit rate per policy, grouped by capacity.

Figures use matplotlib's object API on the Agg canvas (no ``pyplot``), imported only when plotting.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from kvsim.cache.optimizer.replay import ReplayResult, Timeline, capacity_json

T = TypeVar("T")

HIT_RATES_SUFFIX = "_hit_rates.csv"
SUMMARY_JSON = "summary.json"
TIME_PNG = "hit_rate_over_time.png"
CURVE_PNG = "capacity_curve.png"
COMPARISON_PNG = "policy_comparison.png"

CSV_COLUMNS = (
    "TimestampUs",
    "CachedBlocksCurrentInstance",
    "CachedBlocksPerInstance",
    "CachedBlocksAllInstance",
    "InternalReadBlocks",
    "ExternalReadBlocks",
    "TotalReadBlocks",
    "InternalHitBlocks",
    "InternalHitRate",
    "ExternalHitBlocks",
    "ExternalHitRate",
    "HitRate",
    "AccInternalHitRate",
    "AccExternalHitRate",
    "AccHitRate",
    "InputTokens",
    "HitTokens",
    "AccTokenHitRate",
)

#: Lines drawn at most in the hit-rate-over-time plot (a curve run may hold hundreds of results).
_MAX_TIME_LINES = 8
#: Capacity groups drawn at most in the policy comparison.
_MAX_BAR_GROUPS = 8


def result_dir_name(result: ReplayResult) -> str:
    """The folder of one result's CSVs."""
    cap = capacity_json(result.capacity_blocks)
    name = f"{result.policy}_{cap}"
    return f"{result.group}_{name}" if result.group else name


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "instance"


def write_hit_rate_csvs(result: ReplayResult, instances: Sequence[str], out_dir: Path) -> list[Path]:
    """Write one CSV per instance that read, from ``result.timeline``; return the paths."""
    tl = result.timeline
    if tl is None or not len(tl):
        return []
    folder = out_dir / _safe(result_dir_name(result))
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[int, list[str]] = {}
    acc: dict[int, list[int]] = {}
    for i in range(len(tl)):
        ii = tl.inst[i]
        per = tl.per_instance[i] if tl.per_instance else (tl.cached[i],)
        total_read = tl.read_blocks[i]
        int_read, int_hit = tl.internal_read[i], tl.internal_hit[i]
        ext_read, ext_hit = total_read - int_read, tl.hit_blocks[i] - int_hit
        a = acc.setdefault(ii, [0, 0, 0, 0, 0])  # read, internal hit, external hit, tokens, hit tokens
        a[0] += total_read
        a[1] += int_hit
        a[2] += ext_hit
        a[3] += tl.read_tokens[i]
        a[4] += tl.hit_tokens[i]
        int_rate = int_hit / total_read if total_read else 0.0
        ext_rate = ext_hit / total_read if total_read else 0.0
        acc_int = a[1] / a[0] if a[0] else 0.0
        acc_ext = a[2] / a[0] if a[0] else 0.0
        acc_tok = a[4] / a[3] if a[3] else 0.0
        values = (
            tl.time_us[i],
            tl.cached[i],
            ";".join(map(str, per)),
            sum(per),
            int_read,
            ext_read,
            total_read,
            int_hit,
            f"{int_rate:.6g}",
            ext_hit,
            f"{ext_rate:.6g}",
            f"{int_rate + ext_rate:.6g}",
            f"{acc_int:.6g}",
            f"{acc_ext:.6g}",
            f"{acc_int + acc_ext:.6g}",
            tl.read_tokens[i],
            tl.hit_tokens[i],
            f"{acc_tok:.6g}",
        )
        rows.setdefault(ii, []).append(", ".join(map(str, values)))
    paths = []
    for ii, lines in rows.items():
        path = folder / f"{_safe(instances[ii])}{HIT_RATES_SUFFIX}"
        path.write_text(",".join(CSV_COLUMNS) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def write_summary(payload: dict[str, Any], out_dir: Path) -> Path:
    """Write ``summary.json`` (sorted keys, two-space indent, trailing newline)."""
    path = out_dir / SUMMARY_JSON
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _figure(width: float, height: float, rows: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0].tolist()
    return fig, axes


def _label(result: ReplayResult) -> str:
    cap = capacity_json(result.capacity_blocks)
    base = f"{result.policy} @ {cap:,}" if isinstance(cap, int) else f"{result.policy} @ inf"
    return f"{result.group}: {base}" if result.group else base


def _spread(items: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` items spread evenly over ``items`` (first and last kept)."""
    if len(items) <= limit:
        return list(items)
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def _time_lines(results: Sequence[ReplayResult]) -> tuple[list[ReplayResult], str]:
    """The results worth a line over time, and a title suffix saying which."""
    policies = list(dict.fromkeys(r.policy for r in results))
    if len(policies) == 1 or any(r.group is not None for r in results):
        return _spread(results, _MAX_TIME_LINES), ""
    # Several policies: compare them at one capacity they share (the middle one), not a mix.
    shared = set.intersection(*({r.capacity_blocks for r in results if r.policy == p} for p in policies))
    if not shared:
        return _spread(results, _MAX_TIME_LINES), ""
    caps = sorted(shared)
    finite = [c for c in caps if not math.isinf(c)]
    cap = finite[len(finite) // 2] if finite else caps[0]
    chosen = [r for r in results if r.capacity_blocks == cap][:_MAX_TIME_LINES]
    label = "inf" if math.isinf(cap) else f"{int(cap):,}"
    return chosen, f" at {label} blocks"


def plot_hit_rate_over_time(results: Sequence[ReplayResult], path: Path) -> Path | None:
    """Cumulative token hit rate (top) and cached blocks (bottom) against trace time."""
    with_tl = [r for r in results if r.timeline is not None and len(r.timeline)]
    if not with_tl:
        return None
    lines, suffix = _time_lines(with_tl)
    fig, (top, bottom) = _figure(9, 6.5, rows=2)
    origin = min(r.timeline.time_us[0] for r in lines if r.timeline is not None)
    peak = 0.0
    for res in lines:
        tl = res.timeline
        assert tl is not None
        t_s, acc, cached = _cumulative(tl, origin)
        peak = max([peak, *acc])
        (line,) = top.plot(t_s, acc, label=_label(res), linewidth=1.4)
        bottom.plot(t_s, cached, color=line.get_color(), linewidth=1.2)
    top.set_title(f"Cumulative token hit rate over the trace{suffix}")
    top.set_ylabel("token hit rate")
    top.set_ylim(0, _rate_top(peak))
    top.grid(True, alpha=0.3)
    top.legend(fontsize="small", loc="upper left", ncols=2, framealpha=0.9)
    bottom.set_title("Cached blocks when each read arrives")
    bottom.set_xlabel("trace time (s)")
    bottom.set_ylabel("blocks")
    bottom.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def _rate_top(peak: float) -> float:
    """A y-axis top that leaves room for the legend above the highest rate."""
    return min(1.0, max(0.05, peak * 1.35 + 0.02))


def _cumulative(tl: Timeline, origin_us: int) -> tuple[list[float], list[float], list[int]]:
    t_s, acc, cached = [], [], []
    tok = hit = 0
    for i in range(len(tl)):
        tok += tl.read_tokens[i]
        hit += tl.hit_tokens[i]
        t_s.append((tl.time_us[i] - origin_us) / 1e6)
        acc.append(hit / tok if tok else 0.0)
        cached.append(sum(tl.per_instance[i]) if tl.per_instance else tl.cached[i])
    return t_s, acc, cached


def plot_capacity_curve(
    results: Sequence[ReplayResult], path: Path, gb_per_block: float | None = None
) -> Path | None:
    """Token hit rate against capacity per policy (log x), ``opt`` dashed, unbounded dotted."""
    finite: dict[str, list[ReplayResult]] = {}
    ceiling: dict[str, float] = {}
    for res in results:
        if res.group is not None:
            continue
        if math.isinf(res.capacity_blocks):
            ceiling[res.policy] = res.token_hit_rate
        else:
            finite.setdefault(res.policy, []).append(res)
    if not any(len(v) >= 2 for v in finite.values()):
        return None
    fig, (ax,) = _figure(9, 5.5)
    for policy, rows in finite.items():
        rows = sorted(rows, key=lambda r: r.capacity_blocks)
        xs = [r.capacity_blocks for r in rows]
        ys = [r.token_hit_rate for r in rows]
        if policy == "opt":
            ax.plot(xs, ys, "k--", linewidth=2, label="opt (Belady bound)")
        else:
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=policy)
    peak = max(r.token_hit_rate for rows in finite.values() for r in rows)
    if ceiling:
        top = max(ceiling.values())
        peak = max(peak, top)
        ax.axhline(top, color="grey", linestyle=":", linewidth=1.2, label=f"unbounded cache ({top:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("token hit rate")
    ax.set_ylim(0, _rate_top(peak))
    ax.set_title("Hit rate against cache capacity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    if gb_per_block:
        sec = ax.secondary_xaxis("top", functions=(lambda b: b * gb_per_block, lambda g: g / gb_per_block))
        sec.set_xlabel("capacity (GB)")
    fig.savefig(path, dpi=110)
    return path


def plot_policy_comparison(results: Sequence[ReplayResult], path: Path) -> Path | None:
    """Grouped bars: token hit rate per policy at each capacity."""
    rows = [r for r in results if r.group is None]
    if not rows:
        return None
    policies = list(dict.fromkeys(r.policy for r in rows))
    caps = _spread(sorted({r.capacity_blocks for r in rows}), _MAX_BAR_GROUPS)
    value = {(r.policy, r.capacity_blocks): r.token_hit_rate for r in rows}
    fig, (ax,) = _figure(min(14.0, 3.0 + 0.35 * len(caps) * len(policies)), 5)
    width = 0.8 / len(policies)
    for j, policy in enumerate(policies):
        xs = [i + (j - (len(policies) - 1) / 2) * width for i in range(len(caps))]
        ys = [value.get((policy, c), 0.0) for c in caps]
        bars = ax.bar(xs, ys, width=width * 0.95, label=policy)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize="x-small", padding=1)
    ax.set_xticks(range(len(caps)), [("inf" if math.isinf(c) else f"{int(c):,}") for c in caps])
    ax.set_xlabel("capacity (blocks)")
    ax.set_ylabel("token hit rate")
    ax.set_ylim(0, _rate_top(max(value.values())))
    ax.set_title("Policies compared")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", ncols=min(4, len(policies)))
    fig.savefig(path, dpi=110)
    return path


def write_outputs(
    out_dir: str | os.PathLike[str],
    payload: dict[str, Any],
    results: Sequence[ReplayResult],
    instances: Sequence[str],
    gb_per_block: float | None = None,
) -> list[Path]:
    """Write every output file into ``out_dir`` (created if needed); return the paths written."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for res in results:
        written += write_hit_rate_csvs(res, instances, folder)
    written.append(write_summary(payload, folder))
    for plotted in (
        plot_hit_rate_over_time(results, folder / TIME_PNG),
        plot_capacity_curve(results, folder / CURVE_PNG, gb_per_block),
        plot_policy_comparison(results, folder / COMPARISON_PNG),
    ):
        if plotted is not None:
            written.append(plotted)
    return written
