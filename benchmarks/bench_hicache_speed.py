"""Speed of ``kvsim sim`` with HiCache, and what HiCache does to the same run (issue 12's workload).

The workload: 64 groups x 16 shared-prefix prompts (2048-token system prompt, 128-token question, 256
output tokens) at 8 req/s on Qwen3-8B / H20 with a 100k-token device pool, too small for the 64 system
prompts (131k tokens). Speed is simulated seconds per wall second, measured three ways:

- the simulation alone (``run_experiment`` in this process, best of three);
- the whole command as a user runs it, ``--no-plots`` (Python start-up and imports included);
- the whole command with its plots (the command exactly as the issue gives it).

The same run without ``--enable-hierarchical-cache`` is timed alongside (same machine, same call), and
both runs' TTFT and cache ratios are printed. Run: ``python benchmarks/bench_hicache_speed.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from kvsim.engines.experiment import resolve_config, run_experiment

ARGS = [
    "--model", "Qwen3-8B", "--gpu", "H20", "--dataset-name", "generated-shared-prefix",
    "--gsp-num-groups", "64", "--gsp-prompts-per-group", "16", "--gsp-system-prompt-len", "2048",
    "--gsp-question-len", "128", "--gsp-output-len", "256", "--request-rate", "8",
    "--max-total-tokens", "100000",
]  # fmt: skip
HICACHE = ["--enable-hierarchical-cache"]


def _overrides(hicache: bool) -> dict[str, Any]:
    return {
        "model": "Qwen3-8B",
        "gpu": "H20",
        "server": {"max_total_tokens": 100_000, "enable_hierarchical_cache": hicache},
        "workload": {
            "dataset_name": "generated-shared-prefix",
            "gsp_num_groups": 64,
            "gsp_prompts_per_group": 16,
            "gsp_system_prompt_len": 2048,
            "gsp_question_len": 128,
            "gsp_output_len": 256,
            "request_rate": 8,
        },
    }


def _in_process(hicache: bool) -> tuple[float, dict[str, Any]]:
    """Best-of-three wall time of the simulation alone, and its metrics."""
    config = resolve_config(None, _overrides(hicache))
    best = float("inf")
    metrics: dict[str, Any] = {}
    for _ in range(3):
        started = time.perf_counter()
        metrics = run_experiment(config).metrics
        best = min(best, time.perf_counter() - started)
    return best, metrics


def _command(extra: list[str]) -> float:
    """Wall time of one ``kvsim sim`` command."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "kvsim.cli.main", "sim", *ARGS, *extra, "--output-dir", f"{tmp}/r"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    """Print the speed figures and the L2 demonstration numbers."""
    for label, hicache in (("HiCache", True), ("no HiCache", False)):
        wall, metrics = _in_process(hicache)
        duration = metrics["duration"]
        bare = _command((HICACHE if hicache else []) + ["--no-plots"])
        plotted = _command(HICACHE if hicache else [])
        print(f"== {label}: simulated duration {duration:.1f} s")
        print(f"  simulation alone          {wall:6.2f} s -> {duration / wall:6.0f}x real time")
        print(f"  whole command, no plots   {bare:6.2f} s -> {duration / bare:6.0f}x")
        print(f"  whole command, plots      {plotted:6.2f} s -> {duration / plotted:6.0f}x")
        print(f"  mean TTFT {metrics['mean_ttft_ms']:.0f} ms, median {metrics['median_ttft_ms']:.0f} ms")
        if hicache:
            keys = ("prefix_cache_reused_ratio", "l2_hit_ratio", "l2_loaded_tokens", "l2_backed_up_tokens")
            print("  " + json.dumps({key: metrics[key] for key in keys}))


if __name__ == "__main__":
    main()
