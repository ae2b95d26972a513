"""Mooncake's global-vs-local cache comparison (issue 18), from one command.

Runs ``experiments/cluster_global_vs_local.yaml`` twice on the Mooncake conversation trace: with
``cluster.kvcm_scope: local`` (each engine its own KVCM manager and a 3M-token quota) and ``global``
(every engine under one instance id of one manager, the quota multiplied by the instance count so that
both pool the same bytes), and global again with ``cluster.shared_tiers`` (the 3FS tier's bandwidth
shared by all engines, as one store serving the fleet; the first two give each engine the tier's full
bandwidth). Writes the run directories under ``--runs``, the comparison plot
``docs/cluster/global_vs_local.png`` and ``global_vs_local.json`` beside the runs, and prints a table.

    python scripts/run_global_vs_local.py [--num-prompts 2000] [--instances 8]

Run from the repository root (the trace path in the experiment file is relative to it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kvsim.cluster.output import write_cluster_run
from kvsim.engines.experiment import resolve_config

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "cluster_global_vs_local.yaml"
PLOT = ROOT / "docs" / "cluster" / "global_vs_local.png"
#: run name -> (``cluster.kvcm_scope``, ``cluster.shared_tiers``)
VARIANTS: dict[str, tuple[str, bool]] = {
    "local": ("local", False),
    "global": ("global", False),
    "global_shared_3fs": ("global", True),
}
SCOPES = tuple(VARIANTS)


def scope_config(name: str, num_prompts: int, instances: int) -> dict[str, Any]:
    """The experiment of one variant; the global quota is the local one times the instances."""
    scope, shared = VARIANTS[name]
    config = resolve_config(EXPERIMENT, {"workload": {"num_prompts": num_prompts}})
    config["cluster"] = {
        **config["cluster"],
        "instances": instances,
        "kvcm_scope": scope,
        "shared_tiers": shared,
    }
    if scope == "global":
        config["kvcm"] = {**config["kvcm"], "quota": int(config["kvcm"]["quota"]) * instances}
    return config


def summary(metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The numbers compared: hit rates (prompt shares) and TTFT; ``wall_s`` is the simulation's cost."""
    return {
        "hit_rate": metrics["prefix_cache_reused_ratio"],
        "l3_hit_rate": metrics["l3_hit_ratio"],
        "mean_ttft_ms": metrics["mean_ttft_ms"],
        "median_ttft_ms": metrics["median_ttft_ms"],
        "p90_ttft_ms": metrics["p90_ttft_ms"],
        "completed": metrics["completed"],
        "duration_s": metrics["duration"],
        "wall_s": round(wall_s, 1),
    }


def plot(results: dict[str, dict[str, Any]], instances: int, num_prompts: int, path: Path) -> None:
    """Two panels: hit rate (all tiers, and the L3 part) and TTFT (mean, median, p90) per variant."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    hit_ax, ttft_ax = fig.subplots(1, 2)
    x = np.arange(len(SCOPES))
    width = 0.38
    for offset, key, label in ((-0.5, "hit_rate", "all tiers"), (0.5, "l3_hit_rate", "from L3 (KVCM)")):
        values = [results[s][key] for s in SCOPES]
        bars = hit_ax.bar(x + offset * width, values, width, label=label)
        hit_ax.bar_label(bars, fmt="%.3f")
    hit_ax.set_xticks(x, SCOPES)
    hit_ax.set_ylabel("prompt tokens served from cache")
    hit_ax.set_title("cache hit rate")
    hit_ax.legend()
    width = 0.27
    for offset, key in ((-1, "mean_ttft_ms"), (0, "median_ttft_ms"), (1, "p90_ttft_ms")):
        values = [results[s][key] / 1e3 for s in SCOPES]
        bars = ttft_ax.bar(x + offset * width, values, width, label=key.split("_")[0])
        ttft_ax.bar_label(bars, fmt="%.2f")
    ttft_ax.set_xticks(x, SCOPES)
    ttft_ax.set_ylabel("TTFT (s)")
    ttft_ax.set_title("time to first token")
    ttft_ax.legend()
    fig.suptitle(
        f"Global vs local KVCM: {instances} x Qwen3-8B/H20, round robin,\n"
        f"Mooncake conversation trace ({num_prompts} requests), 3M-token quota per instance id"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run every variant, write the plot and the JSON summary, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cluster_global_vs_local")
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for scope in SCOPES:
        start = time.perf_counter()
        result, _ = write_cluster_run(
            scope_config(scope, args.num_prompts, args.instances), args.runs / scope, plots=False
        )
        results[scope] = summary(result.metrics, time.perf_counter() - start)
    plot(results, args.instances, args.num_prompts, args.plot)
    (args.runs / "global_vs_local.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("| variant | hit rate | L3 hit rate | mean TTFT s | median TTFT s | p90 TTFT s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for scope in SCOPES:
        r = results[scope]
        print(
            f"| {scope} | {r['hit_rate']:.3f} | {r['l3_hit_rate']:.3f} | {r['mean_ttft_ms'] / 1e3:.2f} "
            f"| {r['median_ttft_ms'] / 1e3:.2f} | {r['p90_ttft_ms'] / 1e3:.2f} |"
        )
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
