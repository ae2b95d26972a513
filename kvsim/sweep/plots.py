"""PNG plots of a sweep (matplotlib, imported only here and only when plotting).

- ``pareto.png``: cost ($/h) against goodput (req/s), one point per configuration, the Pareto front as
  a line and the recommendation starred (written when the sweep has a cost model and an SLO);
- ``goodput.png``: each configuration's goodput as a bar (front in colour, target rate dashed);
- ``slo_vs_rate.png``: each SLO metric against the offered rate, one line per configuration (beyond
  :data:`MAX_LEGEND` configurations only the Pareto front in colour), the bound dashed: where a line
  crosses its bound is that configuration's goodput.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvsim.sweep.runner import SweepResult
    from kvsim.sweep.spec import SweepSpec

#: Configurations drawn in colour in ``slo_vs_rate.png``; beyond this only the Pareto front is.
MAX_LEGEND = 12
DEFAULT_METRICS = ("p90_ttft_ms", "p90_tpot_ms")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plot_sweep(spec: SweepSpec, result: SweepResult, out_dir: Path) -> list[Path]:
    """Write the plots of ``result`` into ``out_dir``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    configs = result.configs
    if spec.slo is not None:
        written.append(_goodput(plt, spec, configs, out_dir / "goodput.png"))
        if spec.cost is not None:
            written.append(_pareto(plt, configs, out_dir / "pareto.png"))
    written.append(_slo_vs_rate(plt, spec, result.table, out_dir / "slo_vs_rate.png"))
    return written


def _goodput(plt: Any, spec: SweepSpec, configs: Any, path: Path) -> Path:
    labels = [f"{c.config_id}: {c.configuration}" for c in configs.itertuples()]
    values = [v if _finite(v) else 0.0 for v in configs["goodput_rps"]]
    colors = ["tab:blue" if p else "tab:gray" for p in configs["pareto"]]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.35 * len(labels) + 1.2)))
    bars = ax.barh(range(len(labels)), values, color=colors)
    for bar, recommended in zip(bars, configs["recommended"], strict=True):
        if recommended:
            bar.set_edgecolor("black")
            bar.set_linewidth(2)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("goodput (req/s meeting the SLOs)")
    if spec.target_rate is not None:
        ax.axvline(
            spec.target_rate, color="tab:red", linestyle="--", label=f"target {spec.target_rate:g} req/s"
        )
        ax.legend(loc="lower right", fontsize=8)
    assert spec.slo is not None
    ax.set_title(
        f"{spec.name}: goodput within {spec.slo.describe()}\n(blue: Pareto front, outlined: recommended)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pareto(plt: Any, configs: Any, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    points = [
        (c.cost_per_hour, c.goodput_rps, c.config_id, bool(c.pareto), bool(c.recommended))
        for c in configs.itertuples()
        if _finite(c.cost_per_hour) and _finite(c.goodput_rps)
    ]
    serving = [p for p in points if p[1] > 0]
    missed = [p for p in points if p[1] <= 0]
    ax.scatter(
        [p[0] for p in serving], [p[1] for p in serving], color="tab:gray", label="configurations", zorder=2
    )
    if missed:
        ax.scatter(
            [p[0] for p in missed],
            [0.0] * len(missed),
            marker="x",
            color="tab:red",
            label="SLOs missed",
            zorder=2,
        )
    front = sorted((p for p in points if p[3]), key=lambda p: p[0])
    if front:
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            "o-",
            color="tab:blue",
            label="Pareto front",
            zorder=3,
        )
    for cost, goodput, config_id, _, recommended in serving:
        ax.annotate(str(config_id), (cost, goodput), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if recommended:
            ax.scatter(
                [cost], [goodput], marker="*", s=260, color="tab:orange", label="recommended", zorder=4
            )
    ax.set_xlabel("cost ($/hour)")
    ax.set_ylabel("goodput (req/s)")
    ax.set_title("cost vs goodput (configuration ids annotated)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slo_vs_rate(plt: Any, spec: SweepSpec, table: Any, path: Path) -> Path:
    bounds = list(spec.slo.bounds) if spec.slo is not None else []
    metrics = [b.metric for b in bounds] or [m for m in DEFAULT_METRICS if m in table.columns]
    fig, axes = plt.subplots(
        1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4.2), squeeze=False
    )
    ok = table[table["status"] == "ok"]
    groups = list(ok.groupby("config_id", sort=True))
    # With many configurations, only the Pareto front gets colours and a legend; the rest stay grey.
    crowded = len(groups) > MAX_LEGEND and "pareto" in ok
    for ax, metric in zip(axes[0], metrics, strict=False):
        for config_id, rows in groups:
            rows = rows[rows["rate"].map(_finite)].sort_values("rate")
            if metric not in rows or rows.empty:
                continue
            label = f"{config_id}: {rows['configuration'].iloc[0]}"
            if crowded and not bool(rows["pareto"].iloc[0]):
                ax.plot(rows["rate"], rows[metric], "-", color="0.8", linewidth=0.8, zorder=1)
            else:
                ax.plot(rows["rate"], rows[metric], "o-", markersize=3, label=label, zorder=2)
        bound = next((b for b in bounds if b.metric == metric), None)
        if bound is not None:
            ax.axhline(bound.value, color="black", linestyle="--", label=f"SLO {bound.describe()}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    note = " (Pareto front in colour, the rest grey)" if crowded else ""
    fig.suptitle(f"{spec.name}: SLO metrics against the offered rate{note}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
