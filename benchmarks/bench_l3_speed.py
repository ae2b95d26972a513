"""Speed of ``kvsim sim`` with HiCache and KVCM as the L3 store, and what two KVCM group quotas do.

Speed (issue 13): the first 3000 records of the Mooncake conversation trace, ``--mooncake-slowdown-factor
10``, Qwen3-8B / H20 with its derived device pool, ``--page-size 64`` (SGLang's usual page size with a
storage backend; at page size 1 every token would be a KVCM key), ``--enable-hierarchical-cache`` and
``--hicache-storage-backend kvcm``. Timed three ways in one process, each the best of ``--repeats`` runs of
the simulation alone (``run_experiment``; no files), as CPU seconds of this process (other jobs on a
shared machine do not distort them) beside the wall time:

- KVCM with the reference's startup config (30 GB group quota, 10 GB for NFS: KVCM reclaims all the
  time, and its reclaimer's sampling dominates);
- KVCM with a quota nothing reaches (the L3 machinery without reclaim);
- HiCache alone (L2), the same server, as the baseline.

Demonstration (the issue's acceptance run): ``experiments/h20_qwen3_8b_mooncake_kvcm.yaml`` (a 100k-token
device pool, a 150k-token host pool, KVCM on a 3FS tier) over the first ``--demo-prompts`` records, at a
100 TB and a 400 GB group quota: L3 hit and prefetch ratios, prefetch times, reclaimed blocks and TTFT.

Run from the repository root: ``python benchmarks/bench_l3_speed.py [--repeats 1] [--demo-prompts 1000]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from kvsim.engines.experiment import resolve_config, run_experiment

TRACE = Path(__file__).resolve().parents[1].parent / "shared/data/traces/mooncake/conversation_trace.jsonl"
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments/h20_qwen3_8b_mooncake_kvcm.yaml"
SPEED_SERVER: dict[str, Any] = {"page_size": 64, "enable_hierarchical_cache": True}
SPEED_WORKLOAD: dict[str, Any] = {
    "dataset_name": "mooncake",
    "dataset_path": str(TRACE),
    "num_prompts": 3000,
    "mooncake_slowdown_factor": 10,
}
SHOWN = (
    "l3_hit_ratio",
    "l3_prefetch_ratio",
    "l2_hit_ratio",
    "prefix_cache_reused_ratio",
    "l3_prefetches",
    "l3_prefetched_tokens",
    "l3_mean_prefetch_ms",
    "l3_read_busy_s",
    "l3_write_busy_s",
    "l3_written_blocks",
    "l3_refused_blocks",
    "kvcm_reclaimed_blocks",
)


def _timed(config: dict[str, Any], repeats: int) -> tuple[float, float, dict[str, Any]]:
    """Best CPU and wall seconds of the simulation over ``repeats`` runs, and its metrics."""
    best_cpu = best_wall = float("inf")
    metrics: dict[str, Any] = {}
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        metrics = run_experiment(config).metrics
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, metrics


def _speed(repeats: int) -> None:
    runs = {
        "KVCM L3, reference startup config": (
            {**SPEED_SERVER, "hicache_storage_backend": "kvcm"},
            None,
        ),
        "KVCM L3, quota never reached": (
            {**SPEED_SERVER, "hicache_storage_backend": "kvcm"},
            {"quota": "100 TB", "type_quotas": {}},
        ),
        "HiCache (L2) only": (SPEED_SERVER, None),
    }
    print("== speed: first 3000 Mooncake conversation records, slowdown 10, Qwen3-8B / H20, page 64")
    for label, (server, kvcm) in runs.items():
        overrides: dict[str, Any] = {"server": server, "workload": SPEED_WORKLOAD}
        if kvcm is not None:
            overrides["kvcm"] = kvcm
        cpu, wall, metrics = _timed(resolve_config(None, overrides), repeats)
        duration = metrics["duration"]
        print(
            f"  {label:36s} cpu {cpu:6.2f} s ({duration / cpu:5.0f}x real time), wall {wall:6.2f} s; "
            f"simulated {duration:.0f} s, mean TTFT {metrics['mean_ttft_ms']:.0f} ms"
        )
        if "l3_hit_ratio" in metrics:
            print(
                f"  {'':36s} l3_hit_ratio {metrics['l3_hit_ratio']:.4f}, reclaimed "
                f"{metrics['kvcm_reclaimed_blocks']} blocks, refused {metrics['l3_refused_blocks']}"
            )


def _demo(prompts: int) -> None:
    print(f"== demonstration: {EXPERIMENT.name}, first {prompts} records")
    for quota in ("100 TB", "400 GB"):
        config = resolve_config(
            EXPERIMENT,
            {"workload": {"dataset_path": str(TRACE), "num_prompts": prompts}, "kvcm": {"quota": quota}},
        )
        result = run_experiment(config)
        metrics = result.metrics
        prefetched = [r for r in result.records if r.prefetched_tokens]
        print(
            f"  quota {quota:>6s}: mean TTFT {metrics['mean_ttft_ms']:.0f} ms, "
            f"median {metrics['median_ttft_ms']:.0f} ms, p99 {metrics['p99_ttft_ms']:.0f} ms"
        )
        print("    " + ", ".join(f"{key} {metrics[key]:.4g}" for key in SHOWN))
        if prefetched:
            times = sorted(r.prefetch_s or 0.0 for r in prefetched)
            tokens = sum(r.prefetched_tokens or 0 for r in prefetched)
            print(
                f"    {len(prefetched)} requests prefetched {tokens} tokens; prefetch time median "
                f"{times[len(times) // 2] * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms"
            )


def main() -> None:
    """Print the speed figures and the demonstration numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per speed figure (best is kept)")
    parser.add_argument(
        "--demo-prompts", type=int, default=1000, help="Mooncake records of the demonstration"
    )
    args = parser.parse_args()
    if not TRACE.exists():
        raise SystemExit(f"needs the Mooncake trace at {TRACE}")
    _speed(args.repeats)
    _demo(args.demo_prompts)


if __name__ == "__main__":
    main()
