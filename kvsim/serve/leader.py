"""Leader election: one ``kvsim serve`` of several serves the cache; the others answer SERVER_NOT_LEADER.

This follows the reference's ``LeaderElector`` (study §3.6, §1.3) over a lock from
:mod:`kvsim.serve.locks`:

* **Campaign.** Every ``loop_interval`` a node that does not hold the lock tries to take it (unless a
  campaign delay forbids it) and otherwise records who holds it (``leader_node_id``).
* **Lease.** The holder renews every ``loop_interval``. Its lease deadline is the time *before* the last
  successful take or renewal plus ``lease``, so it is never later than the lock's real expiry in the
  backend. Leader-only RPCs (and the cache's background poll) are admitted only while
  ``now < deadline - margin``, where the margin is the reference's lease-check margin (one loop interval)
  or, if longer, the longest a store call may take (a Redis store's ``timeout_ms * (retry_count + 1)``):
  a leader whose renewals fail stops serving early enough that every store write it admitted has landed
  before its lock can expire and another node can take it. A renewal that says the lock is gone or
  someone else's demotes at once; a renewal that cannot reach the backend is retried until one loop
  interval before the deadline, when the node demotes.
* **Roles.** FOLLOWER -> PROMOTING -> LEADER -> DEMOTING -> FOLLOWER. Promotion builds the leader's state
  (for the service: a ``CacheManager`` over the shared store, which recovers the registry and the meta
  index and expires the WRITING locations of sessions that died with the previous leader) in a worker
  thread while the loop keeps renewing; only then are leader-only RPCs admitted. Demotion closes the gate
  first, then drops the state. A failed promotion releases the lock and stays out of the campaign for one
  lease, so another node can try.
* **LeaderDemote** closes the gate at once, forbids campaigning for the campaign delay (when > 0), drops
  the state and releases the lock, so another node takes over without waiting for the lease. The campaign
  delay also applies after a lost lease, as in the reference.
* **Lock value.** ``<node_id>#<random token per process>``: a restarted node (or a second process given
  the same node id by mistake) never mistakes another process's lock for its own; the node id part is
  what ``leader_node_id`` reports. A node that finds its own value still in the lock (its renewals failed
  but the lock did not expire) takes it back by renewing.

Everything runs on the server's event loop; only the lock calls and the building and closing of leader
state run in worker threads, one at a time. Because the service dispatches synchronously on the same
loop, a request is either admitted and runs to its end before any demotion step, or is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from kvsim.cache import CacheError, ErrorCode
from kvsim.core import Clock, ConfigError, WallClock
from kvsim.serve.locks import LockBackend, LockError, LockHolder

logger = logging.getLogger("kvsim.serve.leader")

NOT_LEADER_MESSAGE = "Server is not leader"  # the reference's status message
DEMOTE_ACCEPTED = "Leader demote request accepted"

#: Admin RPCs every node answers (study §1.3); every other meta and admin RPC is leader-only. The debug
#: service is never gated.
LEADER_FREE_ADMIN_RPCS = frozenset(
    {
        "GetMetrics",
        "CheckHealth",
        "GetManagerClusterInfo",
        "LeaderDemote",
        "GetLeaderElectorConfig",
        "UpdateLeaderElectorConfig",
        "UpdateLogger",
    }
)


def leader_only(kind: str, name: str) -> bool:
    """Whether RPC ``name`` of service ``kind`` is answered only by the leader (else SERVER_NOT_LEADER).
    Every RPC of the string-key KV service is, like the meta RPCs it maps onto."""
    if kind in ("meta", "kv_meta"):
        return True
    return kind == "admin" and name not in LEADER_FREE_ADMIN_RPCS


class Role(enum.Enum):
    """Where a node stands in the election."""

    FOLLOWER = "follower"
    PROMOTING = "promoting"
    LEADER = "leader"
    DEMOTING = "demoting"


class LeadershipHooks(Protocol):
    """What the elector does to the node's state on promotion and demotion."""

    async def prepare(self) -> Any:
        """Build the leader's state (may raise: the promotion fails)."""
        ...

    def install(self, state: Any) -> None:
        """Start using ``state`` (synchronous: the gate opens right after)."""
        ...

    async def uninstall(self, graceful: bool) -> None:
        """Stop using the installed state and release it (``graceful``: the lock is still held)."""
        ...

    async def discard(self, state: Any) -> None:
        """Release a state that was built but never installed."""
        ...


def node_of(value: str) -> str:
    """The node id inside a lock value ``<node_id>#<token>`` (a foreign value is returned whole)."""
    node, sep, token = value.rpartition("#")
    return node if sep and token else value


class LeaderElector:
    """Campaigns for, holds and gives up one lock; tells the service whether to admit leader-only RPCs.

    Args:
        lock: the lock backend.
        hooks: builds, installs and drops the leader's state.
        node_id: this node's id (``kvcm.leader_elector.node_id``).
        lease_s: the lease (``kvcm.leader_elector.lease_ms``).
        loop_interval_s: the loop period and the lease-check margin
            (``kvcm.leader_elector.loop_interval_ms``).
        admission_margin_s: stop admitting leader-only RPCs this long before the lease deadline (at least
            one loop interval): the longest a store call may take, so that a call admitted in time has
            finished before the lock can pass to another node.
        campaign_delay_ms: returns the campaign delay now (Get/UpdateLeaderElectorConfig keep it).
        wall: reports epoch times (loop time, lease expiry).
        monotonic: measures the lease.
        token: the per-process part of the lock value (random when None).

    Raises:
        ValueError: a lease that does not leave room for renewals (``loop_interval_s * 4 > lease_s``) or
            for the admission margin (``admission_margin_s > lease_s - 2 * loop_interval_s``).
    """

    def __init__(
        self,
        lock: LockBackend,
        hooks: LeadershipHooks,
        *,
        node_id: str,
        lease_s: float = 10.0,
        loop_interval_s: float = 0.1,
        admission_margin_s: float = 0.0,
        campaign_delay_ms: Callable[[], int] = lambda: 0,
        wall: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        token: str | None = None,
    ) -> None:
        if not (lease_s > 0 and loop_interval_s > 0) or loop_interval_s * 4 > lease_s:
            raise ValueError(
                f"leader elector: the loop interval ({loop_interval_s * 1000:g} ms) must be > 0 and at most "
                f"a quarter of the lease ({lease_s * 1000:g} ms), so that a lease survives a failed renewal"
            )
        margin = max(loop_interval_s, admission_margin_s)
        if margin > lease_s - 2 * loop_interval_s:
            raise ValueError(
                f"leader elector: the lease ({lease_s * 1000:g} ms) must exceed the longest store call "
                f"({margin * 1000:g} ms) by two loop intervals ({loop_interval_s * 1000:g} ms each)"
            )
        self.admission_margin_s = margin
        self.lock = lock
        self.node_id = node_id
        self.value = f"{node_id}#{token or secrets.token_hex(8)}"
        self.lease_s = lease_s
        self.loop_interval_s = loop_interval_s
        self._hooks = hooks
        self._delay_ms = campaign_delay_ms
        self._wall = wall or WallClock()
        self._now = monotonic
        #: The current role; leader-only RPCs are admitted only in LEADER (and within the lease).
        self.role = Role.FOLLOWER
        #: The node id last seen holding the lock ("" when free or unknown).
        self.leader_node_id = ""
        #: When the election loop last started a round (epoch milliseconds).
        self.last_loop_ms = 0
        #: Lock takes and losses, for tests and logs.
        self.terms = 0
        self._holding = False
        self._deadline = 0.0  # monotonic; meaningful while holding
        self._forbid_until = 0.0  # monotonic; no campaign before
        self._term = 0  # bumped on every take and loss, so a stale promotion discards its state
        self._installed = False
        self._demote_requested = False
        self._promotion_failed = False
        self._stopping = False
        self._stopped = False
        self._error_streak = 0
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._promotion: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------ queries

    def serving(self) -> bool:
        """True when leader-only RPCs may run here: LEADER role and the lease safely ahead."""
        return self.role is Role.LEADER and self._now() < self._deadline - self.admission_margin_s

    def holds_lock(self) -> bool:
        """True while this node believes it holds the lock (LEADER, or PROMOTING)."""
        return self._holding

    def lease_expiration_us(self) -> int:
        """The lease deadline in epoch microseconds while serving, else -1 (GetManagerClusterInfo)."""
        if not self.serving():
            return -1
        return int((self._wall.now() + (self._deadline - self._now())) * 1e6)

    # ------------------------------------------------------------------------------------------ wire

    def check_health(self, response: Any) -> None:
        """Fill a CheckHealthResponse: ``is_leader`` (serving), ``is_health`` (true, as the reference) and
        ``elector_last_loop_time_ms``."""
        response.is_leader = self.serving()
        response.is_health = True
        response.elector_last_loop_time_ms = self.last_loop_ms

    def cluster_info(self, response: Any) -> None:
        """Fill a GetManagerClusterInfoResponse."""
        response.info_updated_time = 0
        response.self_leader_expiration_time = self.lease_expiration_us()
        response.self_node_id = self.node_id
        response.leader_node_id = self.leader_node_id

    def request_demotion(self) -> str:
        """LeaderDemote: stop serving now, stay out of the campaign for the campaign delay, release the lock.

        Raises:
            CacheError: SERVER_NOT_LEADER on a node that is not serving as leader.
        """
        if not self.serving():
            raise CacheError(ErrorCode.SERVER_NOT_LEADER, NOT_LEADER_MESSAGE)
        self.role = Role.DEMOTING  # the gate closes before this call returns
        delay_ms = self._delay_ms()
        if delay_ms > 0:
            self._forbid_until = max(self._forbid_until, self._now() + delay_ms / 1000.0)
        self._demote_requested = True
        self._wake.set()
        logger.info("%s: demotion requested (no campaign for %d ms)", self.node_id, max(delay_ms, 0))
        return DEMOTE_ACCEPTED

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, settle_timeout_s: float | None = None) -> None:
        """Start the loop and wait until the first round has settled: leader (state installed) or follower.

        Args:
            settle_timeout_s: stop waiting after this long (the loop keeps running); None waits.
        """
        if self._task is not None:
            raise RuntimeError("leader elector already started")
        logger.info(
            "%s: leader election on %s (lease %.0f ms, loop %.0f ms)",
            self.node_id,
            self.lock.describe(),
            self.lease_s * 1000,
            self.loop_interval_s * 1000,
        )
        self._task = asyncio.create_task(self._run(), name="kvsim-leader-elector")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), settle_timeout_s)

    async def stop(self) -> None:
        """Leave the election: drop the leader's state while still holding the lock, then release it, so a
        follower takes over at once instead of after the lease. Closes the lock backend."""
        if self._stopped:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._stopped = True
        await asyncio.to_thread(self.lock.close)

    async def _run(self) -> None:
        try:
            while not self._stopping:
                self.last_loop_ms = int(self._wall.now() * 1000)
                try:
                    await self._round()
                except Exception:  # a bug must not end the election; the next round starts afresh
                    logger.exception("%s: election round failed", self.node_id)
                if self._promotion is None:
                    self._settled.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.loop_interval_s)
                self._wake.clear()
        finally:
            await self._leave()
            self._settled.set()

    async def _round(self) -> None:
        if self._promotion_failed:
            self._promotion_failed = False
            self._forbid(self.lease_s * 1000)  # let another node try first
            if self._holding:
                await self._release("promotion failed", uninstall=False)
            return
        if self._demote_requested:
            self._demote_requested = False
            if self._holding:
                await self._release("demoted on request")
            return
        if self._holding:
            await self._keep()
        else:
            await self._campaign()

    # ------------------------------------------------------------------------------------------ holding

    def _lapsed(self) -> bool:
        return self._now() >= self._deadline - self.loop_interval_s

    async def _keep(self) -> None:
        """Renew the lease; lose the lock when the backend says so or the deadline has come."""
        if self._lapsed():
            await self._lose("the lease lapsed before a renewal succeeded")
            return
        sent = self._now()
        try:
            renewed = await asyncio.to_thread(self.lock.renew, self.value, self._lease_ms())
        except LockError as exc:
            self._error_streak += 1
            if self._error_streak == 1:  # one line per outage, not one per loop
                logger.warning("%s: cannot renew the lease (retrying until it lapses): %s", self.node_id, exc)
            if self._lapsed():
                await self._lose(f"the lease lapsed while the lock backend was unreachable: {exc}")
            return
        self._error_streak = 0
        if not renewed:
            await self._lose("the lock expired or is held by another node")
            return
        self._deadline = sent + self.lease_s

    def _lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    def _took(self, sent: float) -> None:
        """The lock is ours from ``sent``: start the promotion (the loop keeps renewing meanwhile)."""
        self._holding = True
        self._deadline = sent + self.lease_s
        self._term += 1
        self.terms += 1
        self.leader_node_id = self.node_id
        self.role = Role.PROMOTING
        self._settled.clear()
        logger.info("%s: took the leader lock; recovering", self.node_id)
        self._promotion = asyncio.create_task(self._promote(self._term), name="kvsim-leader-promotion")

    async def _promote(self, term: int) -> None:
        started = self._now()
        try:
            try:
                state = await self._hooks.prepare()
            except Exception:
                logger.exception("%s: promotion failed; releasing the lock", self.node_id)
                if term == self._term and self._holding:
                    # The loop releases the lock (all lock calls stay on the loop, one at a time).
                    self._promotion_failed = True
                return
            if term != self._term or not self._holding:
                await self._hooks.discard(state)  # leadership ended while recovering
                return
            self._hooks.install(state)
            self._installed = True
            self.role = Role.LEADER
            logger.info("%s: leader (recovered in %.3f s)", self.node_id, self._now() - started)
        finally:
            self._promotion = None
            self._wake.set()

    async def _await_promotion(self) -> None:
        """Let a running promotion finish (it discards its state: the term has moved on)."""
        task = self._promotion
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _lose(self, reason: str) -> None:
        """The lock is (or may be) someone else's: stop serving, drop the state, campaign again later."""
        logger.warning("%s: lost leadership: %s", self.node_id, reason)
        self._holding = False
        self._term += 1
        self.role = Role.DEMOTING
        await self._await_promotion()
        await self._uninstall(graceful=False)
        self.role = Role.FOLLOWER
        self.leader_node_id = ""
        self._forbid(self._delay_ms())

    async def _release(self, reason: str, *, uninstall: bool = True) -> None:
        """Give the lock up while still holding it: drop the state first (it may still write), then unlock."""
        logger.info("%s: giving up leadership: %s", self.node_id, reason)
        self._term += 1
        self.role = Role.DEMOTING
        if uninstall:
            await self._await_promotion()
            await self._uninstall(graceful=True)
        try:
            released = await asyncio.to_thread(self.lock.unlock, self.value)
            if not released:
                logger.warning("%s: the lock was no longer ours when released", self.node_id)
        except LockError as exc:
            logger.warning("%s: cannot release the lock (it expires with the lease): %s", self.node_id, exc)
        self._holding = False
        self.role = Role.FOLLOWER
        self.leader_node_id = ""

    async def _uninstall(self, graceful: bool) -> None:
        if self._installed:
            self._installed = False
            try:
                await self._hooks.uninstall(graceful)
            except Exception:
                logger.exception("%s: dropping the leader state failed", self.node_id)

    async def _leave(self) -> None:
        """Final step of :meth:`stop`."""
        self._term += 1
        await self._await_promotion()
        if self._holding:
            await self._release("shutting down")
        else:
            await self._uninstall(graceful=False)

    # ------------------------------------------------------------------------------------------ campaign

    def _forbid(self, delay_ms: float) -> None:
        if delay_ms > 0:
            self._forbid_until = max(self._forbid_until, self._now() + delay_ms / 1000.0)

    async def _campaign(self) -> None:
        """Try to take the lock (outside a campaign delay); otherwise note who holds it."""
        if self._now() >= self._forbid_until:
            sent = self._now()
            try:
                taken = await asyncio.to_thread(self.lock.try_lock, self.value, self._lease_ms())
            except LockError as exc:
                self._note_error(exc)
                return
            if taken:
                self._error_streak = 0
                self._took(sent)
                return
        try:
            holder: LockHolder | None = await asyncio.to_thread(self.lock.holder)
        except LockError as exc:
            self._note_error(exc)
            return
        self._error_streak = 0
        self.leader_node_id = node_of(holder.value) if holder is not None else ""
        if holder is not None and holder.value == self.value and self._now() >= self._forbid_until:
            # Our own lock outlived our lease (renewals failed, the lock did not expire): nobody else can
            # have held it since, so renewing makes it ours again.
            sent = self._now()
            try:
                if await asyncio.to_thread(self.lock.renew, self.value, self._lease_ms()):
                    self._took(sent)
            except LockError as exc:
                self._note_error(exc)

    def _note_error(self, exc: LockError) -> None:
        self._error_streak += 1
        if self._error_streak == 1:
            logger.warning("%s: lock backend unreachable (retrying every loop): %s", self.node_id, exc)


class CacheLeadership:
    """The elector's hooks for a :class:`~kvsim.serve.service.KvcmService`: the leader has a cache, a
    follower has none (``service.cache`` is None and leader-only RPCs are refused before reaching it).

    Args:
        service: the service whose ``cache`` is set and cleared.
        build: opens the store and builds a ``CacheManager`` over it (recovering it); run in a worker
            thread.
    """

    def __init__(self, service: Any, build: Callable[[], Any]) -> None:
        self._service = service
        self._build = build

    async def prepare(self) -> Any:
        """Build and recover the cache off the event loop, so renewals and other RPCs go on meanwhile."""
        return await asyncio.to_thread(self._build)

    def install(self, state: Any) -> None:
        """Serve ``state``."""
        self._service.cache = state

    async def uninstall(self, graceful: bool) -> None:
        """Stop serving the cache, then close it (flushing access statistics and events) off the loop."""
        cache, self._service.cache = self._service.cache, None
        if cache is not None:
            await self.discard(cache)

    async def discard(self, state: Any) -> None:
        """Close a cache (errors are logged: the store may be what failed)."""
        try:
            await asyncio.to_thread(state.close)
        except Exception as exc:
            logger.warning("closing the cache failed: %s: %s", type(exc).__name__, exc)


def make_elector(settings: Any, service: Any) -> LeaderElector:
    """The elector of a ``kvsim serve`` node, wired to ``service``.

    The lock is :func:`~kvsim.serve.upkeep.effective_lock_uri` (the configured one; a Redis meta store's
    own Redis; else in-process). The meta store is opened (and closed) here once, so a store that cannot
    be opened stops the start instead of failing every promotion; each promotion opens it again. A
    ``memory`` store is kept for the whole process, so a node that demotes and is promoted again finds
    its registry and index again. With ``settings.event_log`` every cache
    writes ``<data dir>/event_publisher.log``, rotated by size.

    Raises:
        ConfigError: a bad lock URI, or a store that cannot be opened.
    """
    from kvsim.cache import MemoryStore
    from kvsim.cache.events import EventLog
    from kvsim.serve.locks import open_lock
    from kvsim.serve.server import build_cache, open_store
    from kvsim.serve.upkeep import EVENT_LOG_FILE, RotatingJsonlSink, effective_lock_uri

    lock = open_lock(effective_lock_uri(settings))
    opened = open_store(settings.meta_store, settings.data_dir)  # fail now, not at every promotion
    keep = opened if isinstance(opened, MemoryStore) else None
    if keep is None:
        opened.close()  # a follower holds no store; each promotion opens its own

    promotions = [0]

    def build() -> Any:
        store = keep or open_store(settings.meta_store, settings.data_dir)
        # A fixed --seed must not repeat its ids in a later term: a client still holding a session id of
        # the previous term would otherwise finish the new term's first session. The first term keeps
        # the seed itself, so a single run stays reproducible.
        seed = None if settings.seed is None else settings.seed + promotions[0]
        promotions[0] += 1
        events = None
        if settings.event_log:
            sink = RotatingJsonlSink(
                settings.data_dir / EVENT_LOG_FILE, settings.log_max_bytes, settings.log_backups
            )
            events = EventLog(sink)
        try:
            term_settings = dataclasses.replace(settings, seed=seed)
            return build_cache(term_settings, clock=service.clock, store=store, events=events)
        except BaseException:
            if store is not keep:
                store.close()
            if events is not None:
                events.sink.close()
            raise

    return LeaderElector(
        lock,
        CacheLeadership(service, build),
        node_id=service.node_id,
        lease_s=settings.lease_s,
        loop_interval_s=settings.loop_interval_s,
        admission_margin_s=admission_margin_s(settings),
        campaign_delay_ms=lambda: int(service.campaign_delay_ms),
        wall=service.clock,
    )


def admission_margin_s(settings: Any) -> float:
    """How long before its lease deadline a leader stops admitting leader-only RPCs: one loop interval,
    or the longest store call (:func:`store_call_budget_s`) if that is longer.

    Raises:
        ConfigError: the lease leaves no room for it (the margin must stay two loop intervals short of
            the lease, or a healthy leader would refuse requests between renewals).
    """
    margin = max(settings.loop_interval_s, store_call_budget_s(settings.meta_store))
    if margin > settings.lease_s - 2 * settings.loop_interval_s:
        raise ConfigError(
            f"kvcm.leader_elector.lease_ms {settings.lease_s * 1000:g} is too short for the meta store: a "
            f"store call may take {margin * 1000:g} ms, and the lease must exceed that by two loop intervals "
            "(raise the lease, or lower the store URI's timeout_ms or retry_count)"
        )
    return margin


def store_call_budget_s(meta_store: str) -> float:
    """The longest one call into the meta store may take: for Redis, ``timeout_ms`` per attempt times
    ``retry_count + 1`` attempts (plus the short back-off between them); 0 for sqlite and memory, whose
    calls are local (only the leader writes, so sqlite never waits on its busy timeout)."""
    text = meta_store.strip()
    if not text.startswith(("redis://", "rediss://")):
        return 0.0
    from kvsim.cache.store.redis import parse_uri

    settings = parse_uri(text)
    return settings["timeout_ms"] / 1000.0 * (settings["retry_count"] + 1) + 0.1
