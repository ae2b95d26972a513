"""Speed of ``kvsim sweep``: 64 single-instance simulations of 1,000 requests each, local executor.

Eight configurations x a goodput bisection of exactly 8 steps (the tolerance is set so small that every
search runs all its steps; every configuration meets the SLOs at the low end of the range and misses
them at the high end), each step one simulation of 1,000 requests. The whole sweep is timed as a user
runs it: planning, the process pool (one worker per CPU), the table, the plots.

Two workloads:

- ``mooncake``: the capacity-planning workload of experiments/sweeps/mooncake_capacity.yaml, the first
  1,000 requests of the Mooncake conversation trace (13.7k prompt tokens on average) on H100/H200, TP 1
  or 2, with or without 1000 GB of HiCache (skipped when ../shared is absent);
- ``random``: the reference workload of bench_sim_speed.py (2000/512 tokens, range ratio 0.5) on
  H20/H100, TP 1 or 2, fcfs or lpm.

Run: ``python benchmarks/bench_sweep.py [mooncake|random]`` (both by default). Target: <= 120 s each on
the project's 2-core machine.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from kvsim.sweep import load_sweep, run_sweep
from kvsim.sweep.executors import default_jobs

TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "traces"
    / "mooncake"
    / "conversation_trace.jsonl"
)
TARGET_S = 120.0
EXPECTED_RUNS = 64

SWEEPS = {
    "mooncake": f"""
model: Qwen3-8B
server: {{page_size: 64}}
workload: {{dataset_name: mooncake, dataset_path: {TRACE}, num_prompts: 1000}}
sweep:
  grid: {{gpu: [H100, H200], server.tp: [1, 2]}}
  variants:
    l2:
      none: {{}}
      1000GB: {{server.enable_hierarchical_cache: true, server.hicache_size: 1000}}
  goodput: {{low: 0.05, high: 6, tolerance: 1.0e-9, max_steps: 8}}
slo: {{p90_ttft_ms: 5 s, p90_tpot_ms: 60}}
""",
    "random": """
model: Qwen3-8B
workload:
  dataset_name: random
  random_input_len: 2000
  random_output_len: 512
  random_range_ratio: 0.5
  num_prompts: 1000
  seed: 1
sweep:
  grid: {gpu: [H20, H100], server.tp: [1, 2], server.schedule_policy: [fcfs, lpm]}
  goodput: {low: 0.1, high: 200, tolerance: 1.0e-9, max_steps: 8}
slo: {p90_ttft_ms: 2 s, p90_tpot_ms: 50}
""",
}


def bench(name: str) -> None:
    """Run one benchmark sweep and print its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(SWEEPS[name], encoding="utf-8")
        spec = load_sweep(path)
        started = time.perf_counter()
        result = run_sweep(spec, Path(tmp) / "out", executor="local")
        wall = time.perf_counter() - started
        timings = (Path(tmp) / "out" / "timings.csv").read_text().splitlines()[1:]
        per_run = [float(line.split(",")[1]) for line in timings]
    runs = len(result.table)
    verdict = "meets" if wall <= TARGET_S else "MISSES"
    print(f"[{name}] {runs} simulations of 1,000 requests ({result.simulated} run, {default_jobs()} workers)")
    print(f"[{name}] sweep wall time           {wall:8.1f} s   ({verdict} the {TARGET_S:.0f} s target)")
    print(
        f"[{name}] one simulation (in worker) {sum(per_run) / len(per_run):8.2f} s mean, "
        f"{max(per_run):.2f} s max"
    )
    if runs != EXPECTED_RUNS:
        print(f"[{name}] note: {runs} runs, not {EXPECTED_RUNS}: a search ended early (see the table)")


def main() -> None:
    """Run the benchmarks named on the command line (default: both)."""
    names = sys.argv[1:] or list(SWEEPS)
    for name in names:
        if name == "mooncake" and not TRACE.is_file():
            print(f"[mooncake] skipped: {TRACE} is absent")
            continue
        bench(name)


if __name__ == "__main__":
    main()
