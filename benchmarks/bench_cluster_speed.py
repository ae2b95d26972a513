"""Speed of a fleet: simulated seconds per wall second of 16 instances on the Mooncake conversation trace.

The first 2000 records of ``../shared/data/traces/mooncake/conversation_trace.jsonl`` (read in place,
never copied) on 16 Qwen3-8B / H20 instances, once per router, timed in-process over the simulation
alone (workload building included; no files written). Target (issue 18): >= 20x real time on one core.
Run: ``python benchmarks/bench_cluster_speed.py [--instances N] [--num-prompts N] [--routers a,b]``.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kvsim.cluster import ROUTERS, run_cluster
from kvsim.engines.experiment import resolve_config

TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "traces"
    / "mooncake"
    / "conversation_trace.jsonl"
)


def main() -> None:
    """Print one line per router: simulated duration, wall time, speed, mean TTFT and hit rate."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=2000)
    parser.add_argument("--routers", default=",".join(ROUTERS))
    args = parser.parse_args()
    if not TRACE.is_file():
        raise SystemExit(f"trace not found: {TRACE}")
    print(f"{args.instances} instances, first {args.num_prompts} records of {TRACE.name}")
    print(f"{'router':>17} {'sim s':>8} {'wall s':>7} {'speed':>7} {'TTFT ms':>8} {'hit rate':>8}")
    for router in args.routers.split(","):
        config = resolve_config(
            None,
            {
                "workload": {
                    "dataset_name": "mooncake",
                    "dataset_path": str(TRACE),
                    "num_prompts": args.num_prompts,
                },
                "cluster": {"instances": args.instances, "router": router},
            },
        )
        started = time.perf_counter()
        result = run_cluster(config)
        wall = time.perf_counter() - started
        metrics = result.metrics
        prompt = sum(r.input_len for r in result.records)
        hit = sum(r.cached_tokens for r in result.records) / prompt if prompt else 0.0
        duration = metrics["duration"]
        print(
            f"{router:>17} {duration:8.1f} {wall:7.2f} {duration / wall:6.1f}x "
            f"{metrics['mean_ttft_ms']:8.1f} {hit:8.3f}"
        )


if __name__ == "__main__":
    main()
