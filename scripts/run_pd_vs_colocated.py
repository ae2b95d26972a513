"""PD disaggregation against co-located serving (issue 18), from one command.

Runs ``experiments/cluster_pd.yaml`` as it is (2 prefill + 2 decode Qwen3-8B/H20 instances), as 3
prefill + 1 decode, and without ``cluster.pd`` as 4 co-located instances behind the same least-load
router, all on the same workload. Writes the run directories under ``--runs`` and ``pd_vs_colocated.json``
beside them, and prints the table that docs/cluster.md shows.

    python scripts/run_pd_vs_colocated.py [--num-prompts 1000] [--request-rate 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kvsim.cluster.output import write_cluster_run
from kvsim.engines.experiment import resolve_config

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "experiments" / "cluster_pd.yaml"
#: run name -> (prefill, decode) instances, or None for the co-located fleet of the same size
VARIANTS: dict[str, tuple[int, int] | None] = {
    "colocated": None,
    "pd_2p2d": (2, 2),
    "pd_3p1d": (3, 1),
}


def variant_config(name: str, num_prompts: int, request_rate: float) -> dict[str, Any]:
    """The experiment of one variant: the file's PD section with other counts, or none at all."""
    config = resolve_config(
        EXPERIMENT, {"workload": {"num_prompts": num_prompts, "request_rate": request_rate}}
    )
    cluster = dict(config["cluster"])
    counts = VARIANTS[name]
    if counts is None:
        del cluster["pd"]
    else:
        cluster["pd"] = {**cluster["pd"], "prefill_instances": counts[0], "decode_instances": counts[1]}
    config["cluster"] = cluster
    return config


def summary(metrics: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """The numbers compared: the client's latencies and throughput, and PD's transfer and prealloc."""
    keys = (
        "mean_ttft_ms",
        "median_ttft_ms",
        "p90_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "p99_tpot_ms",
        "p99_itl_ms",
        "output_throughput",
        "pd_mean_transfer_ms",
        "pd_p99_transfer_ms",
        "pd_mean_prealloc_wait_ms",
    )
    data = {key: metrics[key] for key in keys if key in metrics}
    data["wall_s"] = wall_s
    return data


def main(argv: list[str] | None = None) -> None:
    """Run every variant, write the JSON summary, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--request-rate", type=float, default=4.0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cluster_pd")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        start = time.perf_counter()
        config = variant_config(name, args.num_prompts, args.request_rate)
        result, _ = write_cluster_run(config, args.runs / name, plots=False)
        results[name] = summary(result.metrics, time.perf_counter() - start)
    (args.runs / "pd_vs_colocated.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        "| variant | mean TTFT ms | median TTFT ms | p99 TTFT ms | mean TPOT ms | p99 TPOT ms "
        "| p99 ITL ms | output tok/s | mean KV transfer ms | mean prealloc wait ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        transfer = f"{r['pd_mean_transfer_ms']:.1f}" if "pd_mean_transfer_ms" in r else "-"
        prealloc = f"{r['pd_mean_prealloc_wait_ms']:.1f}" if "pd_mean_prealloc_wait_ms" in r else "-"
        print(
            f"| {name} | {r['mean_ttft_ms']:.0f} | {r['median_ttft_ms']:.0f} | {r['p99_ttft_ms']:.0f} "
            f"| {r['mean_tpot_ms']:.1f} | {r['p99_tpot_ms']:.1f} | {r['p99_itl_ms']:.1f} "
            f"| {r['output_throughput']:.0f} | {transfer} | {prealloc} |"
        )


if __name__ == "__main__":
    main()
