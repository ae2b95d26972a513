"""Speed and check values of ``kvsim optimize`` on the Mooncake conversation trace; prints figures.

Targets from issue 9 (each timing includes parsing the 3 MB trace, not the Python start-up and imports):

- one LRU replay of the conversation trace (288,500 block touches) <= 1 s;
- the exact LRU curve for 50 capacities <= 1.5 s;
- ``opt`` <= 10 s.

Check values (LRU, token / block hit rate): 6000 blocks -> 0.1413 / 0.1386; unbounded -> 0.3736 / 0.3664.

Run: ``python benchmarks/bench_optimize.py [--trace PATH] [--all-policies]``. Not a test: numbers depend
on the machine. The trace is read from ``../shared/data/traces/mooncake`` beside the checkout.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from kvsim.cache.optimizer import POLICIES, load_trace, lru_curve, replay

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "traces"
    / "mooncake"
    / "conversation_trace.jsonl"
)


def timed(label: str, fn, target_s: float | None = None) -> object:  # type: ignore[no-untyped-def]
    """Run ``fn()`` once, print its wall time (and the target), return its result."""
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    verdict = (
        ""
        if target_s is None
        else f"  (target <= {target_s:g} s: {'ok' if elapsed <= target_s else 'MISSED'})"
    )
    print(f"{label:<58} {elapsed:7.3f} s{verdict}")
    return out


def main() -> None:
    """Print the timings and the check values."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="Mooncake conversation trace")
    parser.add_argument("--all-policies", action="store_true", help="also time every other policy at 6000")
    args = parser.parse_args()
    path = args.trace

    trace = timed("parse + intern the trace", lambda: load_trace(path, "mooncake"))
    touches = sum(len(w) for w in trace.writes)  # type: ignore[attr-defined]
    print(f"  {trace.n_requests:,} requests, {touches:,} block touches, {trace.n_ids:,} distinct blocks")  # type: ignore[attr-defined]

    res = timed(
        "LRU replay at 6000 blocks, including parsing",
        lambda: replay(load_trace(path, "mooncake"), "lru", 6000),
        1.0,
    )
    # 49 log-spaced capacities (distinct after rounding: the ratio between points is ~1.2) and unbounded.
    caps: list[float] = [*(round(float(x)) for x in np.geomspace(10, trace.n_ids, 49)), math.inf]  # type: ignore[attr-defined]
    curve = timed(
        f"exact LRU curve, {len(set(caps))} capacities, including parsing",
        lambda: lru_curve(load_trace(path, "mooncake"), caps),
        1.5,
    )
    opt = timed(
        "opt at 6000 blocks, including parsing",
        lambda: replay(load_trace(path, "mooncake"), "opt", 6000),
        10.0,
    )
    timed(
        "opt at 100 blocks, including parsing", lambda: replay(load_trace(path, "mooncake"), "opt", 100), 10.0
    )
    if args.all_policies:
        for name in POLICIES:
            if name not in ("lru", "opt"):
                timed(f"{name} at 6000 blocks (trace already parsed)", lambda n=name: replay(trace, n, 6000))

    print("check values (token / block hit rate):")
    print(
        f"  LRU 6000 blocks: {res.token_hit_rate:.4f} / {res.block_hit_rate:.4f}  (expected 0.1413 / 0.1386)"
    )  # type: ignore[attr-defined]
    inf = curve[-1]  # type: ignore[index]
    print(
        f"  LRU unbounded:   {inf.token_hit_rate:.4f} / {inf.block_hit_rate:.4f}  (expected 0.3736 / 0.3664)"
    )
    print(f"  opt 6000 blocks: {opt.token_hit_rate:.4f} / {opt.block_hit_rate:.4f}  (the bound)")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
