"""The transport-neutral KVCM service: one object that both the gRPC and the HTTP servers call.

:meth:`KvcmService.dispatch` takes a decoded request message and returns the response message. It
runs the RPC's handler (which only converts and calls the cache, see :mod:`kvsim.serve.handlers`),
and it is the one place where outcomes become ``header.status``:

* ``CacheError`` keeps its code on the meta service. The admin service folds every code but
  INVALID_ARGUMENT, SERVER_NOT_LEADER and UNSUPPORTED into INTERNAL_ERROR, as the reference does; the
  debug service folds codes its enum lacks. The KV service's enum lacks two codes, which become the
  nearest it has: DUPLICATE_ENTITY -> INVALID_ARGUMENT (the request conflicts with the stored
  registration) and SERVER_NOT_LEADER -> SERVICE_NOT_READY (this node cannot serve; try the leader). The
  message is the error's message ("<field>: <why>").
* Any other exception is a kvsim bug: it is logged with its traceback and answered INTERNAL_ERROR, so
  a bad request can never take the server down.

Meta, admin and KV responses carry ``request_id = "<trace_id>_<now in µs>"``; the debug service sets
none, as the reference. The service also owns the service-level state the reference keeps next to the
cache manager: injected faults (debug service), per-API query metrics (GetMetrics), the node id, the
leader elector's campaign delay, and the KV layer over the current cache (:meth:`KvcmService.kv_meta`).

Concurrency: every call runs on the event loop's thread, one at a time, so the synchronous
``CacheManager`` (which is not thread-safe) needs no lock, and calls keep their arrival order.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from kvsim.cache import CacheError, ErrorCode, KvMetaManager, PollResult
from kvsim.cache.kv_meta import DEFAULT_VALUE_SIZE_BYTES
from kvsim.core import Clock, PerfTimer, Timer
from kvsim.serve.catalog import RpcInfo, ServiceKind
from kvsim.serve.leader import NOT_LEADER_MESSAGE, leader_only
from kvsim.serve.limits import DEFAULT_MAX_ITEMS, RequestLimits
from kvsim.serve.prometheus import LatencyHistogram

logger = logging.getLogger("kvsim.serve")

#: Codes the admin service passes through; it reports every other manager error as INTERNAL_ERROR.
_ADMIN_PASS_THROUGH = frozenset(
    {ErrorCode.INVALID_ARGUMENT, ErrorCode.SERVER_NOT_LEADER, ErrorCode.UNSUPPORTED}
)
#: The debug package's ErrorCode enum is a subset of the meta one.
_DEBUG_CODES = frozenset(
    {
        ErrorCode.UNSPECIFIED,
        ErrorCode.OK,
        ErrorCode.UNSUPPORTED,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.SERVICE_NOT_READY,
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.IO_ERROR,
        ErrorCode.UNKNOWN_ERROR,
    }
)
#: The kv_meta package's ErrorCode enum lacks these two; each goes to the nearest code it has.
_KV_META_CODES = {
    ErrorCode.DUPLICATE_ENTITY: ErrorCode.INVALID_ARGUMENT,
    ErrorCode.SERVER_NOT_LEADER: ErrorCode.SERVICE_NOT_READY,
}

#: A handler fills ``response`` from ``request``; it may return a success message that replaces the
#: RPC's fixed one (the debug service echoes what it injected).
Handler = Callable[["KvcmService", Any, Any], "str | None"]


def wire_code(kind: ServiceKind, code: ErrorCode) -> ErrorCode:
    """The code a client of service ``kind`` sees for a ``CacheError`` with ``code``."""
    if kind == "admin" and code not in _ADMIN_PASS_THROUGH:
        return ErrorCode.INTERNAL_ERROR
    if kind == "debug" and code not in _DEBUG_CODES:
        return ErrorCode.INTERNAL_ERROR
    if kind == "kv_meta":
        return _KV_META_CODES.get(code, code)
    return code


# ---------------------------------------------------------------------------------------------- faults

FAULTABLE_APIS = ("StartWriteCache", "FinishWriteCache", "GetCacheLocation")


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: fail every call (``once`` False) or calls whose trace id ends ``_<at_call>``."""

    once: bool
    at_call: int


class FaultInjector:
    """The debug service's fault table (api name -> fault), consulted by the fault-injectable meta RPCs."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}

    def inject(self, api_name: str, fault: Fault) -> None:
        """Set (or replace) the fault of ``api_name``."""
        self._faults[api_name] = fault

    def remove(self, api_name: str) -> bool:
        """Drop the fault of ``api_name``; False if there was none."""
        return self._faults.pop(api_name, None) is not None

    def clear(self) -> None:
        """Drop every fault."""
        self._faults.clear()

    def check(self, api_name: str, trace_id: str) -> None:
        """Raise the injected INTERNAL_ERROR if ``api_name`` has a fault that fires for ``trace_id``.

        A ONCE fault fires when the text after the trace id's last ``_`` is the configured call number;
        an id without a number never fires. Faults are not consumed, as in the reference.
        """
        fault = self._faults.get(api_name)
        if fault is None:
            return
        if fault.once:
            _, sep, tail = trace_id.rpartition("_")
            if not sep or not tail.lstrip("-").isdigit() or int(tail) != fault.at_call:
                return
        raise CacheError(ErrorCode.INTERNAL_ERROR, f"{api_name} fail due to fault injection")


# ---------------------------------------------------------------------------------------------- metrics


@dataclasses.dataclass(slots=True)
class ApiStats:
    """Calls, errors and total latency of one API of one service."""

    calls: int = 0
    errors: int = 0
    total_us: float = 0.0


class ServiceMetrics:
    """Per-API query counters and latencies (an API offered by two services counts once), reported by
    GetMetrics as ``service.query_counter`` (int), ``service.error_counter`` (int) and
    ``service.query_rt_us`` (float, mean µs); per-API latency histograms for ``GET /metrics``; and the
    requests refused for a missing or wrong admin token, by service kind (see :mod:`kvsim.serve.auth`)."""

    def __init__(self) -> None:
        self._stats: dict[str, ApiStats] = {}
        self.histograms: dict[str, LatencyHistogram] = {}
        self.refused: dict[str, int] = {}

    def record(self, api: str, ok: bool, seconds: float) -> None:
        """Count one call."""
        stats = self._stats.setdefault(api, ApiStats())
        stats.calls += 1
        stats.errors += not ok
        stats.total_us += seconds * 1e6
        histogram = self.histograms.get(api)
        if histogram is None:
            histogram = self.histograms[api] = LatencyHistogram()
        histogram.observe(seconds)

    def snapshot(self) -> dict[str, ApiStats]:
        """A copy of every API's statistics keyed by api name."""
        return {key: dataclasses.replace(value) for key, value in self._stats.items()}


# ---------------------------------------------------------------------------------------------- service


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """An RPC with its handler, its fixed success message and whether injected faults apply to it."""

    info: RpcInfo
    handler: Handler
    success: str
    faultable: bool


class KvcmService:
    """The KVCM meta, admin and debug services, and the string-key KV service, over one cache.

    Args:
        cache: the ``CacheManager`` (or any object with its API) that serves every operation.
        clock: wall clock for ``request_id`` stamps and reported times (the cache's own clock in tests).
        timer: measures call latency for GetMetrics.
        node_id: this server's id, reported by the HA RPCs.
    """

    def __init__(
        self, cache: Any, *, clock: Clock, timer: Timer | None = None, node_id: str = "kvsim"
    ) -> None:
        from kvsim.serve.handlers import routes  # the handlers module imports this one

        self.cache = cache
        self.clock = clock
        self.timer: Timer = timer or PerfTimer()
        self.node_id = node_id
        self.faults = FaultInjector()
        self.metrics = ServiceMetrics()
        #: The leader elector's campaign delay (Get/UpdateLeaderElectorConfig); in memory, as the reference.
        self.campaign_delay_ms = 0
        #: The :class:`~kvsim.serve.leader.LeaderElector` of ``kvsim serve``. None: a standalone leader that
        #: always serves (in-process servers and tests). With an elector, ``cache`` is None on a follower.
        self.elector: Any = None
        #: The per-request list limit (``kvsim.max_keys_per_request``), checked before every handler.
        self.limits = RequestLimits(DEFAULT_MAX_ITEMS)
        #: Bytes per value of a KV instance whose ``user_data`` names none (``kvsim.kv_value_size_bytes``).
        self.kv_value_size_bytes = DEFAULT_VALUE_SIZE_BYTES
        self._kv_meta: KvMetaManager | None = None
        self._routes = routes()

    def route(self, kind: ServiceKind, name: str) -> Route:
        """The route of one RPC (KeyError if the service has no such method)."""
        return self._routes[kind][name]

    def routes(self, kind: ServiceKind) -> dict[str, Route]:
        """Every route of one service by method name."""
        return self._routes[kind]

    def kv_meta(self) -> KvMetaManager:
        """The KV layer over the current cache. It is rebuilt when the cache is replaced (a promotion,
        a test swapping caches) or its settings change; its open-session table goes with the cache's
        sessions."""
        cache, kv = self.cache, self._kv_meta
        if (
            kv is None
            or kv.cache is not cache
            or kv.default_value_size_bytes != self.kv_value_size_bytes
            or kv.max_keys_per_request != self.limits.max_items
        ):
            kv = self._kv_meta = KvMetaManager(
                cache,
                default_value_size_bytes=self.kv_value_size_bytes,
                max_keys_per_request=self.limits.max_items,
            )
        return kv

    def dispatch(self, route: Route, request: Message) -> Message:
        """Serve one decoded request and return the response message (never raises)."""
        info = route.info
        response = info.response_type()
        trace_id = getattr(request, "trace_id", "")
        started = self.timer.monotonic()
        try:
            # Leader gating (study §1.3): a follower, or a leader whose lease may have lapsed, refuses
            # leader-only RPCs before they reach the cache.
            if self.elector is not None and leader_only(info.kind, info.name) and not self.elector.serving():
                raise CacheError(ErrorCode.SERVER_NOT_LEADER, NOT_LEADER_MESSAGE)
            self.limits.check(request)
            if route.faultable:
                self.faults.check(info.name, trace_id)
            override = route.handler(self, request, response)
            code, message = ErrorCode.OK, override if override is not None else route.success
        except CacheError as exc:
            response.Clear()  # an error response carries only its header, as the reference's
            code, message = wire_code(info.kind, exc.code), exc.message
        except Exception as exc:  # a kvsim bug must cost one request, not the server
            logger.exception("%s.%s failed unexpectedly", info.kind, info.name)
            response.Clear()
            code, message = ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"
        header = response.header  # type: ignore[attr-defined]
        header.status.code = int(code)
        header.status.message = message
        if info.kind != "debug":
            header.request_id = f"{trace_id}_{int(self.clock.now() * 1e6)}"
        self.metrics.record(info.api_name, code == ErrorCode.OK, self.timer.monotonic() - started)
        return response

    def poll(self) -> PollResult:
        """Let the cache act on what is due now (expired write sessions, pending deletions)."""
        return self.cache.poll(self.clock.now())  # type: ignore[no-any-return]
