"""The scheduler-side lifecycle of a KVCM client: register, match, two-phase write, with failover.

    conn = ManagerConnection(["http://10.0.0.1:6382", "http://10.0.0.2:6382"], registration)
    sched = KvcmScheduler(conn, write_timeout_s=30)
    hit = sched.match(token_ids=prompt, held=engine_blocks)        # prefix match past what the engine holds
    plan = sched.start_write(token_ids=prompt)                      # which blocks to write, and where
    ok = [all(rank_ok) for rank_ok in zip(*per_rank_results)]        # a block counts when every rank saved it
    outcome = sched.finish_write(plan, ok)                          # WriteOutcome: what is stored now

What happens when things go wrong:

* **A server that is down or not the leader.** :class:`ManagerConnection` tries the next address (each
  address first gets the transport's own retries), registers there if it has not yet, and sticks with
  the one that answered. When no address answers the call raises :class:`ManagerError` with code
  SERVICE_NOT_READY and every address's reason.
* **A server that forgot the instance** (restarted with ``--meta-store memory``): the call is answered
  INSTANCE_NOT_EXIST; the connection registers again and repeats the call once.
* **A non-OK answer** (INVALID_ARGUMENT, INTERNAL_ERROR, ...) raises :class:`ManagerError` naming the RPC.
* **Partial saves.** ``finish_write`` takes one bool per returned location; failed blocks are deleted by
  the server. Ranks report with :class:`RankMasks`, which ANDs them, so a block counts only when every
  TP rank saved its shard, and a rank that never reported counts as failed.
* **Expired or lost sessions.** A write session lives ``write_timeout_s`` on the server; after that (or
  after a server restart or failover, which lose it) FinishWriteCache fails and :class:`WriteAborted` is
  raised: none of the session's blocks is stored, and the server deletes what was allocated.
* **Blocks deleted while being written** (reclaimed, removed) count as failed in the server's answer;
  :class:`WriteOutcome` then reports every written block as not stored, because the answer does not say
  which ones were lost.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheLocation,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecGroup,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    RemoveCacheRequest,
    StartWriteCacheRequest,
    TrimCacheRequest,
    TrimStrategy,
)
from kvsim.connectors.errors import ConnectorError, ManagerError, WriteAborted
from kvsim.serve.client import CacheClient

R = TypeVar("R")

#: Codes after which the next address is tried.
_FAILOVER = (ErrorCode.SERVICE_NOT_READY, ErrorCode.SERVER_NOT_LEADER)
_TRANSPORTS = ("http", "grpc")


def parse_address(address: str) -> tuple[str, str, int]:
    """``"http://host:port"``, ``"grpc://host:port"`` or ``"host:port"`` (HTTP) -> (transport, host, port).

    The port is the meta service's (HTTP 6382 or gRPC 6381 by default). IPv6 hosts go in brackets.

    Raises:
        ConnectorError: not of that form.
    """
    transport, sep, rest = address.partition("://")
    if not sep:
        transport, rest = "http", address
    if transport not in _TRANSPORTS:
        raise ConnectorError(f"manager address {address!r}: expected http://host:port or grpc://host:port")
    rest = rest.rstrip("/")
    host, colon, port_text = rest.rpartition(":")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConnectorError(f"manager address {address!r}: expected {transport}://host:port")
    return transport, host.strip("[]"), int(port_text)


def default_client_factory(address: str, timeout_s: float, retries: int) -> CacheClient:
    """A :class:`CacheClient` of the meta service at ``address`` (see :func:`parse_address`)."""
    transport, host, port = parse_address(address)
    if transport == "grpc":
        return CacheClient.grpc(host, port, None, timeout_s=timeout_s, retries=retries)
    return CacheClient.http(host, port, None, timeout_s=timeout_s, retries=retries)


def make_registration(
    instance_id: str,
    block_size: int,
    specs: Sequence[tuple[str, int]],
    *,
    instance_group: str = "default",
    model: ModelDeployment | None = None,
    spec_groups: Sequence[tuple[str, Sequence[str]]] = (),
) -> RegisterInstanceRequest:
    """A RegisterInstance request: ``specs`` are ``(name, bytes per block)``, one per shard (TP rank)."""
    return RegisterInstanceRequest(
        trace_id=f"{instance_id}-register",
        instance_group=instance_group,
        instance_id=instance_id,
        block_size=block_size,
        location_spec_infos=tuple(LocationSpecInfo(name, size) for name, size in specs),
        model_deployment=model or ModelDeployment(model_name=instance_id, dtype="unknown"),
        location_spec_groups=tuple(LocationSpecGroup(name, tuple(names)) for name, names in spec_groups),
    )


class ManagerConnection:
    """Calls into one of several KVCM servers, with registration, failover and re-registration.

    Args:
        addresses: meta-service addresses in preference order (see :func:`parse_address`), or ready
            :class:`CacheClient` objects.
        registration: the instance to register on every server this connection uses.
        timeout_s: deadline of one RPC attempt.
        retries: attempts after the first, per address, for requests that never reached the server.
        client_factory: ``(address, timeout_s, retries) -> CacheClient`` (tests inject their own).

    Thread-safe: engines call it from their scheduler, prefetch and backup threads at once.
    """

    def __init__(
        self,
        addresses: Sequence[str | CacheClient],
        registration: RegisterInstanceRequest,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        client_factory: Callable[[str, float, int], CacheClient] | None = None,
    ) -> None:
        if not addresses:
            raise ConnectorError("manager addresses: give at least one (e.g. http://127.0.0.1:6382)")
        if not registration.instance_id:
            raise ConnectorError("registration: instance_id is required")
        factory = client_factory or default_client_factory
        self._labels: list[str] = []
        self._clients: list[CacheClient | None] = []
        self._owned: list[bool] = []
        for address in addresses:
            if isinstance(address, CacheClient):
                self._labels.append(f"client {len(self._labels)}")
                self._clients.append(address)
                self._owned.append(False)
            else:
                parse_address(address)  # refuse malformed addresses now, not at the first call
                self._labels.append(address)
                self._clients.append(None)
                self._owned.append(True)
        self._factory = factory
        self.registration = registration
        self.timeout_s = timeout_s
        self.retries = retries
        self._current = 0
        self._registered: set[int] = set()
        self._storage_configs = ""
        self._lock = threading.Lock()
        self._trace = itertools.count()

    @property
    def instance_id(self) -> str:
        """The registered instance."""
        return self.registration.instance_id

    @property
    def address(self) -> str:
        """The address calls go to first (the last one that answered)."""
        return self._labels[self._current]

    @property
    def storage_configs(self) -> str:
        """The ``storage_configs`` JSON of the last registration ("" before the first)."""
        return self._storage_configs

    def trace_id(self, what: str) -> str:
        """A trace id for one call, so the server's access log can be matched with the client's."""
        return f"{self.instance_id}-{what}-{next(self._trace)}"

    def register(self) -> str:
        """Register on the current server (failing over as needed); returns ``storage_configs``."""
        return self.call("RegisterInstance", lambda client: self._storage_configs)

    def call(self, what: str, fn: Callable[[CacheClient], R]) -> R:
        """Run ``fn(client)`` against the first server that answers, registering there first.

        Raises:
            ManagerError: a non-OK answer (the code is the server's), or SERVICE_NOT_READY when no address
                answered (the message lists every address's reason).
        """
        reasons: list[str] = []
        n = len(self._clients)
        start = self._current
        for step in range(n):
            index = (start + step) % n
            try:
                result = self._call_one(index, fn)
            except CacheError as exc:
                if exc.code in _FAILOVER:
                    reasons.append(f"{self._labels[index]}: {exc.code.name}: {exc.message}")
                    continue
                raise ManagerError(exc.code, f"{what}: {exc.message} ({self._labels[index]})") from None
            self._current = index
            return result
        raise ManagerError(
            ErrorCode.SERVICE_NOT_READY, f"{what}: no KVCM server answered: " + "; ".join(reasons)
        )

    def _client(self, index: int) -> CacheClient:
        with self._lock:
            client = self._clients[index]
            if client is None:
                client = self._factory(self._labels[index], self.timeout_s, self.retries)
                self._clients[index] = client
            return client

    def _register_on(self, index: int, client: CacheClient) -> None:
        try:
            result = client.register_instance(self.registration)
        except CacheError as exc:
            if exc.code in _FAILOVER:
                raise
            raise ManagerError(exc.code, f"RegisterInstance: {exc.message} ({self._labels[index]})") from None
        with self._lock:
            self._storage_configs = result.storage_configs
            self._registered.add(index)

    def _call_one(self, index: int, fn: Callable[[CacheClient], R]) -> R:
        client = self._client(index)
        if index not in self._registered:
            self._register_on(index, client)
        try:
            return fn(client)
        except CacheError as exc:
            if exc.code != ErrorCode.INSTANCE_NOT_EXIST:
                raise
        # The server no longer knows the instance (restarted with a memory store): register and retry once.
        with self._lock:
            self._registered.discard(index)
        self._register_on(index, client)
        return fn(client)

    def close(self) -> None:
        """Close the clients this connection made."""
        with self._lock:
            for i, client in enumerate(self._clients):
                if client is not None and self._owned[i]:
                    client.close()
                    self._clients[i] = None
            self._registered.clear()


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class MatchResult:
    """A prefix match: ``locations[j]`` is where key ``indices[j]`` is stored.

    ``indices`` are positions in the key list that was asked about; the matched keys are the first
    ``len(indices)`` keys that the engine did not already hold.
    """

    num_keys: int
    indices: tuple[int, ...]
    locations: tuple[CacheLocation, ...]

    @property
    def num_blocks(self) -> int:
        """How many blocks matched."""
        return len(self.locations)


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What StartWriteCache decided: write ``locations[j]`` for key ``indices[j]``.

    Attributes:
        session_id: the write session (finish it before ``deadline``).
        num_keys: keys in the request.
        cached: per key, True when the server already had it (any status): nothing to write.
        indices: the keys to write, in order, one per location.
        locations: where to write them (one URI per location spec).
        deadline: ``time.monotonic()`` after which the server may have expired the session.
        timeout_s: the session's write timeout.
        trace_id: the StartWriteCache trace id.
    """

    session_id: str
    num_keys: int
    cached: tuple[bool, ...]
    indices: tuple[int, ...]
    locations: tuple[CacheLocation, ...]
    deadline: float
    timeout_s: int
    trace_id: str = ""

    def uris(self, spec_name: str) -> list[str]:
        """The URI of spec ``spec_name`` in every location ("" where a location has no such spec)."""
        return spec_uris(self.locations, spec_name)


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a finished write stored.

    Attributes:
        stored: per key of the request, True when it is stored now (already cached before, or written
            and made SERVING).
        num_serving: blocks the server made SERVING.
        num_failed: blocks the server treated as failed (reported failed, or deleted meanwhile).
    """

    stored: tuple[bool, ...]
    num_serving: int
    num_failed: int


def spec_uris(locations: Sequence[CacheLocation], spec_name: str) -> list[str]:
    """The URI of spec ``spec_name`` in each location ("" where a location has no such spec)."""
    out: list[str] = []
    for location in locations:
        out.append(next((s.uri for s in location.location_specs if s.name == spec_name), ""))
    return out


def ok_mask(ok: Sequence[bool]) -> BlockMask:
    """The compact mask of ``ok``: an offset when the successes are a prefix, else one bool per block."""
    values = [bool(v) for v in ok]
    first_bad = next((i for i, v in enumerate(values) if not v), len(values))
    if not any(values[first_bad:]):
        return BlockMask.of_offset(first_bad)
    return BlockMask.of_bools(values)


class RankMasks:
    """Collects per-rank save results for one write and ANDs them.

    Args:
        num_blocks: locations in the write plan.
        ranks: TP ranks that must all report.

    A rank that has not reported counts as failed; a rank that reports twice keeps the AND of both.
    """

    def __init__(self, num_blocks: int, ranks: int) -> None:
        if ranks < 1 or num_blocks < 0:
            raise ConnectorError("RankMasks: ranks must be >= 1 and num_blocks >= 0")
        self.num_blocks = num_blocks
        self.ranks = ranks
        self._ok = [True] * num_blocks
        self._seen: set[int] = set()

    def report(self, rank: int, ok: Sequence[bool]) -> None:
        """Record rank ``rank``'s result: one bool per location.

        Raises:
            ConnectorError: an unknown rank or a list of the wrong length.
        """
        if not 0 <= rank < self.ranks:
            raise ConnectorError(f"rank {rank}: expected 0..{self.ranks - 1}")
        if len(ok) != self.num_blocks:
            raise ConnectorError(f"rank {rank}: {len(ok)} results for {self.num_blocks} blocks")
        self._seen.add(rank)
        self._ok = [a and bool(b) for a, b in zip(self._ok, ok, strict=True)]

    @property
    def complete(self) -> bool:
        """True when every rank has reported."""
        return len(self._seen) == self.ranks

    @property
    def missing(self) -> list[int]:
        """Ranks that have not reported."""
        return [r for r in range(self.ranks) if r not in self._seen]

    def mask(self) -> list[bool]:
        """Per block: saved by every rank (all False while a rank is missing)."""
        if not self.complete:
            return [False] * self.num_blocks
        return list(self._ok)


# ---------------------------------------------------------------------------------------------- scheduler


def _keys_kwargs(token_ids: Sequence[int] | None, block_keys: Sequence[int] | None) -> dict[str, Any]:
    if bool(token_ids) == bool(block_keys):
        raise ConnectorError("give exactly one of token_ids and block_keys (non-empty)")
    if token_ids:
        return {"token_ids": tuple(int(t) for t in token_ids)}
    return {"block_keys": tuple(int(k) for k in block_keys or ())}


class KvcmScheduler:
    """The scheduler side of a connector: matching and the two-phase write on a :class:`ManagerConnection`.

    Args:
        connection: the connection (registration, failover).
        write_timeout_s: seconds a write session lives on the server.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        connection: ManagerConnection,
        *,
        write_timeout_s: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if write_timeout_s < 1:
            raise ConnectorError(f"write_timeout_s: must be >= 1, got {write_timeout_s}")
        self.connection = connection
        self.write_timeout_s = write_timeout_s
        self._clock = clock
        self._open: dict[str, WritePlan] = {}
        self._lock = threading.Lock()

    @property
    def block_size(self) -> int:
        """Tokens per block of the registration."""
        return self.connection.registration.block_size

    def _num_keys(self, keys: dict[str, Any]) -> int:
        if "block_keys" in keys:
            return len(keys["block_keys"])
        return len(keys["token_ids"]) // self.block_size  # the server drops a trailing partial block

    # ------------------------------------------------------------------------------ reads

    def match(
        self,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[int] | None = None,
        held: int | Sequence[bool] = 0,
        spec_names: Sequence[str] = (),
    ) -> MatchResult:
        """Prefix-match the keys past what the engine already holds.

        Args:
            token_ids: the prompt (the server derives the chained block keys), or
            block_keys: the keys themselves.
            held: blocks the engine already has: a count of leading blocks, or one bool per key.
            spec_names: return only these specs of each location (e.g. one TP rank's).

        Raises:
            ManagerError: the server refused the query or could not be reached.
        """
        keys = _keys_kwargs(token_ids, block_keys)
        num_keys = self._num_keys(keys)
        if isinstance(held, int):
            mask = BlockMask.of_offset(max(0, held))
            free = list(range(min(max(0, held), num_keys), num_keys))
        else:
            mask = BlockMask.of_bools(held)
            free = [i for i in range(num_keys) if not (i < len(held) and held[i])]
        request = GetCacheLocationRequest(
            trace_id=self.connection.trace_id("match"),
            instance_id=self.connection.instance_id,
            query_type=QueryType.QT_PREFIX_MATCH,
            block_mask=mask,
            location_spec_names=tuple(spec_names),
            **keys,
        )
        result = self.connection.call("GetCacheLocation", lambda c: c.get_cache_location(request))
        locations = tuple(result.locations)
        return MatchResult(num_keys, tuple(free[: len(locations)]), locations)

    def lookup(
        self,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[int] | None = None,
        spec_names: Sequence[str] = (),
    ) -> tuple[CacheLocation | None, ...]:
        """One location per key (None where the key is not stored), by QT_BATCH_GET.

        Raises:
            ManagerError: the server refused the query or could not be reached.
        """
        keys = _keys_kwargs(token_ids, block_keys)
        request = GetCacheLocationRequest(
            trace_id=self.connection.trace_id("lookup"),
            instance_id=self.connection.instance_id,
            query_type=QueryType.QT_BATCH_GET,
            location_spec_names=tuple(spec_names),
            **keys,
        )
        result = self.connection.call("GetCacheLocation", lambda c: c.get_cache_location(request))
        return tuple(
            loc if loc.location_specs and all(s.uri for s in loc.location_specs) else None
            for loc in result.locations
        )

    # ------------------------------------------------------------------------------ writes

    def start_write(
        self,
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[int] | None = None,
        spec_groups: Sequence[str] = (),
    ) -> WritePlan:
        """Phase 1: ask where to write the keys the server does not have yet.

        Raises:
            ManagerError: the server refused (quota, no storage, bad input) or could not be reached.
        """
        keys = _keys_kwargs(token_ids, block_keys)
        trace = self.connection.trace_id("write")
        request = StartWriteCacheRequest(
            trace_id=trace,
            instance_id=self.connection.instance_id,
            location_spec_group_names=tuple(spec_groups),
            write_timeout_seconds=self.write_timeout_s,
            **keys,
        )
        sent = self._clock()  # the server's deadline starts no earlier than this
        result = self.connection.call("StartWriteCache", lambda c: c.start_write_cache(request))
        num_keys = self._num_keys(keys)
        cached = tuple(result.block_mask.to_bools(num_keys))
        indices = tuple(i for i, c in enumerate(cached) if not c)
        if len(indices) != len(result.locations):
            # Not a protocol this client understands: give the session back rather than guess.
            self._finish_quietly(result.write_session_id, len(result.locations))
            raise ManagerError(
                ErrorCode.INTERNAL_ERROR,
                f"StartWriteCache: {len(result.locations)} locations for {len(indices)} new keys",
            )
        plan = WritePlan(
            session_id=result.write_session_id,
            num_keys=num_keys,
            cached=cached,
            indices=indices,
            locations=tuple(result.locations),
            deadline=sent + self.write_timeout_s,
            timeout_s=self.write_timeout_s,
            trace_id=trace,
        )
        with self._lock:
            self._open[plan.session_id] = plan
        return plan

    def finish_write(self, plan: WritePlan, ok: Sequence[bool]) -> WriteOutcome:
        """Phase 2: report which locations were written (every rank's shard); the rest are deleted.

        Raises:
            ConnectorError: ``ok`` does not have one entry per location.
            WriteAborted: FinishWriteCache failed (session expired, lost in a restart or failover, server
                error or unreachable); nothing of this session is stored.
        """
        if len(ok) != len(plan.locations):
            raise ConnectorError(f"finish_write: {len(ok)} results for {len(plan.locations)} locations")
        with self._lock:
            self._open.pop(plan.session_id, None)
        request = FinishWriteCacheRequest(
            trace_id=plan.trace_id or self.connection.trace_id("finish"),
            instance_id=self.connection.instance_id,
            write_session_id=plan.session_id,
            success_blocks=ok_mask(ok),
        )
        try:
            result = self.connection.call("FinishWriteCache", lambda c: c.finish_write_cache(request))
        except ManagerError as exc:
            n = len(plan.locations)
            if self._clock() > plan.deadline:
                why = f"expired (write timeout {plan.timeout_s} s) before FinishWriteCache"
            else:
                why = "could not be finished"
            raise WriteAborted(
                exc.code,
                f"write session {plan.session_id} {why}; none of its {n} blocks is stored: {exc.message}",
            ) from None
        reported = sum(bool(v) for v in ok)
        stored = list(plan.cached)
        if result.num_serving == reported:
            for j, i in enumerate(plan.indices):
                stored[i] = bool(ok[j])
        # else: some blocks were deleted while being written and the answer does not say which: none counts.
        return WriteOutcome(tuple(stored), result.num_serving, result.num_failed)

    def abort_write(self, plan: WritePlan) -> None:
        """Give a session back with every block failed (errors are swallowed: it expires anyway)."""
        with self._lock:
            self._open.pop(plan.session_id, None)
        self._finish_quietly(plan.session_id, len(plan.locations))

    def write(
        self,
        save: Callable[[WritePlan], Sequence[bool]],
        *,
        token_ids: Sequence[int] | None = None,
        block_keys: Sequence[int] | None = None,
        spec_groups: Sequence[str] = (),
    ) -> WriteOutcome:
        """Start a write, ``save(plan)`` the blocks (one bool per location), finish it.

        An exception from ``save`` aborts the session and propagates.
        """
        plan = self.start_write(token_ids=token_ids, block_keys=block_keys, spec_groups=spec_groups)
        try:
            ok = save(plan)
        except BaseException:
            self.abort_write(plan)
            raise
        return self.finish_write(plan, ok)

    def open_sessions(self) -> list[WritePlan]:
        """Sessions started and not yet finished or aborted by this scheduler."""
        with self._lock:
            return list(self._open.values())

    def _finish_quietly(self, session_id: str, n: int) -> None:
        request = FinishWriteCacheRequest(
            trace_id=self.connection.trace_id("abort"),
            instance_id=self.connection.instance_id,
            write_session_id=session_id,
            success_blocks=BlockMask.of_offset(0),
        )
        # On failure the server expires the session (all blocks failed) on its own.
        with contextlib.suppress(ManagerError):
            self.connection.call("FinishWriteCache", lambda c: c.finish_write_cache(request))

    # ------------------------------------------------------------------------------ housekeeping

    def remove(
        self, *, token_ids: Sequence[int] | None = None, block_keys: Sequence[int] | None = None
    ) -> int:
        """Delete keys of this instance; returns how many keys had locations."""
        keys = _keys_kwargs(token_ids, block_keys)
        request = RemoveCacheRequest(
            trace_id=self.connection.trace_id("remove"), instance_id=self.connection.instance_id, **keys
        )
        return self.connection.call("RemoveCache", lambda c: c.remove_cache(request)).num_keys

    def clear(self) -> int:
        """Delete every key of this instance; returns how many keys were affected."""
        request = TrimCacheRequest(
            trace_id=self.connection.trace_id("clear"),
            instance_id=self.connection.instance_id,
            strategy=TrimStrategy.TS_REMOVE_ALL_CACHE,
        )
        return self.connection.call("TrimCache", lambda c: c.trim_cache(request)).num_keys


__all__ = [
    "KvcmScheduler",
    "ManagerConnection",
    "MatchResult",
    "RankMasks",
    "WriteOutcome",
    "WritePlan",
    "default_client_factory",
    "make_registration",
    "ok_mask",
    "parse_address",
    "spec_uris",
]
