"""Builders shared by the optimizer tests: small in-memory traces and random prefix-chained traces."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hypothesis import strategies as st

from kvsim.cache.optimizer import Trace, build_trace
from kvsim.workloads.cache_trace import CacheAccess


def turns(
    requests: Sequence[Sequence[int]],
    *,
    times: Sequence[float] | None = None,
    block_size: int = 4,
    lengths: Sequence[int] | None = None,
    instance: str = "instance",
) -> Trace:
    """A trace of read-then-write turns with the given keys (full blocks unless ``lengths`` says)."""
    accesses = []
    for i, keys in enumerate(requests):
        ks = list(keys)
        length = lengths[i] if lengths is not None else len(ks) * block_size
        t = times[i] if times is not None else float(i)
        accesses.append(CacheAccess(t, instance, length, ks, ks, line=i + 1))
    return build_trace(accesses, name="test", fmt="mooncake", block_size=block_size)


def write_jsonl(path: Path, records: Sequence[object]) -> Path:
    """Write records (dicts as JSON, strings verbatim) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@st.composite
def chained_traces(draw: st.DrawFn, max_requests: int = 30, block_size: int = 4) -> Trace:
    """Random prefix-chained traces: each request extends a prefix of an earlier one with new blocks.

    Keys are prefix-chained by construction (a key is created once, under one parent). Some requests
    only write (a KVCM write), ties and out-of-order times occur, the last block may be partial.
    """
    n = draw(st.integers(1, max_requests))
    made: list[list[int]] = []
    accesses = []
    next_key = 1
    for i in range(n):
        prefix: list[int] = []
        if made and draw(st.booleans()):
            parent = made[draw(st.integers(0, len(made) - 1))]
            prefix = parent[: draw(st.integers(0, len(parent)))]
        extra = draw(st.integers(0 if prefix else 1, 5))
        keys = prefix + list(range(next_key, next_key + extra))
        next_key += extra
        made.append(keys)
        length = len(keys) * block_size - draw(st.integers(0, block_size - 1))
        t = float(draw(st.integers(0, 8)))
        if draw(st.integers(0, 5)) == 0:
            accesses.append(CacheAccess(t, "instance", 0, (), keys, line=i + 1))
        else:
            accesses.append(CacheAccess(t, "instance", length, keys, keys, line=i + 1))
    return build_trace(accesses, name="random", fmt="mooncake", block_size=block_size)
