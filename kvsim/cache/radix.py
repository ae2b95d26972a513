"""A compressed, block-granular radix tree with lock counts, tier presence and pluggable eviction.

This is the one prefix tree of kvsim: the SGLang engine's device (L1) and host (L2) caches, the cache
optimizer and anything else that needs "longest cached prefix" build on it. Every int in a key sequence
is one *block* (a KVCM block key, a page id, or a token id when the page size is 1).

Shape
    Edges hold runs of ints stored as tuples (``node.key``); a node's children are keyed by the first
    int of their run, so a lookup costs one dict probe per edge plus one C-level tuple-slice comparison.
    When a match or insert diverges inside an edge the node is split, so a match always ends exactly at
    a node boundary (``MatchResult.last_node`` covers exactly ``MatchResult.length`` blocks).

Per-node state
    ``lock_ref``: how many holders protect the node. Locking a node locks all its ancestors too (as in
    SGLang): a locked node and its path to the root cannot be evicted.
    ``tiers``: a bitmask of where the node's blocks live (tier names are given to the tree, by default
    ``("device", "host", "storage")``); the tree only records it and evicts by it.
    Access statistics: ``last_access`` and ``hit_count`` (updated by :meth:`RadixTree.match_prefix`
    when a ``now`` is passed; :meth:`RadixTree.insert` updates ``last_access``) and ``created``.
    ``value``: an optional payload aligned with ``key`` (list, tuple or numpy array of the same length,
    e.g. device page indices); it is sliced along with the key when a node splits.

Eviction
    :meth:`RadixTree.evict` removes whole, unlocked leaves (``tier=None``) or, with a tier name, clears
    that tier from unlocked nodes that hold it while none of their children do (the "tier leaves"; a
    node left with no tier and no children is removed). Victims are taken in the order of an
    :class:`EvictionPolicy` - a tiny object whose ``priority(node)`` tuple sorts ascending, ending with
    the node id so ties break deterministically (ids come from a per-tree counter). LRU (default),
    LFU and FIFO ship here; more can be registered by name. ``exclude_tiers`` passes over candidates
    present in other tiers (e.g. free host copies only where no device copy exists), and ``on_victim``
    lets a caller copy each victim to another tier before it is cleared (a write-back cache).

    Candidate sets are maintained incrementally (each node carries a bitmask of the candidate sets it
    belongs to) and each set has a lazy min-heap: entries are pushed when a node becomes a candidate or
    its statistics change, and checked when popped, so an eviction costs O(k log n) for k victims
    rather than a scan of the tree. Heaps are compacted when stale entries outnumber live ones.

Observers
    :attr:`RadixTree.observer` (None by default) is told of every structural and tier change: a new
    leaf, a split, a node's tiers changing, a node leaving the tree. A cache-event publisher (what
    SGLang's ``enable_kv_cache_events`` feeds to Dynamo's and llm-d's routers) is built on it. With no
    observer each hook costs one attribute test.

Sizes (:meth:`~RadixTree.total_size`, :meth:`~RadixTree.protected_size`,
:meth:`~RadixTree.evictable_size`, :meth:`~RadixTree.tier_size`) are kept as running counters in blocks.

The tree never reads a clock: callers pass ``now`` (seconds) in.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kvsim.core import IdCounter

DEFAULT_TIERS: tuple[str, ...] = ("device", "host", "storage")
_MAX_TIERS = 30
# Heaps are rebuilt when they hold this many more entries than live candidates (and twice as many).
_COMPACT_SLACK = 1024


class RadixNode:
    """One node of a :class:`RadixTree`; its edge from the parent is the run ``key``.

    Attributes are read freely by callers; mutate them only through the tree (stats, tiers, locks),
    otherwise the tree's counters and eviction heaps go out of date.
    """

    __slots__ = (
        "_cand",
        "children",
        "created",
        "depth",
        "hit_count",
        "id",
        "key",
        "last_access",
        "lock_ref",
        "parent",
        "tiers",
        "value",
    )

    def __init__(
        self,
        node_id: int,
        key: tuple[int, ...],
        parent: RadixNode | None,
        depth: int,
        now: float,
    ) -> None:
        self.id = node_id
        self.key = key
        self.parent = parent
        self.children: dict[int, RadixNode] = {}
        # depth = blocks from the root up to and including this node's run.
        self.depth = depth
        self.value: Any = None
        self.lock_ref = 0
        self.tiers = 0
        self.last_access = now
        self.hit_count = 0
        self.created = now
        self._cand = 0  # bit 0: structural leaf; bit 1+t: leaf for tier t (see RadixTree._refresh)

    @property
    def is_leaf(self) -> bool:
        """True when the node has no children."""
        return not self.children

    def __repr__(self) -> str:
        run = self.key if len(self.key) <= 6 else (*self.key[:3], "...", *self.key[-2:])
        return f"RadixNode(id={self.id}, key={run}, depth={self.depth}, lock_ref={self.lock_ref})"


class TreeObserver(Protocol):
    """Told of every change to a tree's contents (see the module docstring, "Observers")."""

    def node_added(self, node: RadixNode) -> None:
        """A new leaf joined the tree (its ``tiers`` already set)."""
        ...

    def node_split(self, upper: RadixNode, lower: RadixNode) -> None:
        """A node was cut in two: ``upper`` is new and holds the first blocks, ``lower`` keeps its id
        and the rest; nothing changed in what the tree holds."""
        ...

    def tiers_changed(self, node: RadixNode, old: int, new: int) -> None:
        """``node``'s tier bitmask went from ``old`` to ``new``."""
        ...

    def node_removed(self, node: RadixNode) -> None:
        """``node`` (a leaf, still attached, tiers as they were) is about to leave the tree."""
        ...


class EvictionPolicy(Protocol):
    """Victim order: nodes with the smallest ``priority`` are evicted first.

    ``priority`` may only depend on node fields the tree maintains (``last_access``, ``hit_count``,
    ``created``, ``id``, ``depth``, ``key``) and must end with ``node.id`` so ties are deterministic.
    """

    name: str

    def priority(self, node: RadixNode) -> tuple[Any, ...]:
        """Return the sort key of ``node`` (ascending = evicted first)."""
        ...


class LRUPolicy:
    """Least recently used first (by ``last_access``), then oldest id."""

    name = "lru"

    def priority(self, node: RadixNode) -> tuple[float, int]:
        """``(last_access, id)``."""
        return (node.last_access, node.id)


class LFUPolicy:
    """Least frequently hit first (by ``hit_count``), then least recently used, then oldest id."""

    name = "lfu"

    def priority(self, node: RadixNode) -> tuple[int, float, int]:
        """``(hit_count, last_access, id)``."""
        return (node.hit_count, node.last_access, node.id)


class FIFOPolicy:
    """Oldest first (by ``created``), then oldest id."""

    name = "fifo"

    def priority(self, node: RadixNode) -> tuple[float, int]:
        """``(created, id)``."""
        return (node.created, node.id)


_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LRUPolicy,
    "lfu": LFUPolicy,
    "fifo": FIFOPolicy,
}


def register_eviction_policy(name: str, factory: Callable[[], EvictionPolicy]) -> None:
    """Make ``factory`` available to :func:`make_eviction_policy` under ``name`` (lower case)."""
    if not name:
        raise ValueError("name: must be non-empty")
    _POLICIES[name.lower()] = factory


def make_eviction_policy(name: str) -> EvictionPolicy:
    """Return a new policy object registered as ``name`` ("lru", "lfu", "fifo", ...)."""
    try:
        return _POLICIES[name.lower()]()
    except KeyError:
        known = ", ".join(sorted(_POLICIES))
        raise ValueError(f"policy: unknown eviction policy {name!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Outcome of :meth:`RadixTree.match_prefix`.

    Attributes:
        length: number of leading blocks of the query found in the tree.
        last_node: the node whose run ends exactly at ``length`` (the root when ``length == 0``).
    """

    length: int
    last_node: RadixNode


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Outcome of :meth:`RadixTree.insert`.

    Attributes:
        prefix_length: blocks that were already present before the insert.
        last_node: the node ending exactly at the end of the inserted keys.
    """

    prefix_length: int
    last_node: RadixNode


@dataclass(frozen=True, slots=True)
class EvictResult:
    """Outcome of :meth:`RadixTree.evict`.

    Attributes:
        num_blocks: blocks evicted (may exceed the request: whole nodes are evicted).
        nodes: the victims in eviction order; removed nodes are detached (``parent is None``) and keep
            their ``key`` and ``value`` so the caller can free what they referenced.
    """

    num_blocks: int
    nodes: tuple[RadixNode, ...]


def _as_keys(keys: Sequence[int] | np.ndarray) -> tuple[int, ...]:
    if type(keys) is tuple:
        return keys
    if isinstance(keys, np.ndarray):
        return tuple(keys.tolist())
    return tuple(keys)


def _common_prefix(run: tuple[int, ...], keys: tuple[int, ...], start: int) -> int:
    """Length of the common prefix of ``run`` and ``keys[start:]`` (only called on a mismatch)."""
    limit = min(len(run), len(keys) - start)
    i = 0
    while i < limit and run[i] == keys[start + i]:
        i += 1
    return i


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class RadixTree:
    """A block-granular radix tree (see the module docstring for the design).

    Args:
        tiers: names of the storage tiers a node can be present in (at most 30).
        policy: default victim order, a name ("lru", "lfu", "fifo") or an :class:`EvictionPolicy`.
    """

    def __init__(
        self,
        tiers: Sequence[str] = DEFAULT_TIERS,
        policy: str | EvictionPolicy = "lru",
    ) -> None:
        names = tuple(tiers)
        if len(set(names)) != len(names) or len(names) > _MAX_TIERS or not all(names):
            raise ValueError(f"tiers: need up to {_MAX_TIERS} distinct non-empty names, got {names!r}")
        self._tier_names = names
        self._tier_index = {name: i for i, name in enumerate(names)}
        self._policy = make_eviction_policy(policy) if isinstance(policy, str) else policy
        #: told of every change (None: nobody listens); set it on an empty tree
        self.observer: TreeObserver | None = None
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Drop every node; ids restart at 1 (the root is id 0)."""
        self._ids = IdCounter()
        self.root = RadixNode(self._ids.next(), (), None, 0, 0.0)
        self._num_nodes = 0
        self._total = 0
        self._protected = 0
        n_sets = 1 + len(self._tier_names)
        self._tier_total = [0] * len(self._tier_names)
        self._tier_protected = [0] * len(self._tier_names)
        self._cand: list[dict[int, RadixNode]] = [{} for _ in range(n_sets)]
        self._heaps: list[list[tuple[Any, int, RadixNode]]] = [[] for _ in range(n_sets)]
        self._seq = 0

    @property
    def policy(self) -> EvictionPolicy:
        """The tree's default eviction policy."""
        return self._policy

    @property
    def tier_names(self) -> tuple[str, ...]:
        """The tier names this tree was built with, in bit order."""
        return self._tier_names

    def tier_mask(self, *tiers: str) -> int:
        """Return the bitmask of the named tiers."""
        mask = 0
        for name in tiers:
            mask |= 1 << self._tier(name)
        return mask

    def _tier(self, name: str) -> int:
        try:
            return self._tier_index[name]
        except KeyError:
            raise ValueError(f"tier: unknown tier {name!r} (known: {self._tier_names})") from None

    # ------------------------------------------------------------------ sizes

    def total_size(self) -> int:
        """Blocks held by all nodes."""
        return self._total

    def protected_size(self) -> int:
        """Blocks held by locked nodes."""
        return self._protected

    def evictable_size(self) -> int:
        """Blocks held by unlocked nodes."""
        return self._total - self._protected

    def tier_size(self, tier: str, *, evictable_only: bool = False) -> int:
        """Blocks of nodes present in ``tier`` (only unlocked ones with ``evictable_only``)."""
        t = self._tier(tier)
        return self._tier_total[t] - (self._tier_protected[t] if evictable_only else 0)

    def num_nodes(self) -> int:
        """Number of nodes, not counting the root."""
        return self._num_nodes

    # ------------------------------------------------------------------ match / insert

    def match_prefix(self, keys: Sequence[int] | np.ndarray, now: float | None = None) -> MatchResult:
        """Find the longest prefix of ``keys`` present in the tree.

        Splits the last node when the match ends inside its run, so ``last_node`` ends exactly at the
        match. With ``now`` given, every node on the matched path gets ``last_access = now`` and one
        more hit; without it the lookup leaves statistics untouched.

        Args:
            keys: the block sequence (ints; a numpy integer array is accepted).
            now: the current time in seconds, or None for a read that does not count as an access.

        Returns:
            The matched length in blocks and the node where it ends.
        """
        keys = _as_keys(keys)
        n = len(keys)
        node = self.root
        i = 0
        children = node.children
        while i < n:
            child = children.get(keys[i])
            if child is None:
                break
            run = child.key
            step = len(run)
            if keys[i : i + step] == run:
                node = child
                i += step
                if now is not None:
                    self._touch(child, now, True)
                children = child.children
                continue
            m = _common_prefix(run, keys, i)
            node = self._split(child, m)
            i += m
            if now is not None:
                self._touch(node, now, True)
            break
        return MatchResult(i, node)

    def insert(
        self,
        keys: Sequence[int] | np.ndarray,
        now: float,
        value: Sequence[Any] | np.ndarray | None = None,
        tier: str | None = None,
    ) -> InsertResult:
        """Insert ``keys``; the part already present is left as it is.

        Every node on the path gets ``last_access = now``. The new suffix (if any) becomes one leaf
        holding ``value[prefix_length:]`` and, when ``tier`` is given, present in that tier. Nodes of
        the existing prefix keep their value and tiers: the caller decides what to do with duplicates
        (e.g. free the new pages for ``keys[:prefix_length]``) and may add tiers with :meth:`add_tier`.

        Args:
            keys: the block sequence.
            now: the current time in seconds.
            value: optional payload aligned with ``keys`` (same length, sliceable).
            tier: optional tier name the new blocks are present in.

        Returns:
            The already-present length and the node ending at ``len(keys)``.
        """
        keys = _as_keys(keys)
        n = len(keys)
        if value is not None and len(value) != n:
            raise ValueError(f"value: length {len(value)} does not match {n} keys")
        tiers = 0 if tier is None else 1 << self._tier(tier)
        node = self.root
        i = 0
        while i < n:
            child = node.children.get(keys[i])
            if child is None:
                break
            run = child.key
            step = len(run)
            if keys[i : i + step] == run:
                node = child
                i += step
                self._touch(child, now, False)
                continue
            m = _common_prefix(run, keys, i)
            node = self._split(child, m)
            i += m
            self._touch(node, now, False)
            break
        prefix = i
        if i < n:
            leaf = RadixNode(self._ids.next(), keys[i:], node, node.depth + n - i, now)
            if value is not None:
                leaf.value = value[i:]
            leaf.tiers = tiers
            node.children[keys[i]] = leaf
            self._num_nodes += 1
            size = n - i
            self._total += size
            for t in _bits(tiers):
                self._tier_total[t] += size
            self._refresh(leaf)
            self._refresh(node)
            node = leaf
            if self.observer is not None:
                self.observer.node_added(leaf)
        return InsertResult(prefix, node)

    def _split(self, child: RadixNode, m: int) -> RadixNode:
        """Cut ``child``'s run after ``m`` blocks; return the new upper node (``0 < m < len``)."""
        parent = child.parent
        assert parent is not None and 0 < m < len(child.key)
        run = child.key
        mid = RadixNode(self._ids.next(), run[:m], parent, child.depth - len(run) + m, child.created)
        # The upper half inherits everything the blocks had: they are the same blocks.
        mid.last_access = child.last_access
        mid.hit_count = child.hit_count
        mid.lock_ref = child.lock_ref
        mid.tiers = child.tiers
        if child.value is not None:
            mid.value = child.value[:m]
            child.value = child.value[m:]
        child.key = run[m:]
        child.parent = mid
        mid.children[child.key[0]] = child
        parent.children[run[0]] = mid
        self._num_nodes += 1
        # mid has a child holding all of its tiers, so it is in no candidate set; child's state and
        # priority are unchanged, so its heap entries stay valid.
        if self.observer is not None:
            self.observer.node_split(mid, child)
        return mid

    # ------------------------------------------------------------------ locks

    def inc_lock(self, node: RadixNode) -> int:
        """Lock ``node`` and its ancestors; return how many blocks moved from evictable to protected."""
        self._check_attached(node)
        moved = 0
        root = self.root
        while node is not root:
            if node.lock_ref == 0:
                size = len(node.key)
                moved += size
                for t in _bits(node.tiers):
                    self._tier_protected[t] += size
                node.lock_ref = 1
                self._refresh(node)
            else:
                node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]
        self._protected += moved
        return moved

    def dec_lock(self, node: RadixNode) -> int:
        """Undo one :meth:`inc_lock` of ``node``; return how many blocks became evictable."""
        self._check_attached(node)
        freed = 0
        root = self.root
        while node is not root:
            if node.lock_ref <= 0:
                raise ValueError(f"node: {node!r} is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                size = len(node.key)
                freed += size
                for t in _bits(node.tiers):
                    self._tier_protected[t] -= size
                self._refresh(node)
            node = node.parent  # type: ignore[assignment]
        self._protected -= freed
        return freed

    # ------------------------------------------------------------------ tiers and stats

    def add_tier(self, node: RadixNode, tier: str) -> None:
        """Mark ``node``'s blocks as present in ``tier``."""
        self._check_attached(node)
        self._set_tiers(node, node.tiers | (1 << self._tier(tier)))

    def remove_tier(self, node: RadixNode, tier: str) -> None:
        """Mark ``node``'s blocks as no longer present in ``tier`` (the node stays in the tree)."""
        self._check_attached(node)
        self._set_tiers(node, node.tiers & ~(1 << self._tier(tier)))

    def has_tier(self, node: RadixNode, tier: str) -> bool:
        """True when ``node`` is present in ``tier``."""
        return bool(node.tiers >> self._tier(tier) & 1)

    def tiers_of(self, node: RadixNode) -> tuple[str, ...]:
        """The names of the tiers ``node`` is present in, in tier order."""
        return tuple(self._tier_names[t] for t in _bits(node.tiers))

    def touch(self, node: RadixNode, now: float, hit: bool = True) -> None:
        """Record an access to ``node`` (and its ancestors) at ``now``; ``hit`` also counts a hit."""
        self._check_attached(node)
        root = self.root
        while node is not root:
            self._touch(node, now, hit)
            node = node.parent  # type: ignore[assignment]

    def _touch(self, node: RadixNode, now: float, hit: bool) -> None:
        node.last_access = now
        if hit:
            node.hit_count += 1
        if node._cand:
            # Its priority may have changed: give it a fresh heap entry (the old one turns stale).
            for b in _bits(node._cand):
                self._push(b, node)

    def _set_tiers(self, node: RadixNode, tiers: int) -> None:
        old = node.tiers
        if tiers == old or node is self.root:
            return
        size = len(node.key)
        for t in _bits(old & ~tiers):
            self._tier_total[t] -= size
            if node.lock_ref:
                self._tier_protected[t] -= size
        for t in _bits(tiers & ~old):
            self._tier_total[t] += size
            if node.lock_ref:
                self._tier_protected[t] += size
        node.tiers = tiers
        self._refresh(node)
        if node.parent is not None:
            self._refresh(node.parent)
        if self.observer is not None:
            self.observer.tiers_changed(node, old, tiers)

    # ------------------------------------------------------------------ eviction

    def evict(
        self,
        num_blocks: int,
        tier: str | None = None,
        policy: str | EvictionPolicy | None = None,
        *,
        exclude_tiers: Sequence[str] = (),
        on_victim: Callable[[RadixNode], None] | None = None,
    ) -> EvictResult:
        """Evict at least ``num_blocks`` blocks (whole nodes) from unlocked leaves, in policy order.

        Args:
            num_blocks: how many blocks to free; stops early when nothing evictable is left.
            tier: None removes whole leaves from the tree. A tier name clears that tier from nodes that
                hold it while none of their children do; such a node is removed once it has no tier
                and no children left.
            policy: victim order for this call; defaults to the tree's policy.
            exclude_tiers: candidates present in any of these tiers are passed over (they stay
                candidates for later calls), e.g. ``evict(n, tier="host", exclude_tiers=("device",))``
                frees host copies only where no device copy exists.
            on_victim: called with each victim just before its tier is cleared (or it is removed), so a
                caller can copy it elsewhere first, e.g. ``add_tier(node, "host")`` before a device
                eviction (a node left with a tier is not removed). It may add tiers to the victim and
                evict *other* tiers, but must not lock, remove or evict the victim, nor evict ``tier``.

        Returns:
            The number of blocks evicted and the victims in order.
        """
        if num_blocks <= 0:
            return EvictResult(0, ())
        b = 0 if tier is None else 1 + self._tier(tier)
        exclude = self.tier_mask(*exclude_tiers) if exclude_tiers else 0
        passed_over: dict[int, tuple[Any, RadixNode]] = {}  # node id -> (priority, node)
        pol = self._policy
        if policy is not None:
            pol = make_eviction_policy(policy) if isinstance(policy, str) else policy
        shared = pol is self._policy
        cand = self._cand[b]
        heap = self._heaps[b] if shared else self._heap_of(pol, cand.values())
        clear = 0 if b == 0 else 1 << (b - 1)
        victims: list[RadixNode] = []
        evicted = 0
        while evicted < num_blocks:
            if not heap:
                if len(cand) <= len(passed_over):
                    break  # nothing left but candidates this call passes over
                # Only reachable if someone edited node stats behind the tree's back: resync.
                heap[:] = self._heap_of(pol, cand.values())
            prio, _, node = heapq.heappop(heap)
            if not node._cand >> b & 1:
                continue  # no longer a candidate (removed, locked, got a child, ...)
            current = pol.priority(node)
            if current != prio:
                heapq.heappush(heap, (current, self._next_seq(), node))
                continue
            if node.tiers & exclude:
                passed_over[node.id] = (prio, node)
                continue
            if on_victim is not None:
                on_victim(node)
            parent = node.parent
            assert parent is not None
            if b == 0:
                self._remove_leaf(node)
            else:
                self._set_tiers(node, node.tiers & ~clear)
                if not node.tiers and not node.children:
                    self._remove_leaf(node)
            evicted += len(node.key)
            victims.append(node)
            if not shared and parent._cand >> b & 1:
                heapq.heappush(heap, (pol.priority(parent), self._next_seq(), parent))
        # Passed-over candidates lost their heap entry when popped: give it back so later calls see them.
        for prio, node in passed_over.values():
            heapq.heappush(heap, (prio, self._next_seq(), node))
        return EvictResult(evicted, tuple(victims))

    def remove(self, node: RadixNode) -> None:
        """Remove one unlocked leaf from the tree (whatever its tiers)."""
        self._check_attached(node)
        if node is self.root or node.children or node.lock_ref:
            raise ValueError(f"node: only an unlocked leaf can be removed, got {node!r}")
        self._remove_leaf(node)

    def _remove_leaf(self, node: RadixNode) -> None:
        parent = node.parent
        assert parent is not None and not node.children and node.lock_ref == 0
        if self.observer is not None:
            self.observer.node_removed(node)
        del parent.children[node.key[0]]
        size = len(node.key)
        self._total -= size
        for t in _bits(node.tiers):
            self._tier_total[t] -= size
        self._set_cand(node, 0)
        node.parent = None
        self._num_nodes -= 1
        self._refresh(parent)

    # ------------------------------------------------------------------ candidate sets

    def _refresh(self, node: RadixNode) -> None:
        """Recompute which candidate sets ``node`` belongs to."""
        if node is self.root:
            return
        if node.lock_ref:
            new = 0
        elif node.children:
            below = 0
            for child in node.children.values():
                below |= child.tiers
            new = (node.tiers & ~below) << 1
        else:
            new = 1 | (node.tiers << 1)
        if new != node._cand:
            self._set_cand(node, new)

    def _set_cand(self, node: RadixNode, new: int) -> None:
        old = node._cand
        node._cand = new
        for b in _bits(old & ~new):
            del self._cand[b][node.id]
        for b in _bits(new & ~old):
            self._cand[b][node.id] = node
            self._push(b, node)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push(self, b: int, node: RadixNode) -> None:
        heap = self._heaps[b]
        heapq.heappush(heap, (self._policy.priority(node), self._next_seq(), node))
        live = len(self._cand[b])
        if len(heap) > 2 * live + _COMPACT_SLACK:
            heap[:] = self._heap_of(self._policy, self._cand[b].values())

    def _heap_of(self, pol: EvictionPolicy, nodes: Iterable[RadixNode]) -> list[tuple[Any, int, RadixNode]]:
        # The sequence number keeps tuples from ever comparing two RadixNode objects.
        heap = [(pol.priority(n), self._next_seq(), n) for n in nodes]
        heapq.heapify(heap)
        return heap

    # ------------------------------------------------------------------ navigation

    def path(self, node: RadixNode) -> list[RadixNode]:
        """The nodes from the root's child down to ``node`` (empty for the root)."""
        self._check_attached(node)
        out: list[RadixNode] = []
        while node is not self.root:
            out.append(node)
            node = node.parent  # type: ignore[assignment]
        out.reverse()
        return out

    def full_key(self, node: RadixNode) -> tuple[int, ...]:
        """The whole block sequence from the root to the end of ``node``."""
        out: list[int] = []
        for n in self.path(node):
            out.extend(n.key)
        return tuple(out)

    def iter_nodes(self) -> Iterator[RadixNode]:
        """Every node except the root, parents before children, children in insertion order."""
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def leaves(self) -> list[RadixNode]:
        """All current leaves (locked or not), in :meth:`iter_nodes` order."""
        return [n for n in self.iter_nodes() if not n.children]

    def _check_attached(self, node: RadixNode) -> None:
        if node.parent is None and node is not self.root:
            raise ValueError(f"node: {node!r} is not in this tree (evicted or removed)")

    def pretty(self) -> str:
        """A multi-line drawing of the tree, for debugging and docs."""
        lines = ["root"]

        def walk(node: RadixNode, indent: str) -> None:
            for child in node.children.values():
                tiers = ",".join(self.tiers_of(child))
                lines.append(f"{indent}{list(child.key)} id={child.id} lock={child.lock_ref} tiers=[{tiers}]")
                walk(child, indent + "  ")

        walk(self.root, "  ")
        return "\n".join(lines)

    # ------------------------------------------------------------------ self-check

    def check_invariants(self) -> None:
        """Recompute every counter and candidate set from scratch and raise AssertionError on drift."""
        total = protected = count = 0
        tier_total = [0] * len(self._tier_names)
        tier_prot = [0] * len(self._tier_names)
        cands: list[set[int]] = [set() for _ in self._cand]
        for node in self.iter_nodes():
            count += 1
            parent = node.parent
            assert parent is not None and parent.children[node.key[0]] is node, node
            assert node.key, f"empty run at {node!r}"
            assert node.depth == parent.depth + len(node.key), node
            assert node.lock_ref >= 0, node
            assert parent is self.root or parent.lock_ref >= node.lock_ref, node
            if node.value is not None:
                assert len(node.value) == len(node.key), node
            size = len(node.key)
            total += size
            if node.lock_ref:
                protected += size
            for t in _bits(node.tiers):
                tier_total[t] += size
                if node.lock_ref:
                    tier_prot[t] += size
            below = 0
            for child in node.children.values():
                below |= child.tiers
            want = 0 if node.lock_ref else (0 if node.children else 1) | ((node.tiers & ~below) << 1)
            assert node._cand == want, f"{node!r}: candidate mask {node._cand} != {want}"
            for b in _bits(want):
                cands[b].add(node.id)
        assert count == self._num_nodes, (count, self._num_nodes)
        assert (total, protected) == (self._total, self._protected), (total, protected)
        assert tier_total == self._tier_total and tier_prot == self._tier_protected
        for b, ids in enumerate(cands):
            assert ids == set(self._cand[b]), f"candidate set {b} drifted"
            alive = {n.id for _, _, n in self._heaps[b] if n._cand >> b & 1}
            assert ids <= alive, f"candidate set {b} has nodes without a heap entry"
