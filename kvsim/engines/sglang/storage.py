"""HiCache's L3 storage tier: prefetching pages from storage into host memory and backing them up.

kvsim models what SGLang's ``HiRadixCache`` and ``HiCacheController`` do with a storage backend
(``--hicache-storage-backend``, SGLang v0.5.6.post2), on top of :mod:`kvsim.engines.sglang.hicache`:

Prefetch (storage -> host)
    - When a request arrives, its prompt is matched on device and host. If the device prefix ends at a
      node that has a host copy (or at the root), the rest of the prompt, cut to whole pages, is a
      prefetch candidate (``Scheduler._prefetch_kvcache``).
    - A candidate shorter than ``prefetch_threshold`` is not prefetched, nor is any while prefetches in
      flight already reserve ``prefetch_capacity_tokens`` host slots; the candidate's length is
      reserved in host memory (host copies of host-only leaves are evicted for it, and the prefetch is
      dropped when even that leaves too little room) (``prefetch_from_storage``).
    - The store is asked which leading pages it holds (a KVCM ``GetCacheLocation`` prefix match, or a
      plain store's ``exists``); the answer arrives after the query latency. A hit below the threshold
      revokes the prefetch; otherwise the host slots past the hit are given back and the hit pages are
      read in batches of 128 pages, one after the other, each batch at the storage tier's rate shared
      with the other transfers on that tier (:mod:`kvsim.engines.sglang.storage_io`). The tokens
      completed grow batch by batch (``_storage_hit_query``, ``_page_transfer``).
    - At each prefill attempt, a waiting request with a prefetch in flight is offered to the prefill
      adder only once the policy lets its prefetch stop (``check_prefetch_progress``): ``best_effort``
      at once, ``wait_complete`` when every hit page has arrived, ``timeout`` then or when
      ``prefetch_timeout_base + pages x page_size / 1024 x prefetch_timeout_per_ki_token`` seconds have
      passed. Until then the adder skips it and tries the requests behind it. When the prefetch stops,
      the pages completed so far become host-only radix nodes below the matched prefix, and the
      request's match finds them as a host hit that loads back to device like any other
      (:meth:`~kvsim.engines.sglang.hicache.HiCacheKVPool.load_back`).

Backup (host -> storage)
    - When a write-through copy to host is acknowledged (``writing_check``), the node is written to
      storage too: its pages (those whose last token lies in the node) go to the store, only those the
      store does not hold yet move, in batches of 128 pages at the tier's shared write rate. With KVCM
      this is the two-phase write: ``StartWriteCache`` when the copy starts (KVCM answers with the
      pages already cached, a storage to write the others to, or a refusal when the group quota or the
      storage is full) and ``FinishWriteCache`` when the last byte lands. ``write_back`` makes no
      write-through copies, so (as in SGLang v0.5.6) nothing is written to storage with it.

Simplifications: SGLang protects the host copy of a node being written to storage, and the prefix of a
prefetch in flight, from host eviction (``host_ref_counter``); kvsim does not. A node whose host copy
is evicted during its storage write still completes the write (its bytes are in flight), and a
prefetch whose prefix left both device and host memory meanwhile is discarded when it stops. A prefetch
stopped mid-batch discards that batch. TP ranks move their shards as one transfer of the whole page.

The store is either KVCM (:mod:`kvsim.engines.sglang.kvcm_store`) or a plain store
(:class:`PlainStore`: SGLang's ``file`` and ``mooncake`` backends, no quotas or reclaim).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol, overload

import numpy as np

from kvsim.cache.radix import RadixNode
from kvsim.engines.sglang.config import HiCacheSettings, StorageSettings
from kvsim.engines.sglang.faults import FaultPlan
from kvsim.engines.sglang.hicache import HiCacheKVPool, TransferModel
from kvsim.engines.sglang.page_keys import PageKeyCache
from kvsim.engines.sglang.storage_io import Transfer, TransferIO
from kvsim.hardware.storage import StorageTier

if TYPE_CHECKING:
    from kvsim.engines.sglang.scheduler import ReqState

#: Pages per storage I/O operation (SGLang's ``storage_batch_size``).
STORAGE_BATCH_PAGES = 128

#: ``(tier, pages)`` runs in page order: where a read's pages come from.
TierRuns = list[tuple[StorageTier, int]]


class TokenKeys(Sequence[int]):
    """Per-token view of a prompt's page keys, stored as a radix node's ``value``.

    Element ``j`` stands for token ``offset + j`` and is the key of the page holding it; slicing (all the
    radix tree does with a value) makes a new view without copying. :meth:`page_keys` gives the keys of
    the pages whose *last* token lies in the view: those are the pages a node owns when it is written to
    storage.
    """

    __slots__ = ("keys", "length", "offset", "page_size")

    def __init__(self, keys: np.ndarray, page_size: int, offset: int, length: int) -> None:
        self.keys = keys
        self.page_size = page_size
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> TokenKeys: ...

    def __getitem__(self, index: int | slice) -> int | TokenKeys:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.length)
            if step != 1:
                raise ValueError("token keys are only sliced contiguously")
            return TokenKeys(self.keys, self.page_size, self.offset + start, max(stop - start, 0))
        if not -self.length <= index < self.length:
            raise IndexError(f"token {index} outside a view of {self.length}")
        return int(self.keys[(self.offset + index % self.length) // self.page_size])

    def page_keys(self) -> np.ndarray:
        """Keys of the pages ending inside this view (a page ends at token ``(p + 1) x page - 1``)."""
        page = self.page_size
        first = -(-(self.offset + 1) // page) - 1
        last = (self.offset + self.length) // page  # exclusive
        return self.keys[max(first, 0) : max(last, 0)]


@dataclass(slots=True)
class WriteTicket:
    """A store's answer to the start of a write: how many pages must move, and where.

    Attributes:
        new_pages: pages the store does not hold yet (they are transferred).
        tier: where they go (None when nothing moves).
        refused_pages: pages the store refused (a quota, a full storage, a limit on keys).
        handle: the store's own state of the write (a KVCM write session).
    """

    new_pages: int
    tier: StorageTier | None
    refused_pages: int = 0
    handle: object = None


class L3Store(Protocol):
    """What the L3 controller needs from a store (KVCM, or a plain store)."""

    name: str
    query_latency_s: float  # from asking which pages are held to the answer
    write_latency_s: float  # from asking to write to the first byte moving
    poll_interval_s: float  # how often the store's background work runs (inf: never)
    faulted: bool  # a scripted fault was scheduled (the store then reports its fault totals)

    def query(self, keys: np.ndarray, skip_pages: int, now: float) -> TierRuns:
        """Pages held from ``keys[skip_pages]`` on (a prefix), as runs of the tier each comes from."""
        ...

    def start_write(self, keys: np.ndarray, now: float) -> WriteTicket:
        """Begin writing ``keys``; the pages not held yet are to be transferred."""
        ...

    def finish_write(self, ticket: WriteTicket, now: float) -> int:
        """The transfer of ``ticket``'s pages ended at ``now``; return the pages the store now serves."""
        ...

    def next_deadline(self) -> float | None:
        """When the store next needs :meth:`poll` (None: never)."""
        ...

    def poll(self, now: float) -> None:
        """Let the store act on everything due by ``now``."""
        ...

    def close(self) -> None:
        """Flush what the store keeps (e.g. its event log)."""
        ...

    def metrics(self) -> dict[str, object]:
        """Run totals for ``metrics.json``."""
        ...

    def storage_names(self) -> tuple[str, ...]:
        """The storages a fault may name (KVCM storages, or a plain store's tier)."""
        ...

    def tier_of_storage(self, name: str) -> StorageTier:
        """The tier behind storage ``name``."""
        ...

    def set_down(self, name: str, down: bool, now: float) -> None:
        """A scripted outage of storage ``name`` begins (``down``) or ends at ``now``."""
        ...


class PlainStore:
    """SGLang's ``file`` or ``mooncake`` storage backend: a set of page keys on one tier, no KVCM.

    Capacity is the tier's bytes over the bytes of a page. When full, ``mooncake`` evicts the least
    recently used pages (Mooncake Store's eviction, kept exact here rather than approximate) and
    ``file`` refuses new pages (SGLang's file backend never deletes). A page becomes readable when its
    write completes; a hit refreshes it.
    """

    def __init__(self, backend: str, tier: StorageTier, page_bytes: int) -> None:
        self.name = backend
        self.tier = tier
        self.page_bytes = page_bytes
        self.capacity_pages = None if tier.capacity_bytes is None else int(tier.capacity_bytes // page_bytes)
        self.query_latency_s = tier.read_latency_s
        self.write_latency_s = 0.0
        self.poll_interval_s = float("inf")
        self._evicts = backend == "mooncake"
        self._pages: dict[int, None] = {}  # insertion order = LRU order (oldest first)
        self.queries = 0
        self.query_pages = 0
        self.hit_pages = 0
        self.written_pages = 0
        self.refused_pages = 0
        self.evicted_pages = 0
        self.down = False  # a scripted outage: queries miss, writes are refused
        self.faulted = False  # a fault was ever scheduled (its totals are then reported)
        self.down_queries = 0

    def storage_names(self) -> tuple[str, ...]:
        """The tier's name: the one storage a fault may name."""
        return (self.tier.name,)

    def tier_of_storage(self, name: str) -> StorageTier:
        """The store's tier."""
        return self.tier

    def set_down(self, name: str, down: bool, now: float) -> None:
        """Begin or end an outage: while down, every query misses and every write is refused."""
        self.down = down

    def query(self, keys: np.ndarray, skip_pages: int, now: float) -> TierRuns:
        """The leading pages of ``keys[skip_pages:]`` the store holds (refreshed as used); nothing while
        the store is down."""
        if self.down:
            self.queries += 1
            self.query_pages += len(keys) - skip_pages
            self.down_queries += 1
            return []
        pages = self._pages
        hit = 0
        for key in keys[skip_pages:].tolist():
            if key not in pages:
                break
            del pages[key]
            pages[key] = None
            hit += 1
        self.queries += 1
        self.query_pages += len(keys) - skip_pages
        self.hit_pages += hit
        return [(self.tier, hit)] if hit else []

    def start_write(self, keys: np.ndarray, now: float) -> WriteTicket:
        """The pages of ``keys`` not stored yet move; the store checks room when they land. A store that
        is down refuses them all."""
        if self.down:
            self.refused_pages += len(keys)
            return WriteTicket(0, None, len(keys), None)
        new = [k for k in keys.tolist() if k not in self._pages]
        return WriteTicket(len(new), self.tier if new else None, 0, new)

    def finish_write(self, ticket: WriteTicket, now: float) -> int:
        """Store the ticket's pages, evicting (``mooncake``) or refusing (``file``) when full."""
        pages = self._pages
        stored = 0
        for key in ticket.handle or ():  # type: ignore[attr-defined]
            if key in pages:
                continue
            if self.capacity_pages is not None and len(pages) >= self.capacity_pages:
                if not self._evicts or not pages:
                    self.refused_pages += 1
                    continue
                del pages[next(iter(pages))]
                self.evicted_pages += 1
            pages[key] = None
            stored += 1
        self.written_pages += stored
        return stored

    def next_deadline(self) -> float | None:
        """A plain store has no timed work."""
        return None

    def poll(self, now: float) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to flush."""

    def metrics(self) -> dict[str, object]:
        """Query and write totals (pages)."""
        return {
            "l3_storage_tiers": self.tier.name,
            "l3_queries": self.queries,
            "l3_query_blocks": self.query_pages,
            "l3_hit_blocks": self.hit_pages,
            "l3_stored_blocks": len(self._pages),
            "l3_evicted_blocks": self.evicted_pages,
            **({"l3_queries_while_down": self.down_queries} if self.faulted else {}),
        }


@dataclass(eq=False, slots=True)
class PrefetchOp:
    """One request's prefetch from storage into host memory."""

    state: ReqState
    start: int  # tokens matched on device and host when it was issued: the prefetch starts here
    length: int  # tokens asked for (the host slots reserved at issue)
    issued_s: float
    query_done_s: float
    hit_tokens: int  # tokens the store holds from ``start`` on (known once the query is done)
    runs: TierRuns
    reserved: int  # host slots still reserved for it
    known: bool = False  # the query's answer has arrived
    revoked: bool = False  # the hit was below the threshold: nothing will be read
    completed_tokens: int = 0
    next_batch: int = 0
    in_flight: list[Transfer] = field(default_factory=list)
    landed_s: float | None = None  # when the last hit page arrived
    done: bool = False  # stopped or revoked


@dataclass(eq=False, slots=True)
class BackupOp:
    """One node's write to storage: the store's ticket and the pages still to send."""

    ticket: WriteTicket
    pages_left: int


class L3KVPool(HiCacheKVPool):
    """The HiCache pool of a server with a storage tier.

    Host memory also holds the slots reserved by prefetches in flight; acknowledged write-through
    copies start their storage writes; each node keeps its prompt's page keys as its ``value`` (a
    :class:`TokenKeys` view) so its storage write knows them.
    """

    def __init__(
        self,
        total_tokens: int,
        page_size: int,
        settings: HiCacheSettings,
        transfer: TransferModel,
        l3: L3Controller,
    ) -> None:
        super().__init__(total_tokens, page_size, settings, transfer)
        self.l3 = l3
        self.reserved_host_tokens = 0
        l3.attach(self)

    @property
    def host_free_tokens(self) -> int:
        """Host slots holding no copy and reserved by no prefetch."""
        return self.host_tokens - self.tree.tier_size("host") - self.reserved_host_tokens

    def reserve_host(self, tokens: int) -> bool:
        """Reserve ``tokens`` host slots for a prefetch, evicting host-only leaves when short (SGLang's
        ``evict_host(prefetch_length)``); False, reserving nothing, when that is not enough."""
        if not self._reserve_host(tokens):
            return False
        self.reserved_host_tokens += tokens
        return True

    def release_host(self, tokens: int) -> None:
        """Give back ``tokens`` reserved host slots."""
        self.reserved_host_tokens -= tokens
        assert self.reserved_host_tokens >= 0, "released more host slots than were reserved"

    def check_events(self, now: float) -> None:
        """SGLang's ``check_hicache_events``: acknowledge completed write-through copies (each starts
        its storage write), then drain the storage control queues (revoked prefetches, finished
        storage writes, host slots given back)."""
        l3 = self.l3
        l3.advance(now)
        writes = self._writes
        while writes and writes[0][0] <= now:
            node = writes.popleft()[1]
            self.tree.dec_lock(node)
            l3.backup(node, now)
        l3.drain(now)

    def next_write_done_s(self, now: float) -> float | None:
        """The next write-through completion or storage event after ``now``."""
        times = [t for t in (super().next_write_done_s(now), self.l3.next_event_s(now)) if t is not None]
        return min(times) if times else None


class L3Controller:
    """Prefetches and backups of one server's L3 tier, in simulated time.

    Args:
        settings: the resolved storage settings.
        store: the store (KVCM or plain).
        page_keys: the workload's page keys.
        page_bytes: bytes of one page over all TP ranks (what a transfer moves per page).
    """

    def __init__(
        self, settings: StorageSettings, store: L3Store, page_keys: PageKeyCache, page_bytes: int
    ) -> None:
        self.settings = settings
        self.store = store
        self.page_keys = page_keys
        self.page_size = page_keys.page_size
        self.page_bytes = page_bytes
        self.io = TransferIO()
        #: the fleet group whose shared transfer IO this controller uses (None: alone, its own IO)
        self.group: L3Group | None = None
        #: this controller's owner id on a shared IO (None: the IO is its own)
        self.io_owner: int | None = None
        self.pool: L3KVPool | None = None
        self.prefetches: dict[int, PrefetchOp] = {}  # request id -> op, until the scheduler stops it
        self.occupied_tokens = 0  # host tokens reserved by prefetches in flight (SGLang's rate limit)
        self._timed: list[tuple[float, int, Callable[[float], None]]] = []
        self._acks: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._last_poll_s = 0.0
        self._now = 0.0
        # Run totals.
        self.prefetches_issued = 0
        self.prefetches_skipped = 0
        self.prefetches_revoked = 0
        self.prefetched_tokens = 0
        self.prefetch_seconds = 0.0
        self.prefetches_stopped = 0
        self.backed_up_tokens = 0
        self.written_pages = 0
        self.refused_pages = 0
        self.failed_pages = 0
        self.cached_pages = 0

    def attach(self, pool: L3KVPool) -> None:
        """Bind the HiCache pool whose host tier the prefetches fill."""
        self.pool = pool

    def schedule_faults(self, plan: FaultPlan) -> None:
        """Turn each scripted fault into timed actions at its start and end (see
        :mod:`kvsim.engines.sglang.faults`)."""
        self.store.faulted = bool(plan.events)
        for fault in plan.events:
            if fault.kind == "unavailable":
                self._push_timed(fault.start_s, partial(self.store.set_down, fault.storage, True))
                self._push_timed(fault.end_s, partial(self.store.set_down, fault.storage, False))
            else:
                tier = self.store.tier_of_storage(fault.storage).name
                self._push_timed(fault.start_s, partial(self._scale, tier, fault.bandwidth_factor))
                self._push_timed(fault.end_s, partial(self._scale, tier, 1.0))

    def _scale(self, tier_name: str, factor: float, now: float) -> None:
        self.io.scale_bandwidth(tier_name, factor)

    # ---- time ------------------------------------------------------------------------------------------
    def _push_timed(self, when: float, action: Callable[[float], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timed, (when, self._seq, action))

    def _push_ack(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._acks, (when, self._seq, action))

    def advance(self, now: float) -> None:
        """Run every transfer, query answer and store deadline due by ``now``, in time order (in a
        group, every member's, merged: :meth:`L3Group.advance`)."""
        if self.group is not None:
            self.group.advance(now)
            return
        if now < self._now:
            return
        io, store = self.io, self.store
        while True:
            t_timed = self._timed[0][0] if self._timed else None
            t_io = io.next_event_s()
            t_store = store.next_deadline()
            if t_store is not None and t_store <= self._last_poll_s:
                t_store = None  # due already: polled below at a later time
            candidates = [t for t in (t_timed, t_io, t_store) if t is not None]
            if not candidates:
                break
            t = min(candidates)
            if t > now:
                break
            if t_timed is not None and t_timed == t:
                io.advance(t)
                self._now = t
                _, _, action = heapq.heappop(self._timed)
                action(t)
            elif t_io is not None and t_io == t:
                t, finished = io.step()
                self._now = t
                for transfer in finished:
                    transfer.on_done(t)
            else:
                io.advance(t)
                self._now = t
                self._poll(t)
        io.advance(now)
        self._now = now
        self._poll_if_due(now)

    def _poll_if_due(self, now: float) -> None:
        due = self.store.next_deadline()
        if now > self._last_poll_s and (
            (due is not None and due <= now) or now - self._last_poll_s >= self.store.poll_interval_s
        ):
            # The store's own background work (KVCM's reclaimer) runs at most once per interval, at
            # the scheduler's passes: writes, the only thing that raises usage, happen at them too.
            self._poll(now)

    def _poll(self, now: float) -> None:
        self.store.poll(now)
        self._last_poll_s = now

    def next_event_s(self, now: float) -> float | None:
        """When, after ``now``, a transfer, query answer or prefetch timeout may let a request in."""
        self.advance(now)
        times: list[float] = []
        if self._timed:
            times.append(self._timed[0][0])
        t_io = self.io.next_event_s()
        if t_io is not None:
            times.append(t_io)
        if self.settings.prefetch_policy == "timeout":
            times.extend(self._deadline_s(op) for op in self.prefetches.values())
        later = [t for t in times if t > now]
        return min(later) if later else None

    def drain(self, now: float) -> None:
        """SGLang's ``drain_storage_control_queues``: act on the revoked prefetches and the host slots
        given back by ``now`` (they take effect at the scheduler's passes, not when they happen)."""
        acks = self._acks
        while acks and acks[0][0] <= now:
            _, _, action = heapq.heappop(acks)
            action()

    # ---- keys ------------------------------------------------------------------------------------------
    def token_keys(self, state: ReqState, length: int) -> TokenKeys:
        """The radix ``value`` of ``state``'s first ``length`` tokens."""
        return TokenKeys(self.page_keys.keys(state.req.request_id), self.page_size, 0, length)

    def forget(self, state: ReqState) -> None:
        """``state`` finished: its page keys are no longer needed (nodes keep the ones they use)."""
        self.page_keys.forget(state.req.request_id)

    # ---- prefetch -----------------------------------------------------------------------------------------
    def on_arrival(self, state: ReqState, now: float) -> None:
        """SGLang's ``_prefetch_kvcache``: start a prefetch of the prompt beyond the device and host hit."""
        pool = self.pool
        assert pool is not None
        self.advance(now)
        settings = self.settings
        page = self.page_size
        max_len = min(state.input_len, state.full_len - 1)
        device_len, device_node, host_len, _ = pool.match_tiers(state.tokens, max_len, now)
        if device_node is not None and not device_node.tiers & pool.tree.tier_mask("host"):
            return  # the device prefix ends at a node without a host copy: no prefetch
        start = device_len + host_len
        length = state.input_len - start
        length -= length % page
        if length < settings.prefetch_threshold or self.occupied_tokens >= settings.prefetch_capacity_tokens:
            self.prefetches_skipped += 1
            return
        if not pool.reserve_host(length):
            self.prefetches_skipped += 1
            return
        keys = self.page_keys.keys(state.req.request_id)[: (start + length) // page]
        runs = self.store.query(keys, start // page, now)
        hit_pages = sum(pages for _, pages in runs)
        op = PrefetchOp(
            state=state,
            start=start,
            length=length,
            issued_s=now,
            query_done_s=now + self.store.query_latency_s,
            hit_tokens=hit_pages * page,
            runs=runs,
            reserved=length,
        )
        self.prefetches[state.req.request_id] = op
        self.occupied_tokens += length
        self.prefetches_issued += 1
        self._push_timed(op.query_done_s, partial(self._query_done, op))

    def _query_done(self, op: PrefetchOp, now: float) -> None:
        """The store's answer arrives: revoke a short hit, else read the hit pages batch by batch."""
        if op.done:
            return
        op.known = True
        if op.hit_tokens < self.settings.prefetch_threshold:
            op.revoked = True
            self._push_ack(now, partial(self._revoke, op))
            return
        excess = op.length - op.hit_tokens
        if excess:
            self._push_ack(now, partial(self._release_excess, op, excess))
        self._read_batch(op, now)

    def _release_excess(self, op: PrefetchOp, excess: int) -> None:
        if op.done:
            return  # already stopped: everything it reserved was given back then
        assert self.pool is not None
        self.pool.release_host(excess)
        op.reserved -= excess

    def _revoke(self, op: PrefetchOp) -> None:
        if op.done:
            return
        self._end(op)
        self.prefetches_revoked += 1

    def _read_batch(self, op: PrefetchOp, now: float) -> None:
        """Start the next batch of up to 128 pages: one transfer per tier the batch's pages are on."""
        page = self.page_size
        first = op.next_batch * STORAGE_BATCH_PAGES
        total = op.hit_tokens // page
        if first >= total:
            return
        last = min(first + STORAGE_BATCH_PAGES, total)
        op.next_batch += 1
        pending: list[Transfer] = []
        position = 0
        for tier, pages in op.runs:
            lo, hi = max(first, position), min(last, position + pages)
            position += pages
            if lo < hi:
                transfer = self.io.submit(
                    tier,
                    "read",
                    (hi - lo) * self.page_bytes,
                    now,
                    partial(self._read_done, op),
                    self.io_owner or 0,
                )
                pending.append(transfer)
        op.in_flight = pending

    def _read_done(self, op: PrefetchOp, now: float) -> None:
        if op.done or any(t.done_s is None for t in op.in_flight):
            return  # another transfer of this batch is still moving
        op.in_flight = []
        op.completed_tokens = min(op.next_batch * STORAGE_BATCH_PAGES * self.page_size, op.hit_tokens)
        if op.completed_tokens == op.hit_tokens:
            op.landed_s = now
        self._read_batch(op, now)

    def _deadline_s(self, op: PrefetchOp) -> float:
        """When the ``timeout`` policy lets ``op`` stop: its start plus the base, plus the per-page part
        once the store's answer says how many pages there are."""
        pages = op.hit_tokens // self.page_size if op.known and not op.revoked else 0
        settings = self.settings
        return op.issued_s + settings.prefetch_timeout_base_s + pages * settings.prefetch_timeout_per_page_s

    def prefetch_done(self, state: ReqState, now: float) -> bool:
        """SGLang's ``check_prefetch_progress``: whether ``state`` may be offered to the prefill adder.

        A request without a prefetch in flight may. Otherwise the policy decides whether the prefetch
        may stop now; if so, the pages completed so far become host nodes and the request may go.
        """
        op = self.prefetches.get(state.req.request_id)
        if op is None:
            return True
        policy = self.settings.prefetch_policy
        if policy != "best_effort":
            complete = op.known and not op.revoked and op.completed_tokens == op.hit_tokens
            # SGLang times out strictly after the deadline; at it here, so the driver can wake there.
            if not complete and (policy == "wait_complete" or now < self._deadline_s(op)):
                return False
        self._stop(op, now)
        return True

    def _stop(self, op: PrefetchOp, now: float) -> None:
        """End a prefetch: insert its completed pages into the host tier, give back its host slots."""
        pool = self.pool
        assert pool is not None
        for transfer in op.in_flight:
            self.io.cancel(transfer)
        op.in_flight = []
        state = op.state
        end = op.start + op.completed_tokens
        ranges = self._insert_host(state, op.start, end, now) if op.completed_tokens else []
        inserted = sum(hi - lo for lo, hi in ranges)
        self._end(op)
        # The prefetch's own time: until its last page landed, or until it was stopped before that.
        seconds = (now if op.landed_s is None else op.landed_s) - op.issued_s
        state.prefetched_ranges = ranges
        state.prefetched_tokens = inserted
        state.prefetch_s = seconds
        self.prefetched_tokens += inserted
        self.prefetch_seconds += seconds
        self.prefetches_stopped += 1

    def _end(self, op: PrefetchOp) -> None:
        assert self.pool is not None
        op.done = True
        self.pool.release_host(op.reserved)
        op.reserved = 0
        self.occupied_tokens -= op.length
        del self.prefetches[op.state.req.request_id]

    def _insert_host(self, state: ReqState, start: int, end: int, now: float) -> list[tuple[int, int]]:
        """Put tokens ``[start, end)`` of ``state``'s prompt into the host tier.

        Returns the ranges of tokens that were not cached before (parts of the range already cached,
        e.g. by another request meanwhile, stay as they are). The prefix ``[0, start)`` must still be in
        the tree, else the pages have nothing to hang from and are discarded (see the module's
        simplifications).
        """
        pool = self.pool
        assert pool is not None
        tree = pool.tree
        tokens = state.tokens
        if start and tree.match_prefix(tokens[:start], None).length < start:
            return []
        result = tree.insert(tokens[:end], now, value=self.token_keys(state, end), tier="host")
        ranges = [(result.prefix_length, end)] if result.prefix_length < end else []  # the new host leaf
        # Nodes of the range that were kept without any copy (for their children) get the host copy.
        either = tree.tier_mask("device", "host")
        node = result.last_node
        while node is not tree.root and node.depth > start:
            if not node.tiers & either:
                tree.add_tier(node, "host")
                ranges.append((node.depth - len(node.key), node.depth))
            node = node.parent  # type: ignore[assignment]
        return sorted(ranges)

    # ---- backup ------------------------------------------------------------------------------------------
    def backup(self, node: RadixNode, now: float) -> None:
        """Write ``node``'s pages to storage (its write-through copy to host just completed)."""
        value = node.value
        if not isinstance(value, TokenKeys):
            return
        keys = value.page_keys()
        if not len(keys):
            return
        ticket = self.store.start_write(keys, now)
        self.refused_pages += ticket.refused_pages
        self.cached_pages += len(keys) - ticket.new_pages - ticket.refused_pages
        if not ticket.new_pages or ticket.tier is None:
            if ticket.handle is not None:
                self.store.finish_write(ticket, now)
            return
        op = BackupOp(ticket, ticket.new_pages)
        self._push_timed(now + self.store.write_latency_s, partial(self._write_batch, op))

    def _write_batch(self, op: BackupOp, now: float) -> None:
        pages = min(op.pages_left, STORAGE_BATCH_PAGES)
        op.pages_left -= pages
        tier = op.ticket.tier
        assert tier is not None
        self.io.submit(
            tier, "write", pages * self.page_bytes, now, partial(self._write_done, op), self.io_owner or 0
        )

    def _write_done(self, op: BackupOp, now: float) -> None:
        if op.pages_left:
            self._write_batch(op, now)
            return
        # The last byte landed: the second phase of the write (KVCM's FinishWriteCache).
        served = self.store.finish_write(op.ticket, now)
        self.written_pages += served
        self.failed_pages += op.ticket.new_pages - served
        self.backed_up_tokens += served * self.page_size

    # ---- report ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the store (its event log)."""
        self.store.poll(max(self._now, self._last_poll_s))
        self.store.close()

    def metrics(self) -> dict[str, object]:
        """Run totals for ``metrics.json`` (token and page counts, bytes and busy seconds per direction)."""
        stopped = self.prefetches_stopped
        data: dict[str, object] = {
            "l3_backend": self.settings.backend,
            "l3_prefetch_policy": self.settings.prefetch_policy,
            "l3_prefetches": self.prefetches_issued,
            "l3_prefetches_skipped": self.prefetches_skipped,
            "l3_prefetches_revoked": self.prefetches_revoked,
            "l3_prefetched_tokens": self.prefetched_tokens,
            "l3_mean_prefetch_ms": self.prefetch_seconds / stopped * 1e3 if stopped else 0.0,
            "l3_backed_up_tokens": self.backed_up_tokens,
            "l3_written_blocks": self.written_pages,
            "l3_already_cached_blocks": self.cached_pages,
            "l3_refused_blocks": self.refused_pages,
            "l3_failed_blocks": self.failed_pages,
            # On a shared IO, this engine's own bytes and the time its own transfers were moving.
            "l3_read_bytes": round(self.io.moved_bytes("read", self.io_owner)),
            "l3_write_bytes": round(self.io.moved_bytes("write", self.io_owner)),
            "l3_read_busy_s": self.io.busy_seconds("read", self.io_owner),
            "l3_write_busy_s": self.io.busy_seconds("write", self.io_owner),
        }
        data.update(self.store.metrics())
        return data


class L3Group:
    """The L3 controllers of a fleet's engines sharing their storage tiers' bandwidth.

    Every member uses one :class:`TransferIO` (tracking owners), so a tier's read or write bandwidth is
    shared by all transfers of all engines on it at that moment, as on one 3FS or Mooncake store. The
    members' timed events (query answers, write starts) and the shared transfers' events then have to
    run in one global time order: a member's events can no longer wait for its own scheduler pass,
    since they change when another engine's transfers finish. Any member's :meth:`L3Controller.advance`
    therefore advances the whole group, merging every member's events (ties: timed events before
    transfers before store deadlines, as a lone controller orders them, then by member index).

    Engines wake at the shared IO's next event while they wait for storage (their ``next_event_s`` is
    the group's), and a new transfer only slows the others; a cancelled one speeds them up, so
    ``wake`` (every engine's driver, set by the fleet) runs after each cancellation.

    Args:
        controllers: the members, in instance order (a member's index is its transfers' owner).
    """

    def __init__(self, controllers: Sequence[L3Controller]) -> None:
        self.controllers = list(controllers)
        self.io = TransferIO(track_owners=True)
        self.io.on_cancel = self._cancelled
        self.wake: Callable[[], None] | None = None
        self._now = 0.0
        for index, controller in enumerate(self.controllers):
            controller.io = self.io
            controller.io_owner = index
            controller.group = self

    def _cancelled(self) -> None:
        if self.wake is not None:
            self.wake()

    def advance(self, now: float) -> None:
        """Run every member's events and the shared transfers due by ``now``, in global time order."""
        if now < self._now:
            return
        io = self.io
        members = self.controllers
        while True:
            timed: tuple[float, int] | None = None
            stored: tuple[float, int] | None = None
            for index, member in enumerate(members):
                if member._timed and (timed is None or member._timed[0][0] < timed[0]):
                    timed = (member._timed[0][0], index)
                due = member.store.next_deadline()
                # A deadline at or before the member's last poll is due already: polled at a later time.
                if due is not None and due > member._last_poll_s and (stored is None or due < stored[0]):
                    stored = (due, index)
            t_io = io.next_event_s()
            t_timed = timed[0] if timed is not None else None
            t_store = stored[0] if stored is not None else None
            candidates = [t for t in (t_timed, t_io, t_store) if t is not None]
            if not candidates:
                break
            t = min(candidates)
            if t > now:
                break
            if timed is not None and t_timed == t:
                io.advance(t)
                member = members[timed[1]]
                member._now = t
                _, _, action = heapq.heappop(member._timed)
                action(t)
            elif t_io is not None and t_io == t:
                t, finished = io.step()
                for transfer in finished:
                    members[transfer.owner]._now = t
                    transfer.on_done(t)
            else:
                assert stored is not None
                io.advance(t)
                members[stored[1]]._now = t
                members[stored[1]]._poll(t)
        io.advance(now)
        self._now = now
        for member in members:
            member._now = now
            member._poll_if_due(now)


__all__ = [
    "STORAGE_BATCH_PAGES",
    "BackupOp",
    "L3Controller",
    "L3Group",
    "L3KVPool",
    "L3Store",
    "PlainStore",
    "PrefetchOp",
    "TierRuns",
    "TokenKeys",
    "WriteTicket",
]
