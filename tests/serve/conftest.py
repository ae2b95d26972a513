"""Fixtures of the serve tests: one real server on free loopback ports for the session, clients over gRPC
and HTTP, and the ``api`` fixture that runs a contract test three ways (in process, gRPC, HTTP).

The server runs in a background thread (:class:`kvsim.serve.server.ServerThread`) with its background
poll off, so that tests decide when time passes and when the cache polls: each test gets a fresh
``CacheManager`` on a manual clock, swapped into the running service, exactly like the in-process variant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kvsim.cache import CacheManager, default_startup_config
from kvsim.core import ManualClock, make_rng
from kvsim.serve.client import CacheClient
from kvsim.serve.config import ServeSettings
from kvsim.serve.server import Endpoints, ServerThread
from kvsim.serve.service import KvcmService

T0 = 1_700_000_000.0  # a realistic epoch time, so TS_TIMESTAMP trims use plausible int32 seconds
LOOPBACK = "127.0.0.1"
R = TypeVar("R")


def make_settings(tmp: Path, **overrides: Any) -> ServeSettings:
    """Settings for a test server: loopback, every port free (0), debug service on, memory store."""
    base = ServeSettings(
        host=LOOPBACK,
        rpc_port=0,
        http_port=0,
        admin_rpc_port=0,
        admin_http_port=0,
        enable_debug_service=True,
        data_dir=tmp,
        meta_store="memory",
        storage_backend="simulated",
        max_body_bytes=1 << 20,
        shutdown_grace_s=2.0,
    )
    return dataclasses.replace(base, **overrides)


def new_manager(
    clock: ManualClock | None = None, seed: int = 0, defaults: bool = True, **kwargs: Any
) -> CacheManager:
    """A manager on a manual clock with cheap password hashing and (by default) the startup config."""
    mgr = CacheManager(clock or ManualClock(T0), make_rng(seed), password_iterations=1_000, **kwargs)
    if defaults:
        mgr.apply_startup_config(*default_startup_config())
    return mgr


class Served:
    """The session's running server and the objects tests reach through it."""

    def __init__(self, thread: ServerThread, service: KvcmService, endpoints: Endpoints) -> None:
        self.thread = thread
        self.service = service
        self.endpoints = endpoints

    def install(self, mgr: CacheManager) -> None:
        """Make ``mgr`` the cache the server serves (on the server's thread)."""

        def swap() -> None:
            self.service.cache = mgr
            self.service.clock = mgr.clock
            self.service.faults.clear()

        self.thread.call(swap)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real server on free loopback ports (meta and admin gRPC shared, as the reference's test harness)."""
    mgr = new_manager()
    service = KvcmService(mgr, clock=mgr.clock)
    thread = ServerThread(service, make_settings(tmp_path_factory.mktemp("serve")), background_poll=False)
    endpoints = thread.start()
    try:
        yield Served(thread, service, endpoints)
    finally:
        thread.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def grpc_client(served: Served) -> Iterator[CacheClient]:
    """A gRPC client of the session's server."""
    ep = served.endpoints
    with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, timeout_s=10, retries=1) as client:
        yield client


@pytest.fixture(scope="session")
def http_client(served: Served) -> Iterator[CacheClient]:
    """An HTTP client of the session's server."""
    ep = served.endpoints
    with CacheClient.http(
        ep.host, ep.http_port, ep.admin_http_port, ep.debug_http_port, timeout_s=10, retries=1
    ) as client:
        yield client


class Harness:
    """One way of reaching the cache: ``api`` has ``CacheManager``'s API (the manager or a client);
    ``poll``, ``inspect`` and ``clock`` reach the manager itself, on the thread that owns it."""

    def __init__(self, mode: str, served: Served | None, client: CacheClient | None) -> None:
        self.mode = mode
        self._served = served
        self._client = client
        self.clock = ManualClock(T0)
        self.mgr: CacheManager = new_manager(self.clock)
        self.api: Any = self.mgr
        self._install()

    def _install(self) -> None:
        if self._served is not None:
            self._served.install(self.mgr)
            self.api = self._client

    def reset(self, *, seed: int = 0, defaults: bool = True, **kwargs: Any) -> Any:
        """Serve a fresh manager built with these options; returns the new ``api``."""
        self.mgr = new_manager(self.clock, seed, defaults, **kwargs)
        self.api = self.mgr
        self._install()
        return self.api

    def inspect(self, fn: Callable[[CacheManager], R]) -> R:
        """``fn(manager)``, run where the manager lives."""
        if self._served is None:
            return fn(self.mgr)
        return self._served.thread.call(fn, self.mgr)

    def poll(self) -> Any:
        """Let the cache act on what is due at the clock's time."""
        return self.inspect(lambda m: m.poll())


@pytest.fixture(params=["inprocess", "grpc", "http"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """A contract test's access to a fresh cache, in process or through a real server."""
    if request.param == "inprocess":
        return Harness("inprocess", None, None)
    served = request.getfixturevalue("served")
    client = request.getfixturevalue(f"{request.param}_client")
    return Harness(request.param, served, client)


@pytest.fixture
def api(harness: Harness) -> Any:
    """The ``CacheManager`` API of the harness."""
    return harness.api
