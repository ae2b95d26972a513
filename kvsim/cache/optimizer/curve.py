"""Exact LRU hit rates for any number of capacities in one pass (Mattson's stack distances).

LRU is a stack algorithm: after each request's evictions, a cache of ``C`` blocks holds exactly the ``C``
most recently touched blocks. So at the start of a request, block ``b`` is cached at capacity ``C`` iff
its *rank* - the number of distinct blocks touched since ``b``'s last touch - is below ``C``. Ranks are
taken at request start (before any of the request's touches), which is when the replay reads, and
evictions only happen after a request, so the result equals a separate replay at every capacity:

- read block ``j`` hits at ``C`` iff ``max(rank_0..rank_j) < C`` (the whole prefix must be cached);
- a touched block is inserted at ``C`` iff its rank is ``>= C`` (or it was never seen);
- the cache ends with ``min(C, distinct blocks)``, so ``evicted = inserted - that``.

Ranks come from a Fenwick tree over touch positions that counts *dead* positions (touches that a later
touch of the same block superseded): with ``T`` touches so far, ``D`` of them dead, and ``b`` last
touched at position ``p``, ``rank = (T - D) - (p + 1 - dead(<= p))``. Only re-touches cost a tree
update and only seen blocks a query, so the pass is ``O(touches x log touches)`` in plain Python; the
per-capacity answers are then binary searches over the sorted prefix-max ranks (numpy).

The shortcut needs every touch to be capacity-independent, which fails when a read-only request
refreshes only its *hit* blocks (a KVCM get): :func:`lru_curve` refuses such traces
(:attr:`Trace.read_only`) and callers replay each capacity instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvsim.cache.optimizer.replay import ReplayResult, Timeline, check_capacity
from kvsim.cache.optimizer.trace import Trace
from kvsim.workloads.cache_trace import masked_count


@dataclass
class StackProfile:
    """What one pass over a trace learns; answers any capacity in ``O(log n)``.

    Attributes:
        pm_sorted: Prefix-max ranks of every read block with a finite rank, sorted.
        w_cum: Cumulative token weights in ``pm_sorted`` order (weight of read block ``j`` of a request
            = the tokens it adds to ``min(k * block_size, input_length)``).
        pm, pm_w, pm_read: The same entries unsorted, with their read index (for timelines).
        touch_ranks: Ranks (at request start) of touches of blocks seen before, sorted.
        fresh_touches: Touches of blocks never seen before.
        distinct: Distinct blocks touched in the whole trace.
        distinct_before: Distinct blocks touched before each read (for the cached-blocks column).
        n_reads, read_blocks, read_tokens: Denominators.
    """

    pm_sorted: np.ndarray
    w_cum: np.ndarray
    pm: np.ndarray
    pm_w: np.ndarray
    pm_read: np.ndarray
    touch_ranks: np.ndarray
    fresh_touches: int
    distinct: int
    distinct_before: np.ndarray
    n_reads: int
    read_blocks: int
    read_tokens: int

    def result(self, capacity: float, trace: Trace | None = None, *, timeline: bool = False) -> ReplayResult:
        """The LRU replay result at ``capacity`` (a timeline needs the ``trace``)."""
        capacity = check_capacity(capacity)
        if math.isinf(capacity):
            hits = len(self.pm_sorted)
            inserted = self.fresh_touches
            final = self.distinct
        else:
            hits = int(np.searchsorted(self.pm_sorted, capacity, side="left"))
            inserted = (
                self.fresh_touches
                + len(self.touch_ranks)
                - int(np.searchsorted(self.touch_ranks, capacity, side="left"))
            )
            final = min(int(capacity), self.distinct)
        hit_tokens = int(self.w_cum[hits - 1]) if hits else 0
        res = ReplayResult(
            "lru",
            capacity,
            requests=self.n_reads,
            read_blocks=self.read_blocks,
            hit_blocks=hits,
            read_tokens=self.read_tokens,
            hit_tokens=hit_tokens,
            inserted_blocks=inserted,
            evicted_blocks=inserted - final,
        )
        if timeline:
            if trace is None:
                raise ValueError("a timeline needs the trace")
            res.timeline = self._timeline(capacity, trace)
        return res

    def _timeline(self, capacity: float, trace: Trace) -> Timeline:
        sel = self.pm < capacity
        per_hits = np.bincount(self.pm_read[sel], minlength=self.n_reads)
        per_tokens = np.bincount(self.pm_read[sel], weights=self.pm_w[sel], minlength=self.n_reads)
        cached = self.distinct_before if math.isinf(capacity) else np.minimum(self.distinct_before, capacity)
        tl = Timeline()
        i = 0
        for r, rb in enumerate(trace.reads):
            if not rb:
                continue
            k = int(per_hits[i])
            tl.time_us.append(round(trace.times[r] * 1e6))
            tl.inst.append(trace.inst[r])
            tl.read_blocks.append(len(rb))
            tl.hit_blocks.append(k)
            mask = trace.masks.get(r)
            tl.internal_read.append(masked_count(mask, len(rb)))
            tl.internal_hit.append(masked_count(mask, len(rb), k))
            tl.read_tokens.append(trace.lengths[r])
            tl.hit_tokens.append(int(per_tokens[i]))
            tl.cached.append(int(cached[i]))
            i += 1
        return tl


def stack_profile(trace: Trace) -> StackProfile:
    """One pass over ``trace`` computing the LRU ranks (see the module docstring).

    Raises:
        ValueError: The trace has read-only requests (the stack shortcut does not apply).
    """
    if trace.read_only:
        raise ValueError(
            "the LRU stack shortcut needs every read to write (a read-only request refreshes hits)"
        )
    cached = trace.derived.get("stack_profile")
    if cached is not None:
        return cached  # type: ignore[return-value]
    bs = trace.block_size
    reads, writes, lengths = trace.reads, trace.writes, trace.lengths
    total = sum(len(wb) for wb in writes)
    tree = [0] * (total + 1)  # Fenwick tree of dead positions, 1-based
    pos = [-1] * trace.n_ids
    t = 0  # touches so far
    dead = 0
    pm: list[int] = []
    pm_w: list[int] = []
    pm_read: list[int] = []
    touch_ranks: list[int] = []
    fresh = 0
    distinct_before: list[int] = []
    n_reads = read_blocks = read_tokens = 0
    dedupe = trace.duplicates
    for r in range(len(reads)):
        rb, wb = reads[r], writes[r]
        # Ranks of the touched blocks at request start (-1: never seen).
        wr: list[int] = []
        for b in wb:
            p = pos[b]
            if p < 0:
                wr.append(-1)
                continue
            i = p + 1
            s = 0
            while i:
                s += tree[i]
                i &= i - 1
            wr.append((t - dead) - (p + 1 - s))
        if rb:
            if rb is wb:
                rr = wr
            else:
                rr = []
                for b in rb:
                    p = pos[b]
                    if p < 0:
                        break
                    i = p + 1
                    s = 0
                    while i:
                        s += tree[i]
                        i &= i - 1
                    rr.append((t - dead) - (p + 1 - s))
            length = lengths[r]
            m = -1
            for j, rank in enumerate(rr):
                if rank < 0:
                    break
                if rank > m:
                    m = rank
                pm.append(m)
                w = length - j * bs
                pm_w.append(bs if w > bs else (w if w > 0 else 0))
                pm_read.append(n_reads)
            distinct_before.append(t - dead)
            n_reads += 1
            read_blocks += len(rb)
            read_tokens += length
        seen: set[int] | None = set() if dedupe else None
        for b, rank in zip(wb, wr, strict=True):
            if seen is not None:
                if b in seen:
                    rank = -2  # a repeat inside the request: present since its first touch
                seen.add(b)
            if rank == -1:
                fresh += 1
            elif rank >= 0:
                touch_ranks.append(rank)
            p = pos[b]
            if p >= 0:
                i = p + 1
                while i <= total:
                    tree[i] += 1
                    i += i & -i
                dead += 1
            pos[b] = t
            t += 1
    pm_arr = np.asarray(pm, dtype=np.int64)
    w_arr = np.asarray(pm_w, dtype=np.int64)
    order = np.argsort(pm_arr, kind="stable")
    profile = StackProfile(
        pm_sorted=pm_arr[order],
        w_cum=np.cumsum(w_arr[order]),
        pm=pm_arr,
        pm_w=w_arr,
        pm_read=np.asarray(pm_read, dtype=np.int64),
        touch_ranks=np.sort(np.asarray(touch_ranks, dtype=np.int64)),
        fresh_touches=fresh,
        distinct=t - dead,
        distinct_before=np.asarray(distinct_before, dtype=np.int64),
        n_reads=n_reads,
        read_blocks=read_blocks,
        read_tokens=read_tokens,
    )
    trace.derived["stack_profile"] = profile
    return profile


def lru_curve(trace: Trace, capacities: Sequence[float], *, timeline: bool = False) -> list[ReplayResult]:
    """Exact LRU results at every capacity, equal to separate :func:`~kvsim.cache.optimizer.replay.replay`
    calls (hit and evicted counts), from one pass over the trace.

    Raises:
        ValueError: The trace has read-only requests (see the module docstring).
    """
    profile = stack_profile(trace)
    return [profile.result(c, trace, timeline=timeline) for c in capacities]


def smallest_lru_capacity(trace: Trace, target: float, metric: str = "token_hit_rate") -> int | None:
    """The smallest capacity whose LRU ``metric`` reaches ``target``, or ``None`` if none does.

    LRU hit counts never fall when the capacity grows (inclusion), so a binary search over
    ``1 .. distinct blocks`` is exact.
    """
    profile = stack_profile(trace)
    best = profile.result(math.inf)
    if _metric(best, metric) + 1e-12 < target:
        return None
    lo, hi = 1, max(1, profile.distinct)
    while lo < hi:
        mid = (lo + hi) // 2
        if _metric(profile.result(mid), metric) + 1e-12 >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _metric(result: ReplayResult, metric: str) -> float:
    return result.token_hit_rate if metric == "token_hit_rate" else result.block_hit_rate
