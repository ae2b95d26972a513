"""Speed of ``kvsim sim``: simulated seconds per wall second for the reference workload.

3000 random requests of 2000/512 tokens (range ratio 0.5) at 8 req/s on Qwen3-8B / H20, timed as the
whole command a user runs (outputs and plots included), and the simulation alone.
Run: ``python benchmarks/bench_sim_speed.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = [
    "--model", "Qwen3-8B", "--gpu", "H20", "--dataset-name", "random", "--random-input-len", "2000",
    "--random-output-len", "512", "--random-range-ratio", "0.5", "--num-prompts", "3000",
    "--request-rate", "8", "--seed", "1",
]  # fmt: skip


def main() -> None:
    """Print the speed figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "kvsim.cli.main", "sim", *ARGS, "--output-dir", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.perf_counter() - started
        metrics = json.loads((out / "metrics.json").read_text())
        run = json.loads((out / "run.json").read_text())
    duration = metrics["duration"]
    print(f"simulated duration        {duration:10.1f} s")
    print(f"whole command wall time   {wall:10.2f} s  -> {duration / wall:8.0f}x real time")
    print(f"run (in-process) wall     {run['wall_time_s']:10.2f} s  -> {duration / run['wall_time_s']:8.0f}x")
    print(f"steps                     {metrics['prefill_steps']} prefill, {metrics['decode_steps']} decode")


if __name__ == "__main__":
    main()
