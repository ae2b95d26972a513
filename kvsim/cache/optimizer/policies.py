"""Eviction policies for trace replay, on dense block ids at block granularity.

Why not :class:`kvsim.cache.RadixTree`? The radix tree is kvsim's one prefix *index* (the engine and the
cache manager use it), but a capacity study needs two things it deliberately does not do:

1. **Block-exact capacity.** Replay semantics say "evict until at most C blocks remain"; the tree evicts
   whole nodes (a node may hold hundreds of blocks), so a replay on it stops below C by a
   data-dependent amount, and LRU hit rates would no longer equal the one-pass stack-distance curve.
2. **Policies the tree cannot express.** The tree evicts leaves only (that is ``leaf_aware_lru``); plain
   ``lru`` as KVCM's optimizer and the published numbers define it may evict an inner block, and
   ``opt``, ``s3fifo`` and ``random_lru`` need per-block state the tree does not keep.

Prefix-chained keys make a flat structure enough: a block's key names its whole prefix, so "block j of a
request is usable" is "blocks 0..j are all present", which :meth:`ReplayPolicy.read` checks directly,
and the radix parent of a block is fixed (:attr:`Trace.parent`), which ``leaf_aware_lru`` uses.

Every policy implements :class:`ReplayPolicy`: ``read`` counts the leading present blocks, ``touch``
refreshes present blocks and inserts absent ones in order, ``evict(n)`` removes up to ``n`` victims in
the policy's order, ``expire(now)`` drops blocks whose time is up (``ttl`` only). The replay loop in
:mod:`kvsim.cache.optimizer.replay` decides *when* to evict.

Recency is a per-touch counter (every touch of a block is a distinct, later event), not the trace time:
trace times tie a lot (every block of a request shares one), and a counter orders the blocks of one
request first-to-last as they are touched, exactly like KVCM's linked-list LRU.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kvsim.cache.optimizer.trace import Trace
from kvsim.core import UserInputError, spawn_rng


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Knobs of the policies that have any.

    Attributes:
        sample_rate: ``random_lru``: each eviction call of ``b`` blocks samples ``b / sample_rate``
            blocks (with replacement, like KVCM) and evicts the ``b`` least recently used of them;
            ``<= 0`` means 0.1 as in KVCM.
        ttl_s: ``ttl``: a block expires this many seconds after its last access.
        seed: Seed of ``random_lru``'s sampling stream.
        batch: Blocks per eviction call (KVCM's ``eviction_batch_size_per_instance``; 1 without a
            config). Only ``random_lru`` depends on it.
        s3fifo_small: ``s3fifo``: fraction of the capacity given to the small FIFO queue.
    """

    sample_rate: float = 0.1
    ttl_s: float = 300.0
    seed: int = 1
    batch: int = 1
    s3fifo_small: float = 0.1


class ReplayPolicy:
    """Base class: the interface the replay loop drives (see the module docstring)."""

    name = "base"
    #: True when ``evict(a + b)`` evicts exactly what ``evict(a)`` then ``evict(b)`` would, so the
    #: replay loop may ask for all victims at once instead of batch by batch.
    batch_invariant = True

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        self.trace = trace
        self.capacity = capacity
        self.params = params
        self.size = 0
        #: Victims in eviction order (dense ids) when not ``None``; the replay loop turns this on.
        self.victims: list[int] | None = None

    def read(self, blocks: list[int]) -> int:
        """Return how many leading blocks of ``blocks`` are present (no state changes)."""
        raise NotImplementedError

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Access ``blocks`` in order for request ``r`` at ``now``: refresh present, insert absent.

        Returns:
            The number of blocks inserted.
        """
        raise NotImplementedError

    def after_read(self, blocks: list[int], k: int, r: int, now: float) -> None:
        """Account a read that writes nothing: the ``k`` hit blocks count as accessed."""
        if k:
            self.touch(blocks[:k], r, now)

    def evict(self, count: int) -> int:
        """Evict up to ``count`` blocks in policy order; return how many were evicted."""
        raise NotImplementedError

    def expire(self, now: float) -> int:
        """Drop blocks whose lifetime ended by ``now``; return how many (0 unless the policy expires)."""
        return 0


class LRUPolicy(ReplayPolicy):
    """Least recently used block first (an ``OrderedDict`` in recency order, oldest first)."""

    name = "lru"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        self.od: OrderedDict[int, None] = OrderedDict()

    def read(self, blocks: list[int]) -> int:
        """Leading present blocks."""
        od = self.od
        k = 0
        for b in blocks:
            if b not in od:
                break
            k += 1
        return k

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Move present blocks to the MRU end; append absent ones."""
        od = self.od
        move = od.move_to_end
        inserted = 0
        for b in blocks:
            if b in od:
                move(b)
            else:
                od[b] = None
                inserted += 1
        self.size += inserted
        return inserted

    def evict(self, count: int) -> int:
        """Pop from the LRU end."""
        n = min(count, self.size)
        pop = self.od.popitem
        if self.victims is None:
            for _ in range(n):
                pop(last=False)
        else:
            victims = self.victims
            for _ in range(n):
                victims.append(pop(last=False)[0])
        self.size -= n
        return n


class TTLPolicy(LRUPolicy):
    """Blocks expire ``ttl_s`` after their last access; under pressure, LRU evicts (KVCM's ``ttl``).

    Like KVCM's ``TtlEvictionPolicy`` with ``fallback_on_pressure``: expired blocks go first (all of them,
    whatever the count), then the least recently used. A block accessed at ``t`` is gone for a read at
    ``t + ttl_s`` or later.
    """

    name = "ttl"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        if not params.ttl_s > 0:
            raise UserInputError(f"ttl must be > 0 seconds, got {params.ttl_s}")
        self.last = [0.0] * trace.n_ids

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """LRU touch that also stamps the access time."""
        last = self.last
        for b in blocks:
            last[b] = now
        return super().touch(blocks, r, now)

    def expire(self, now: float) -> int:
        """Pop expired blocks from the LRU end (the oldest access is always there)."""
        od, last, ttl = self.od, self.last, self.params.ttl_s
        n = 0
        while od:
            b = next(iter(od))
            if last[b] + ttl > now:
                break
            od.popitem(last=False)
            if self.victims is not None:
                self.victims.append(b)
            n += 1
        self.size -= n
        return n


class _TickPolicy(ReplayPolicy):
    """Shared state of the policies that rank blocks by a per-touch recency counter."""

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        self.present = bytearray(trace.n_ids)
        self.last = [0] * trace.n_ids
        self.tick = 0

    def read(self, blocks: list[int]) -> int:
        """Leading present blocks."""
        present = self.present
        k = 0
        for b in blocks:
            if not present[b]:
                break
            k += 1
        return k


class LFUPolicy(_TickPolicy):
    """Least frequently used first (touches while cached), then least recently used.

    A block's count starts at 1 when it is inserted and is forgotten when it is evicted. Victims come
    from a lazy min-heap of ``(count, last touch, id)``; stale entries are skipped when popped.
    """

    name = "lfu"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        self.count = [0] * trace.n_ids
        self.heap: list[tuple[int, int, int]] = []

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Count the access, stamp the tick, push a fresh heap entry."""
        present, count, last, heap = self.present, self.count, self.last, self.heap
        push = heapq.heappush
        tick = self.tick
        inserted = 0
        for b in blocks:
            tick += 1
            if present[b]:
                count[b] += 1
            else:
                present[b] = 1
                count[b] = 1
                inserted += 1
            last[b] = tick
            push(heap, (count[b], tick, b))
        self.tick = tick
        self.size += inserted
        if len(heap) > 4 * self.size + 1024:
            # Drop stale entries; the cost is proportional to the heap, so amortized O(1) per push.
            self.heap = [e for e in heap if present[e[2]] and last[e[2]] == e[1]]
            heapq.heapify(self.heap)
        return inserted

    def evict(self, count: int) -> int:
        """Pop valid minimum entries."""
        present, last, heap = self.present, self.last, self.heap
        pop = heapq.heappop
        n = 0
        while n < count and heap:
            _, t, b = pop(heap)
            if present[b] and last[b] == t:
                present[b] = 0
                n += 1
                if self.victims is not None:
                    self.victims.append(b)
        self.size -= n
        return n


class RandomLRUPolicy(_TickPolicy):
    """KVCM's ``random_lru``: sample blocks at random, evict the least recently used of the sample.

    One call ``evict(n)`` draws ``int(batch / sample_rate)`` indices *with replacement* into the array
    of cached blocks and evicts the ``min(n, draws)`` least recently used distinct ones among them (so a
    call may evict fewer than asked; the replay loop calls again). The draws come from the seeded
    stream ``spawn_rng(seed, "random_lru")``, in blocks of at least 4096 uniforms.
    """

    name = "random_lru"
    batch_invariant = False

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        rate = params.sample_rate if params.sample_rate > 0 else 0.1
        self.sample = max(1, int(params.batch / rate))
        self.slots: list[int] = []  # cached blocks, in arbitrary order
        self.where = [-1] * trace.n_ids  # index into slots
        self.rng = spawn_rng(params.seed, "random_lru")
        self.uniforms: list[float] = []

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Stamp ticks; append new blocks to the sampling array."""
        present, last, slots, where = self.present, self.last, self.slots, self.where
        tick = self.tick
        inserted = 0
        for b in blocks:
            tick += 1
            last[b] = tick
            if not present[b]:
                present[b] = 1
                where[b] = len(slots)
                slots.append(b)
                inserted += 1
        self.tick = tick
        self.size += inserted
        return inserted

    def _draw(self, n: int) -> list[int]:
        """``sample`` uniform indices into ``range(n)``; uniforms are drawn in bulk (one numpy call per
        4096) because a numpy call per victim would dominate the replay."""
        u = self.uniforms
        while len(u) < self.sample:
            u.extend(self.rng.random(max(4096, self.sample)).tolist())
        picks = [int(x * n) for x in u[-self.sample :]]
        del u[-self.sample :]
        return picks

    def evict(self, count: int) -> int:
        """One sampling round (see the class docstring)."""
        slots = self.slots
        if count <= 0 or not slots:
            return 0
        last, present, where = self.last, self.present, self.where
        picks = {slots[i] for i in self._draw(len(slots))}
        chosen = sorted(picks, key=last.__getitem__)[: min(count, self.sample)]
        for b in chosen:
            # Swap-remove from the sampling array.
            i = where[b]
            tail = slots.pop()
            if tail != b:
                slots[i] = tail
                where[tail] = i
            where[b] = -1
            present[b] = 0
            if self.victims is not None:
                self.victims.append(b)
        self.size -= len(chosen)
        return len(chosen)


class LeafAwareLRUPolicy(_TickPolicy):
    """LRU among *leaf* blocks only: a block is evictable when no cached block extends it.

    This is KVCM's ``leaf_aware_lru`` at block granularity: a prefix shared by many requests is never
    evicted before the blocks that extend it, so the cache stays prefix-closed. (KVCM works per radix
    node and can evict the head of a leaf node's run before its tail; per block that cannot happen.)
    A lazy min-heap holds ``(last touch, id)``; a block re-enters it when its last child leaves.
    """

    name = "leaf_aware_lru"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        self.kids = [0] * trace.n_ids  # cached children counted in their parent
        self.linked = bytearray(trace.n_ids)  # 1 when the block is counted in its parent's kids
        self.heap: list[tuple[int, int]] = []

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Stamp ticks, insert absent blocks under their parent, push leaf entries."""
        present, last, kids, linked, parent = (
            self.present,
            self.last,
            self.kids,
            self.linked,
            self.trace.parent,
        )
        heap = self.heap
        push = heapq.heappush
        tick = self.tick
        inserted = 0
        for b in blocks:
            tick += 1
            last[b] = tick
            if not present[b]:
                present[b] = 1
                inserted += 1
                p = parent[b]
                if p >= 0 and present[p]:
                    kids[p] += 1
                    linked[b] = 1
            if not kids[b]:
                push(heap, (tick, b))
        self.tick = tick
        self.size += inserted
        if len(heap) > 4 * self.size + 1024:
            self.heap = [e for e in heap if present[e[1]] and last[e[1]] == e[0] and not kids[e[1]]]
            heapq.heapify(self.heap)
        return inserted

    def evict(self, count: int) -> int:
        """Pop the oldest valid leaf; a parent left childless becomes a candidate at its own recency."""
        present, last, kids, linked, parent = (
            self.present,
            self.last,
            self.kids,
            self.linked,
            self.trace.parent,
        )
        heap = self.heap
        pop, push = heapq.heappop, heapq.heappush
        n = 0
        while n < count and heap:
            t, b = pop(heap)
            if not present[b] or last[b] != t or kids[b]:
                continue
            present[b] = 0
            n += 1
            if self.victims is not None:
                self.victims.append(b)
            if linked[b]:
                linked[b] = 0
                p = parent[b]
                kids[p] -= 1
                if not kids[p]:
                    push(heap, (last[p], p))
        self.size -= n
        return n


class S3FIFOPolicy(ReplayPolicy):
    """S3-FIFO (Yang et al., SOSP'23): a small FIFO, a main FIFO with 2-bit frequencies, a ghost FIFO.

    New blocks enter the small queue (``s3fifo_small`` of the capacity), or the main queue when the
    ghost queue remembers them. Hits raise a block's frequency (at most 3). Evicting from the small
    queue promotes a block that was hit while there (frequency >= 1, reset to 0) to the main queue and
    otherwise drops it and remembers its id in the ghost queue (bounded by the main queue's share);
    evicting from the main queue gives a block with frequency > 0 another round (frequency - 1) and
    drops it otherwise. The small queue is evicted from while it holds at least its share.
    """

    name = "s3fifo"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        if not 0 < params.s3fifo_small < 1:
            raise UserInputError(f"s3fifo small-queue fraction must be in (0, 1), got {params.s3fifo_small}")
        self.where = bytearray(trace.n_ids)  # 0 absent, 1 small, 2 main
        self.freq = bytearray(trace.n_ids)
        self.small: OrderedDict[int, None] = OrderedDict()
        self.main: OrderedDict[int, None] = OrderedDict()
        self.ghost: OrderedDict[int, None] = OrderedDict()
        if math.isinf(capacity):
            self.small_target = self.ghost_cap = 0
        else:
            self.small_target = max(1, int(params.s3fifo_small * capacity))
            self.ghost_cap = max(1, int(capacity) - self.small_target)

    def read(self, blocks: list[int]) -> int:
        """Leading present blocks."""
        where = self.where
        k = 0
        for b in blocks:
            if not where[b]:
                break
            k += 1
        return k

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Hit: frequency + 1 (max 3). Miss: insert into main if ghosted, else into small."""
        where, freq, small, main, ghost = self.where, self.freq, self.small, self.main, self.ghost
        inserted = 0
        for b in blocks:
            w = where[b]
            if w:
                if freq[b] < 3:
                    freq[b] += 1
                continue
            inserted += 1
            freq[b] = 0
            if b in ghost:
                del ghost[b]
                main[b] = None
                where[b] = 2
            else:
                small[b] = None
                where[b] = 1
        self.size += inserted
        return inserted

    def _evict_one(self) -> bool:
        where, freq, small, main = self.where, self.freq, self.small, self.main
        if small and (len(small) >= self.small_target or not main):
            while small:
                b, _ = small.popitem(last=False)
                if freq[b] >= 1:
                    freq[b] = 0
                    main[b] = None
                    where[b] = 2
                    continue
                where[b] = 0
                ghost = self.ghost
                ghost[b] = None
                if len(ghost) > self.ghost_cap:
                    ghost.popitem(last=False)
                self._victim(b)
                return True
        while main:
            b, _ = main.popitem(last=False)
            if freq[b] > 0:
                freq[b] -= 1
                main[b] = None
                continue
            where[b] = 0
            self._victim(b)
            return True
        return False

    def _victim(self, b: int) -> None:
        if self.victims is not None:
            self.victims.append(b)

    def evict(self, count: int) -> int:
        """Evict one block at a time (see the class docstring)."""
        n = 0
        while n < count and self._evict_one():
            n += 1
        self.size -= n
        return n


class OptPolicy(_TickPolicy):
    """Belady's offline optimum: evict the block whose next reference is farthest in the future.

    Ties (the blocks of one future request share its index; blocks never referenced again all tie at
    infinity) go to the *deepest* block first (child before parent), so the cache stays prefix-closed.
    Then every cached block of a request's prefix is usable, and because Belady keeps the most future
    references of any policy, ``opt``'s ``block_hit_rate`` bounds every policy's on prefix-chained
    traces. (For ``token_hit_rate`` the token cap of the last block makes it a near-bound only.)

    Next references are computed once per trace (a backward pass) and shared by every capacity.
    """

    name = "opt"

    def __init__(self, trace: Trace, capacity: float, params: PolicyParams) -> None:
        super().__init__(trace, capacity, params)
        self.next_reads, self.next_writes = next_references(trace)
        self.cur = [0] * trace.n_ids
        self.heap: list[tuple[int, int, int]] = []

    def _note(self, blocks: list[int], nxt: list[int], insert: bool) -> int:
        present, cur, depth, heap = self.present, self.cur, self.trace.depth, self.heap
        push = heapq.heappush
        inserted = 0
        for b, nx in zip(blocks, nxt, strict=True):
            if not present[b]:
                if not insert:
                    continue
                present[b] = 1
                inserted += 1
            cur[b] = nx
            push(heap, (-nx, -depth[b], b))
        return inserted

    def touch(self, blocks: list[int], r: int, now: float) -> int:
        """Insert absent blocks; every touched block's priority becomes its next reference."""
        nxt = self.next_writes[r] if blocks is self.trace.writes[r] else self.next_reads[r][: len(blocks)]
        inserted = self._note(blocks, nxt, True)
        self.size += inserted
        if len(self.heap) > 4 * self.size + 1024:
            present, cur = self.present, self.cur
            self.heap = [e for e in self.heap if present[e[2]] and cur[e[2]] == -e[0]]
            heapq.heapify(self.heap)
        return inserted

    def after_read(self, blocks: list[int], k: int, r: int, now: float) -> None:
        """A read-only request references every cached block it names, hit or not: update them all."""
        self._note(blocks, self.next_reads[r], False)

    def evict(self, count: int) -> int:
        """Pop the farthest-referenced (then deepest) valid entry."""
        present, cur, heap = self.present, self.cur, self.heap
        pop = heapq.heappop
        n = 0
        while n < count and heap:
            nx, _, b = pop(heap)
            if present[b] and cur[b] == -nx:
                present[b] = 0
                n += 1
                if self.victims is not None:
                    self.victims.append(b)
        self.size -= n
        return n


def next_references(trace: Trace) -> tuple[list[list[int]], list[list[int]]]:
    """Per request, the index of the next request that references each of its blocks (``n`` = never).

    Returns:
        ``(next_reads, next_writes)`` aligned with ``trace.reads`` and ``trace.writes`` (the same list
        objects where a request's reads are its writes).
    """
    cached = trace.derived.get("next_references")
    if cached is not None:
        return cached  # type: ignore[return-value]
    n = trace.n_requests
    last = [n] * trace.n_ids
    next_reads: list[list[int]] = [[] for _ in range(n)]
    next_writes: list[list[int]] = [[] for _ in range(n)]
    reads, writes = trace.reads, trace.writes
    for r in range(n - 1, -1, -1):
        rb, wb = reads[r], writes[r]
        nw = [last[b] for b in wb]
        next_writes[r] = nw
        next_reads[r] = nw if rb is wb else [last[b] for b in rb]
        for b in wb:
            last[b] = r
        if rb is not wb:
            for b in rb:
                last[b] = r
    trace.derived["next_references"] = (next_reads, next_writes)
    return next_reads, next_writes


#: Policy name -> class.
POLICIES: dict[str, Callable[[Trace, float, PolicyParams], ReplayPolicy]] = {
    "lru": LRUPolicy,
    "random_lru": RandomLRUPolicy,
    "leaf_aware_lru": LeafAwareLRUPolicy,
    "lfu": LFUPolicy,
    "ttl": TTLPolicy,
    "s3fifo": S3FIFOPolicy,
    "opt": OptPolicy,
}


def make_policy(name: str, trace: Trace, capacity: float, params: PolicyParams | None = None) -> ReplayPolicy:
    """Build policy ``name`` for ``trace`` with ``capacity`` blocks (used by ``s3fifo`` to size its queues).

    Raises:
        UserInputError: Unknown name (the message lists the choices) or a bad parameter.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise UserInputError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
    return cls(trace, capacity, params or PolicyParams())
