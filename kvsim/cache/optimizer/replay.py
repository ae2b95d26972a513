"""Replay a trace against one eviction policy and capacity; the result type every optimizer path returns.

Semantics (the contract of ``kvsim optimize`` without ``--config``):

1. Requests run in timestamp order, ties in file order (:func:`~kvsim.cache.optimizer.trace.load_trace`
   sorts stably).
2. A read counts the leading blocks present, ``k`` (a block is usable only if its whole prefix is).
3. Then every block the request writes is touched in order: present -> refreshed, absent -> inserted.
   A read that writes nothing (a KVCM get) refreshes its ``k`` hit blocks only.
4. Then victims are evicted until at most ``capacity`` blocks remain (``ttl`` also drops expired
   blocks before each request).

Metrics: ``token_hit_rate = sum(min(k * block_size, input_length)) / sum(input_length)`` and
``block_hit_rate = sum(k) / sum(len(read blocks))``, over requests with a read. All instances of a
trace share the one cache (their keys never collide: blocks are ``(instance, key)`` pairs); a KVCM
config (:mod:`kvsim.cache.optimizer.config`) gives each instance its own policy and quota groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kvsim.cache.optimizer.policies import PolicyParams, ReplayPolicy, make_policy
from kvsim.cache.optimizer.trace import Trace
from kvsim.core import UserInputError
from kvsim.workloads.cache_trace import BlockMask, masked_count


@dataclass
class Timeline:
    """Per-read records of a replay, in replay order (the rows of the per-read CSV).

    ``cached`` is the size of the reading instance's cache when the read happened (before the
    request's writes); ``per_instance`` holds every instance's size then (``None`` when all instances
    share one cache, whose size ``cached`` already is).
    """

    time_us: list[int] = field(default_factory=list)
    inst: list[int] = field(default_factory=list)
    read_blocks: list[int] = field(default_factory=list)
    hit_blocks: list[int] = field(default_factory=list)
    internal_read: list[int] = field(default_factory=list)
    internal_hit: list[int] = field(default_factory=list)
    read_tokens: list[int] = field(default_factory=list)
    hit_tokens: list[int] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)
    per_instance: list[tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return len(self.time_us)


@dataclass
class ReplayResult:
    """Totals of one replay (one policy, one capacity; or one KVCM instance group).

    Attributes:
        policy: Policy name (for a config group: its instances' policies, ``+``-joined when mixed).
        capacity_blocks: Capacity in blocks; ``math.inf`` for unbounded.
        requests: Requests with a read.
        read_blocks: Blocks those reads looked up.
        hit_blocks: Leading blocks found (``sum(k)``).
        read_tokens: Prompt tokens of the reads.
        hit_tokens: ``sum(min(k * block_size, input_length))``.
        inserted_blocks: Blocks inserted by writes.
        evicted_blocks: Blocks evicted or expired.
        group: The KVCM instance group (config replays only).
        timeline: Per-read records when asked for.
        victims: Evicted block keys in order when asked for.
    """

    policy: str
    capacity_blocks: float
    requests: int = 0
    read_blocks: int = 0
    hit_blocks: int = 0
    read_tokens: int = 0
    hit_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0
    group: str | None = None
    timeline: Timeline | None = None
    victims: list[int] | None = None

    @property
    def token_hit_rate(self) -> float:
        """Hit tokens over prompt tokens (0 without reads)."""
        return self.hit_tokens / self.read_tokens if self.read_tokens else 0.0

    @property
    def block_hit_rate(self) -> float:
        """Hit blocks over read blocks (0 without reads)."""
        return self.hit_blocks / self.read_blocks if self.read_blocks else 0.0

    def to_json(self) -> dict[str, Any]:
        """The result as the CLI's ``--json`` entry (``capacity_blocks`` is ``"inf"`` when unbounded)."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "capacity_blocks": capacity_json(self.capacity_blocks),
            "token_hit_rate": self.token_hit_rate,
            "block_hit_rate": self.block_hit_rate,
            "requests": self.requests,
            "read_blocks": self.read_blocks,
            "hit_blocks": self.hit_blocks,
            "evicted_blocks": self.evicted_blocks,
        }
        if self.group is not None:
            out["group"] = self.group
        return out


def capacity_json(capacity: float) -> int | str:
    """A capacity for JSON: an int, or the string ``"inf"``."""
    return "inf" if math.isinf(capacity) else int(capacity)


def check_capacity(capacity: float) -> float:
    """Return ``capacity`` if it is a whole number of blocks >= 1 or ``inf``; else raise UserInputError."""
    if isinstance(capacity, bool) or not isinstance(capacity, int | float):
        raise UserInputError(f"capacity must be a number of blocks or inf, got {capacity!r}")
    if math.isinf(capacity) and capacity > 0:
        return math.inf
    if not math.isfinite(capacity) or capacity != int(capacity) or capacity <= 0:
        raise UserInputError(f"capacity must be a whole number of blocks > 0 or inf, got {capacity!r}")
    return int(capacity)


def replay(
    trace: Trace,
    policy: str,
    capacity: float,
    params: PolicyParams | None = None,
    *,
    timeline: bool = False,
    victims: bool = False,
) -> ReplayResult:
    """Replay ``trace`` with one shared cache of ``capacity`` blocks under ``policy``.

    Args:
        trace: The trace.
        policy: A name from :data:`~kvsim.cache.optimizer.policies.POLICIES`.
        capacity: Blocks, or ``math.inf``.
        params: Policy knobs (defaults: :class:`PolicyParams`).
        timeline: Record every read (for the per-read CSV and the hit-rate-over-time plot).
        victims: Record the evicted keys in order.

    Returns:
        The totals (and the records asked for).
    """
    capacity = check_capacity(capacity)
    params = params or PolicyParams()
    pol = make_policy(policy, trace, capacity, params)
    if victims:
        pol.victims = []
    result = ReplayResult(policy, capacity)
    tl = Timeline() if timeline else None
    bs = trace.block_size
    times, lengths, reads, writes, masks = trace.times, trace.lengths, trace.reads, trace.writes, trace.masks
    expires = policy == "ttl"
    # Evict one block per call where the order depends on the batch (random_lru samples per call): the
    # plain replay is KVCM's rules with a batch of 1. Other policies take all victims in one call.
    step = 0 if pol.batch_invariant else 1
    finite = not math.isinf(capacity)
    n_reads = read_blocks = hit_blocks = read_tokens = hit_tokens = inserted = evicted = 0
    for r in range(len(times)):
        now = times[r]
        if expires:
            evicted += pol.expire(now)
        rb = reads[r]
        wb = writes[r]
        k = 0
        if rb:
            k = pol.read(rb)
            n = len(rb)
            length = lengths[r]
            ht = k * bs
            if ht > length:
                ht = length
            n_reads += 1
            read_blocks += n
            hit_blocks += k
            read_tokens += length
            hit_tokens += ht
            if tl is not None:
                mask = masks.get(r)
                _record(tl, now, trace.inst[r], n, k, length, ht, pol.size, mask)
        if wb:
            inserted += pol.touch(wb, r, now)
        elif rb:
            pol.after_read(rb, k, r, now)
        if finite and pol.size > capacity:
            evicted += _evict_down(pol, capacity, step)
    result.requests = n_reads
    result.read_blocks = read_blocks
    result.hit_blocks = hit_blocks
    result.read_tokens = read_tokens
    result.hit_tokens = hit_tokens
    result.inserted_blocks = inserted
    result.evicted_blocks = evicted
    result.timeline = tl
    if pol.victims is not None:
        keys = trace.keys
        result.victims = [keys[b] for b in pol.victims]
    return result


def _evict_down(pol: ReplayPolicy, target: float, step: int) -> int:
    """Evict from ``pol`` until ``pol.size <= target`` (``step`` > 0: at most that many per call)."""
    evicted = 0
    while pol.size > target:
        want = pol.size - int(target)
        got = pol.evict(min(want, step) if step else want)
        if not got:
            break  # nothing evictable is left
        evicted += got
    return evicted


def _record(
    tl: Timeline, now: float, inst: int, n: int, k: int, length: int, ht: int, cached: int, mask: BlockMask
) -> None:
    """Append one read to ``tl`` (masked blocks are the reference's *internal* reads)."""
    tl.time_us.append(round(now * 1e6))
    tl.inst.append(inst)
    tl.read_blocks.append(n)
    tl.hit_blocks.append(k)
    if mask is None:
        tl.internal_read.append(0)
        tl.internal_hit.append(0)
    else:
        tl.internal_read.append(masked_count(mask, n))
        tl.internal_hit.append(masked_count(mask, n, k))
    tl.read_tokens.append(length)
    tl.hit_tokens.append(ht)
    tl.cached.append(cached)
