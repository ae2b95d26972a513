"""Run the KVCM service: listeners, the periodic poll, graceful shutdown and the ``kvsim serve`` main.

Listeners (ports from :class:`~kvsim.serve.config.ServeSettings`, 0 = any free port):

=================  =====================  ====================================================
service            gRPC                   HTTP
=================  =====================  ====================================================
MetaService        ``rpc_port``           ``http_port``
AdminService       ``admin_rpc_port``     ``admin_http_port``
DebugService       the admin gRPC server  ``http_port + 3000`` (only with the debug service on)
KV MetaService     ``kv_rpc_port``        ``kv_http_port`` (each only when set; kvsim extension)
=================  =====================  ====================================================

As in the reference, an ``admin_rpc_port`` of 0 or equal to ``rpc_port`` puts the admin (and debug)
gRPC services on the meta server. Everything runs on one asyncio event loop, so calls into the
synchronous cache are serialized without locks. A background task calls the cache's ``poll`` every
``poll_interval_s`` (sooner when a write session is due), which expires write sessions and carries
out deletions. :meth:`KvcmServer.stop` stops accepting on every listener, then lets in-flight requests
finish within the grace period.

Every listener applies the settings' security and limits: the admin token on the admin and debug
services (:mod:`~kvsim.serve.auth`; never on the meta and KV services, which engines call), TLS
(:mod:`~kvsim.serve.tls`) and the request limits (:mod:`~kvsim.serve.limits`); the admin HTTP listener
also serves ``GET /metrics`` (:mod:`~kvsim.serve.prometheus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web

from kvsim.cache import CacheManager, CacheStore, backends
from kvsim.cache.backends import BackendFactory
from kvsim.cache.events import EventLog
from kvsim.cache.store import StoreOpenError
from kvsim.cache.store import open_store as open_cache_store
from kvsim.core import Clock, ConfigError, UserInputError, WallClock, make_rng
from kvsim.serve.accesslog import AccessLog
from kvsim.serve.auth import TokenGuard, exposure_warnings, guard_grpc, secure_app
from kvsim.serve.catalog import full_service_name
from kvsim.serve.config import ServeSettings, probe_settings
from kvsim.serve.grpc_server import bind, method_handlers, new_server
from kvsim.serve.http_server import build_app
from kvsim.serve.limits import RequestLimits, grpc_server_options, limit_app
from kvsim.serve.probes import DeadlineProber
from kvsim.serve.prometheus import add_metrics_route
from kvsim.serve.service import KvcmService
from kvsim.serve.startup import default_serve_startup, load_startup_config
from kvsim.serve.tls import ServerTls, load_server_tls
from kvsim.serve.upkeep import effective_lock_uri, poll_forever

logger = logging.getLogger("kvsim.serve")

ACCESS_LOG_FILE = "access.log"
PORTS_FILE = "ports.json"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    """The ports actually bound (useful when the settings asked for port 0)."""

    host: str
    rpc_port: int
    http_port: int
    admin_rpc_port: int
    admin_http_port: int
    debug_http_port: int | None
    kv_rpc_port: int | None = None
    kv_http_port: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


class KvcmServer:
    """The gRPC and HTTP listeners of one :class:`KvcmService`.

    Args:
        service: the service every listener dispatches to.
        settings: host, ports, debug switch, body limit, poll period, grace period.
        access_log: where access lines go (none when None).
        background_poll: run the periodic poll (tests that drive time themselves turn it off).
    """

    def __init__(
        self,
        service: KvcmService,
        settings: ServeSettings,
        *,
        access_log: AccessLog | None = None,
        background_poll: bool = True,
    ) -> None:
        self.service = service
        self.settings = settings
        self.access = access_log or AccessLog(None, service.clock)
        self._grpc: list[grpc.aio.Server] = []
        self._runners: list[web.AppRunner] = []
        self._poller: asyncio.Task[None] | None = None
        self._background_poll = background_poll
        self.endpoints: Endpoints | None = None
        # Security and limits (kvsim.serve.auth, tls, limits). Refusals are counted in the service's
        # metrics so that GetMetrics and GET /metrics report them.
        self.guard = TokenGuard(settings.admin_token, counts=service.metrics.refused)
        self.tls: ServerTls | None = None
        service.limits = RequestLimits(settings.max_keys_per_request)
        service.kv_value_size_bytes = settings.kv_value_size_bytes

    async def start(self) -> Endpoints:
        """Bind every listener and start the poll task.

        Raises:
            OSError: a port cannot be bound (nothing is left listening).
            ConfigError: the TLS files cannot be used.
        """
        s = self.settings
        try:
            self.tls = load_server_tls(s.tls_cert, s.tls_key)
            for warning in exposure_warnings(s.host, self.guard.enabled, self.tls is not None):
                logger.warning("%s", warning)
            meta_rpc = self._new_grpc_server()
            self._grpc.append(meta_rpc)
            meta_rpc.add_registered_method_handlers(
                full_service_name("meta"), method_handlers(self.service, "meta", self.access)
            )
            admin_rpc = meta_rpc if s.shared_admin_rpc else self._new_grpc_server()
            if admin_rpc is not meta_rpc:
                self._grpc.append(admin_rpc)
            admin_kinds = ("admin", "debug") if s.enable_debug_service else ("admin",)
            for k in admin_kinds:
                # With an admin token set, admin and debug calls without it are refused before decoding.
                handlers = method_handlers(self.service, k, self.access)  # type: ignore[arg-type]
                guarded = guard_grpc(handlers, k, self.guard, self.access)  # type: ignore[arg-type]
                admin_rpc.add_registered_method_handlers(full_service_name(k), guarded)  # type: ignore[arg-type]
            credentials = self.tls.grpc_credentials() if self.tls is not None else None
            rpc_port = bind(meta_rpc, s.host, s.rpc_port, credentials)
            admin_rpc_port = (
                rpc_port if admin_rpc is meta_rpc else bind(admin_rpc, s.host, s.admin_rpc_port, credentials)
            )
            kv_rpc_port = kv_http_port = None
            if s.kv_rpc_port is not None:
                # Its own ports (COMPAT.md): its HTTP paths (/api/registerInstance, ...) would clash with
                # the meta service's, and its gRPC listener follows the same switch.
                kv_rpc = self._new_grpc_server()
                self._grpc.append(kv_rpc)
                kv_rpc.add_registered_method_handlers(
                    full_service_name("kv_meta"), method_handlers(self.service, "kv_meta", self.access)
                )
                kv_rpc_port = bind(kv_rpc, s.host, s.kv_rpc_port, credentials)
            for server in self._grpc:
                await server.start()
            http_port = await self._serve_http("meta", s.http_port)
            admin_http_port = await self._serve_http("admin", s.admin_http_port)
            debug_port = None
            if s.enable_debug_service:
                debug_port = await self._serve_http("debug", http_port + 3000 if s.http_port else 0)
            if s.kv_http_port is not None:
                kv_http_port = await self._serve_http("kv_meta", s.kv_http_port)
        except BaseException:
            await self.stop(grace_s=0)
            raise
        self.endpoints = Endpoints(
            s.host,
            rpc_port,
            http_port,
            admin_rpc_port,
            admin_http_port,
            debug_port,
            kv_rpc_port,
            kv_http_port,
        )
        if self._background_poll:
            self._poller = asyncio.create_task(self._poll_loop(), name="kvsim-serve-poll")
        return self.endpoints

    def _new_grpc_server(self) -> grpc.aio.Server:
        s = self.settings
        return new_server(
            s.max_body_bytes,
            options=grpc_server_options(s.max_concurrent_streams),
            maximum_concurrent_rpcs=s.max_in_flight,
        )

    async def _serve_http(self, kind: str, port: int) -> int:
        app = build_app(self.service, kind, self.access, self.settings.max_body_bytes)  # type: ignore[arg-type]
        if kind == "admin":
            add_metrics_route(app, self.service)  # Prometheus text, behind the admin token like the rest
        if kind != "kv_meta":  # the KV service is a data-plane API like the meta one: never guarded
            secure_app(app, kind, self.guard, self.access)  # type: ignore[arg-type]
        limit_app(app, self.settings.max_in_flight)  # outermost: a refusal over the limit costs nothing
        # access_log=None: kvsim writes its own JSON access lines; aiohttp's would duplicate them.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.shutdown_grace_s)
        await runner.setup()
        self._runners.append(runner)
        ssl_context = self.tls.ssl_context() if self.tls is not None else None
        site = web.TCPSite(runner, self.settings.host, port, reuse_port=False, ssl_context=ssl_context)
        await site.start()
        return int(runner.addresses[-1][1])

    async def _poll_loop(self) -> None:
        # The one background task of the cache (kvsim.serve.upkeep): session expiry, reclaim, deletions,
        # lazy access statistics and event flushes; it skips while this node is a follower.
        await poll_forever(self.service, self.settings.poll_interval_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting everywhere, let in-flight requests finish within ``grace_s`` (the settings'
        grace period when None), then stop the poll task."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        servers, self._grpc = self._grpc, []
        runners, self._runners = self._runners, []
        # Every listener closes at once; each then drains its own in-flight requests.
        await asyncio.gather(
            *(server.stop(grace) for server in servers),
            *(runner.cleanup() for runner in runners),
            return_exceptions=True,
        )


# ---------------------------------------------------------------------------------------------- building


def open_store(spec: str, data_dir: Path) -> CacheStore:
    """The meta store named by ``--meta-store``: ``sqlite`` (``kvsim-meta.db`` in the data folder, or
    ``sqlite:///path``), ``memory`` or a ``redis://[auth@]host:port?timeout_ms=...`` URI.

    Raises:
        ConfigError: the spec is unknown or the store cannot be opened. There is never a silent fallback
            to memory: losing the registry on restart must be asked for.
    """
    try:
        return open_cache_store(spec, data_dir=data_dir)
    except StoreOpenError as exc:
        raise ConfigError(f"--meta-store: {exc}") from None


def open_backends(mode: str) -> BackendFactory | None:
    """The storage backends of ``--storage-backend``: ``real`` (files under each storage's root, 3FS,
    Mooncake) or ``simulated`` (URIs and capacity only).

    Raises:
        ConfigError: the mode is unknown or not available in this build.
    """
    make = getattr(backends, "make_backend_factory", None)
    if make is None:  # a kvsim.cache without real backends: only the simulated one exists
        if mode == "simulated":
            return None
        raise ConfigError(
            f"--storage-backend {mode}: real storage backends are not available in this build; "
            "pass --storage-backend simulated"
        )
    try:
        return make(mode)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise ConfigError(f"--storage-backend {mode}: {exc}") from None


def build_cache(
    settings: ServeSettings,
    *,
    clock: Clock,
    store: CacheStore | None = None,
    backend_factory: BackendFactory | None = None,
    events: EventLog | None = None,
) -> CacheManager:
    """The cache manager of a server: its store, ids seeded from ``settings.seed`` (random when None),
    its event log (none when None) and the startup config applied (a store that already holds it is left
    as it is)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if store is None:
        store = open_store(settings.meta_store, settings.data_dir)
    if backend_factory is None:
        backend_factory = open_backends(settings.storage_backend)
    seed = settings.seed if settings.seed is not None else secrets.randbits(63)
    cache = CacheManager(
        clock,
        make_rng(seed),
        store=store,
        backend_factory=backend_factory,
        events=events,
        max_keys_per_request=settings.max_keys_per_request,
        storage_probe=probe_settings(settings),
        prober=DeadlineProber(settings.storage_probe_timeout_s) if settings.storage_probe_period_s else None,
        # Password salts from the OS, never from the id generator: --seed makes ids reproducible, and
        # reproducible salts would let one precomputed table crack every stored hash.
        salt_source=os.urandom,
    )
    for name, error in cache.backend_open_errors.items():
        logger.warning("storage %s could not be reopened and is unavailable: %s", name, error)
    if settings.startup_config:
        storage, group = load_startup_config(Path(settings.startup_config))
    else:
        storage, group = default_serve_startup(settings.data_dir)
    cache.apply_startup_config(storage, group)
    return cache


def node_id(settings: ServeSettings) -> str:
    """``kvcm.leader_elector.node_id``; else the host name, plus a random suffix when the lock is shared
    (nodes on one host must not report the same id, as the reference's random default ensures)."""
    if settings.node_id:
        return settings.node_id
    if effective_lock_uri(settings) == "memory://":
        return socket.gethostname()
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


async def serve(settings: ServeSettings, *, on_ready: Callable[[Endpoints], None] | None = None) -> int:
    """``kvsim serve``: open the store, listen, join the leader election (one node with no shared lock is
    always the leader), serve until SIGTERM or SIGINT, drain, step down, close; returns 0.

    Shutdown order: stop accepting, let in-flight requests finish (the grace period), close the cache
    (flushing statistics and events) while still holding the leader lock, then release the lock so a
    follower takes over at once instead of after the lease.
    """
    from kvsim.serve.leader import make_elector
    from kvsim.serve.locks import redact

    clock = WallClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    service = KvcmService(None, clock=clock, node_id=node_id(settings))
    elector = make_elector(settings, service)  # opens the store once: a bad store stops the start here
    service.elector = elector
    access = AccessLog(
        settings.data_dir / ACCESS_LOG_FILE,
        clock,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
    server = KvcmServer(service, settings, access_log=access)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            endpoints = await server.start()
        except OSError as exc:
            raise UserInputError(f"cannot listen: {exc}") from None
        # The first election round settles before ports.json appears: a single node is already serving
        # as leader then, and a follower knows who leads.
        await elector.start()
        (settings.data_dir / PORTS_FILE).write_text(json.dumps(endpoints.as_dict()) + "\n", encoding="utf-8")
        logger.info(
            "kvsim serve on %s: meta gRPC %d HTTP %d, admin gRPC %d HTTP %d%s%s; data in %s "
            "(meta store: %s); node %s is %s",
            endpoints.host,
            endpoints.rpc_port,
            endpoints.http_port,
            endpoints.admin_rpc_port,
            endpoints.admin_http_port,
            f", debug HTTP {endpoints.debug_http_port}" if endpoints.debug_http_port else "",
            _kv_ports(endpoints),
            settings.data_dir,
            redact(settings.meta_store),
            elector.node_id,
            elector.role.value,
        )
        if on_ready is not None:
            on_ready(endpoints)
        await stop.wait()
        logger.info(
            "stopping: no new requests; draining in-flight ones (up to %.1f s)", settings.shutdown_grace_s
        )
        await server.stop()
        await elector.stop()
        logger.info("stopped")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(grace_s=0)  # no-op after a clean stop; closes listeners after a failed start
        await elector.stop()  # idempotent: closes the cache and releases the lock if still held
        access.close()


def _kv_ports(endpoints: Endpoints) -> str:
    """The KV service's listeners for the start-up line ("" when neither is on)."""
    parts = [
        f"{transport} {port}"
        for transport, port in (("gRPC", endpoints.kv_rpc_port), ("HTTP", endpoints.kv_http_port))
        if port is not None
    ]
    return f", KV meta {' '.join(parts)}" if parts else ""


# ---------------------------------------------------------------------------------------------- in a thread


class ServerThread:
    """A :class:`KvcmServer` on its own event loop in a background thread (tests, notebooks, tools).

    Use as a context manager; :attr:`endpoints` holds the bound ports. :meth:`call` runs a function on the
    server's loop, the only safe way to touch the service's cache while the server runs.
    """

    def __init__(
        self,
        service: KvcmService,
        settings: ServeSettings,
        *,
        access_log: AccessLog | None = None,
        background_poll: bool = True,
    ) -> None:
        self.service = service
        self.settings = settings
        self._access = access_log
        self._background_poll = background_poll
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvsim-serve", daemon=True)
        self._server: KvcmServer | None = None
        self.endpoints: Endpoints | None = None

    def start(self, timeout_s: float = 30.0) -> Endpoints:
        """Start the thread and the listeners; returns the bound ports."""
        self._thread.start()
        self._server = KvcmServer(
            self.service, self.settings, access_log=self._access, background_poll=self._background_poll
        )
        try:
            self.endpoints = self._run(self._server.start(), timeout_s)
        except BaseException:
            self._server = None  # start() already closed whatever it had opened
            self.stop()
            raise
        return self.endpoints

    def _run(self, coro: Any, timeout_s: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout_s)

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 30.0) -> T:
        """Run ``fn(*args)`` on the server's loop and return its result."""

        async def run() -> T:
            return fn(*args)

        return self._run(run(), timeout_s)  # type: ignore[no-any-return]

    def stop(self, grace_s: float | None = None, timeout_s: float = 30.0) -> None:
        """Stop the listeners (draining for ``grace_s``), the loop and the thread."""
        if self._server is not None:
            server, self._server = self._server, None
            self._run(server.stop(grace_s), timeout_s)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace_s=1.0)
