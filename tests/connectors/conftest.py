"""Fixtures of the connector tests: one real ``kvsim serve --meta-store memory`` process on free loopback
ports for the whole session (stopped at the end), admin clients, and unique instance ids.

Every test registers its own instance (``instance_id`` fixture), so tests share the server without
seeing each other's keys. Tests that kill or restart a server start their own :class:`LocalServe`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsim.connectors import LocalServe
from kvsim.serve.client import CacheClient

_ids = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServe]:
    """A ``kvsim serve`` process (memory meta store, real files under its data dir, debug service on)."""
    serve = LocalServe(tmp_path_factory.mktemp("kvsim-serve"), poll_interval_ms=100)
    serve.start()
    try:
        yield serve
    finally:
        code = serve.stop()
        assert code == 0, f"kvsim serve exited with {code}"


@pytest.fixture(scope="session")
def admin(server: LocalServe) -> Iterator[CacheClient]:
    """An HTTP client with the admin and debug services of the session's server."""
    client = server.admin("http", timeout_s=10, retries=1)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def instance_id(request: pytest.FixtureRequest) -> str:
    """A fresh instance id per test (the test's name plus a counter)."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    return f"{name[:40]}-{next(_ids)}"


@pytest.fixture
def no_faults(admin: CacheClient) -> Iterator[None]:
    """Clear injected faults before and after a test that injects them."""
    admin.clear_faults()
    try:
        yield
    finally:
        admin.clear_faults()


def storage_root(server: LocalServe) -> Path:
    """The root of the server's built-in ``nfs_01`` storage."""
    return server.storage_root
