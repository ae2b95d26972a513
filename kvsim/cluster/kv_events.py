"""KV cache events: what each engine's radix tree holds, published as page events to a router's index.

Dynamo's KV router and llm-d's precise-prefix scorer do not look into engines: each engine publishes
"blocks stored" and "blocks removed" events (SGLang's ``--kv-events-config``), and the router keeps its
own index of which engine holds which block, hashed so that one block hash names a whole prefix. kvsim
does the same:

* :class:`KvEventPublisher` watches one engine's radix tree (:class:`~kvsim.cache.radix.TreeObserver`)
  and turns every change into page events: a new leaf or a tier gained is ``stored``, a tier lost or a
  node leaving is ``removed``, for the ``device`` or ``host`` tier (an untiered tree is all device).
  Pages are named by a chained hash, ``h_i = hash((h_{i-1}, tokens of page i))``, so a page hash stands
  for the prefix that ends with it, and one dictionary probe per page answers "does this engine hold
  this prefix". A node owns the pages whose last token it holds (kvsim's tree splits where two prompts
  part, which need not be a page boundary). Splits change nothing the engine holds and publish
  nothing; the publisher keeps each node's chain state so a node's pages hash from its parent's.
* :class:`EventFeed` delivers the events ``lag_s`` seconds after they happen (the publisher's socket,
  the router's queue and its indexer apply), in publication order.
* :class:`PrefixIndex` is the router's view: per instance, page hash -> tier bits;
  :meth:`~PrefixIndex.prefix_hit` walks a request's page hashes as the engine's match would (device
  pages first, then host-only pages).

Python's hash of a tuple of ints is not salted, so the hashes (and the routing they drive) are the same
in every process.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kvsim.cache.radix import RadixNode

#: Tier bits of the index (the engine tree's own bit numbers are mapped to these).
DEVICE = 1
HOST = 2
_TIER_BITS = {"device": DEVICE, "host": HOST}


@dataclass(frozen=True, slots=True)
class KvEvent:
    """Pages of one engine entering or leaving one tier.

    Attributes:
        time_s: when it happened (simulated seconds).
        instance: the engine's index in the fleet.
        stored: True for "stored", False for "removed".
        tier: :data:`DEVICE` or :data:`HOST`.
        hashes: the pages' chained hashes.
    """

    time_s: float
    instance: int
    stored: bool
    tier: int
    hashes: tuple[int, ...]


def page_hashes(tokens: Sequence[int] | np.ndarray, page_size: int, start: int = 0) -> list[int]:
    """Chained hashes of the whole pages of ``tokens`` (a trailing partial page is left out), starting
    from the hash ``start`` of what precedes them (0 at the root)."""
    if isinstance(tokens, np.ndarray):
        tokens = tokens.tolist()
    out: list[int] = []
    h = start
    for begin in range(0, len(tokens) - page_size + 1, page_size):
        h = hash((h, tuple(tokens[begin : begin + page_size])))
        out.append(h)
    return out


class KvEventPublisher:
    """Publishes one engine's radix-tree changes as page events (install with :meth:`attach`).

    Args:
        instance: the engine's index in the fleet.
        page_size: tokens per page (node runs are whole pages, as the engine inserts them).
        emit: receives every event.
        now: the current simulated time.
    """

    def __init__(
        self, instance: int, page_size: int, emit: Callable[[KvEvent], None], now: Callable[[], float]
    ) -> None:
        self.instance = instance
        self.page_size = page_size
        self._emit = emit
        self._now = now
        self._tier_bits: dict[int, int] = {}  # the tree's bit -> DEVICE / HOST
        self._tiered = False
        # node id -> (its pages' hashes, the chain state at its end: last page hash and the tokens of
        # the page still open). Node runs need not be whole pages (the tree splits where prompts part),
        # so a node owns the pages whose last token it holds.
        self._memo: dict[int, tuple[tuple[int, ...], int, tuple[int, ...]]] = {}
        self.published = 0

    def attach(self, tree: object, *, tiered: bool) -> None:
        """Watch ``tree`` (a :class:`~kvsim.cache.radix.RadixTree`); ``tiered`` when its nodes carry
        device/host bits (HiCache), else every node is on device."""
        names = tree.tier_names  # type: ignore[attr-defined]
        self._tier_bits = {1 << i: _TIER_BITS[n] for i, n in enumerate(names) if n in _TIER_BITS}
        self._tiered = tiered
        tree.observer = self  # type: ignore[attr-defined]

    # ---------------------------------------------------------------------------------- hashing

    def _state(self, node: RadixNode) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        memo = self._memo.get(node.id)
        if memo is not None:
            return memo
        parent = node.parent
        if parent is None or parent.parent is None:
            h, tail = 0, ()
        else:
            _, h, tail = self._state(parent)
        run = tail + node.key
        size = self.page_size
        pages = []
        full = len(run) - len(run) % size
        for begin in range(0, full, size):
            h = hash((h, run[begin : begin + size]))
            pages.append(h)
        memo = (tuple(pages), h, run[full:])
        self._memo[node.id] = memo
        return memo

    def _hashes(self, node: RadixNode) -> tuple[int, ...]:
        return self._state(node)[0]

    def _publish(self, stored: bool, tier: int, node: RadixNode) -> None:
        pages = self._hashes(node)
        if pages:
            self.published += 1
            self._emit(KvEvent(self._now(), self.instance, stored, tier, pages))

    def _tiers(self, mask: int) -> list[int]:
        return [bit for tree_bit, bit in self._tier_bits.items() if mask & tree_bit]

    # ---------------------------------------------------------------------------------- observer

    def node_added(self, node: RadixNode) -> None:
        """A new leaf: its pages are stored in its tiers (on device for an untiered tree)."""
        for tier in self._tiers(node.tiers) if self._tiered else [DEVICE]:
            self._publish(True, tier, node)

    def node_split(self, upper: RadixNode, lower: RadixNode) -> None:
        """Nothing changes for the router; both halves' pages are derived again when next needed."""
        self._memo.pop(lower.id, None)

    def tiers_changed(self, node: RadixNode, old: int, new: int) -> None:
        """Tiers gained are stored, tiers lost removed."""
        if not self._tiered:
            return
        for tier in self._tiers(new & ~old):
            self._publish(True, tier, node)
        for tier in self._tiers(old & ~new):
            self._publish(False, tier, node)

    def node_removed(self, node: RadixNode) -> None:
        """The node's pages leave every tier they were in."""
        for tier in self._tiers(node.tiers) if self._tiered else [DEVICE]:
            self._publish(False, tier, node)
        self._memo.pop(node.id, None)


class PrefixIndex:
    """The router's per-instance index: page hash -> tier bits.

    Args:
        instances: number of engines.
    """

    def __init__(self, instances: int) -> None:
        self._held: list[dict[int, int]] = [{} for _ in range(instances)]
        self.applied = 0

    def apply(self, event: KvEvent) -> None:
        """Record one event."""
        held = self._held[event.instance]
        if event.stored:
            for h in event.hashes:
                held[h] = held.get(h, 0) | event.tier
        else:
            for h in event.hashes:
                left = held.get(h, 0) & ~event.tier
                if left:
                    held[h] = left
                else:
                    held.pop(h, None)
        self.applied += 1

    def prefix_hit(self, instance: int, hashes: Sequence[int]) -> tuple[int, int]:
        """Pages of ``hashes`` the instance holds: ``(device, host-only)``, the device run first and the
        host run after it, as the engine's match splits them."""
        held = self._held[instance]
        n = len(hashes)
        i = 0
        while i < n and held.get(hashes[i], 0) & DEVICE:
            i += 1
        device = i
        while i < n and held.get(hashes[i], 0) & HOST:
            i += 1
        return device, i - device

    def pages(self, instance: int) -> int:
        """Pages the index believes the instance holds in any tier."""
        return len(self._held[instance])


class EventFeed:
    """Events on their way from the engines to the router, delivered ``lag_s`` after they happen.

    Args:
        index: where delivered events are applied.
        lag_s: delivery delay (>= 0).
    """

    def __init__(self, index: PrefixIndex, lag_s: float) -> None:
        if not lag_s >= 0:
            raise ValueError(f"lag_s: must be >= 0, got {lag_s}")
        self.index = index
        self.lag_s = lag_s
        self._queue: list[tuple[float, int, KvEvent]] = []
        self._seq = 0

    def publish(self, event: KvEvent) -> None:
        """Queue an event (delivery order = publication order among equal times)."""
        self._seq += 1
        heapq.heappush(self._queue, (event.time_s + self.lag_s, self._seq, event))

    def deliver(self, now: float) -> None:
        """Apply every event due by ``now``."""
        queue = self._queue
        while queue and queue[0][0] <= now:
            self.index.apply(heapq.heappop(queue)[2])

    def pending(self) -> int:
        """Events published but not delivered yet."""
        return len(self._queue)


__all__ = [
    "DEVICE",
    "HOST",
    "EventFeed",
    "KvEvent",
    "KvEventPublisher",
    "PrefixIndex",
    "page_hashes",
]
