"""Real ``kvsim serve`` processes for the durability, leader-election, shutdown and upkeep tests.

Each :class:`ServeProcess` runs ``python -m kvsim.cli.main serve`` on free loopback ports (every port 0)
with its own data directory; its stderr goes to a file (a pipe nobody reads could fill and stall the
server). :meth:`ServeProcess.wait_ready` waits, bounded, for the ``ports.json`` the server writes once its
first election round has settled. :func:`node_factory` (each module's ``nodes`` fixture) kills every
process a test started, whatever happens, and tests use only bounded waits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kvsim.cache import (
    BlockMask,
    CacheError,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
    StartWriteCacheResult,
)
from kvsim.serve.client import CacheClient, ServiceUnavailable, connect

LEASE_MS = 2000  # the reference's HA integration tests use a 2000 ms lease
LOOP_MS = 100


class ServeProcess:
    """One ``kvsim serve`` process.

    Args:
        root: a temporary directory; the node's data lives in ``root/<name>``, its log in ``root/<name>.log``.
        name: the node's name (also its ``--node-id`` unless ``args`` give one).
        args: more ``kvsim serve`` arguments.
        env: more environment variables.
    """

    def __init__(self, root: Path, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.data = root / name
        self.log = root / f"{name}.log"
        self.args = list(args)
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, Any] = {}

    def start(self) -> ServeProcess:
        """Start the process (``ports.json`` of an earlier run is removed first)."""
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "ports.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "kvsim.cli.main", "serve", "--data-dir", str(self.data)]
        command += ["--rpc-port", "0", "--http-port", "0", "--admin-rpc-port", "0", "--admin-http-port", "0"]
        if "--node-id" not in self.args:
            command += ["--node-id", self.name]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until the server has written ``ports.json``; returns the ports."""
        path = self.data / "ports.json"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().endswith("\n"):
                self.ports = json.loads(path.read_text())
                return self.ports
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not start within {timeout_s} s:\n{self.stderr()}")

    def stderr(self) -> str:
        """Everything the server logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def client(self, transport: str = "grpc", **kwargs: Any) -> Any:
        """A client of this node (a context manager); no retries unless asked, short timeouts."""
        kwargs.setdefault("timeout_s", 5.0)
        kwargs.setdefault("retries", 0)
        return connect(transport, "127.0.0.1", self.ports, **kwargs)

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process is not None and self.process.poll() is None


def node_factory(root: Path) -> Iterator[Callable[..., ServeProcess]]:
    """The body of a test module's ``nodes`` fixture: ``nodes(name, *args, env=...)`` makes a (not yet
    started) :class:`ServeProcess` under ``root``; every process made is killed when the test ends."""
    made: list[ServeProcess] = []

    def make(name: str, *args: str, env: dict[str, str] | None = None) -> ServeProcess:
        node = ServeProcess(root, name, *args, env=env)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.kill()


def ha_config(root: Path, lease_ms: int = LEASE_MS, loop_ms: int = LOOP_MS) -> Path:
    """A config file with the reference's elector keys (the HA integration tests' 2000 ms lease)."""
    path = root / "ha.conf"
    path.write_text(
        f"kvcm.leader_elector.lease_ms={lease_ms}\nkvcm.leader_elector.loop_interval_ms={loop_ms}\n"
        "kvsim.poll_interval_ms=100\n"
    )
    return path


# ---------------------------------------------------------------------------------------------- cache calls


def register(client: CacheClient, instance_id: str = "i1") -> None:
    """Register an instance in group ``default`` with one 1 KiB spec."""
    client.register_instance(
        RegisterInstanceRequest(
            instance_group="default",
            instance_id=instance_id,
            block_size=16,
            location_spec_infos=(LocationSpecInfo("tp0", 1024),),
            model_deployment=ModelDeployment(model_name="m", dtype="bfloat16"),
        )
    )


def start_write(client: CacheClient, keys: list[int], instance_id: str = "i1") -> StartWriteCacheResult:
    """StartWriteCache for ``keys`` with a 60 s timeout."""
    return client.start_write_cache(
        StartWriteCacheRequest(instance_id=instance_id, block_keys=keys, write_timeout_seconds=60)
    )


def write(client: CacheClient, keys: list[int], instance_id: str = "i1") -> list[str]:
    """Write ``keys`` (start + finish, every block successful); returns the URIs acknowledged."""
    started = start_write(client, keys, instance_id)
    client.finish_write_cache(
        FinishWriteCacheRequest(
            instance_id=instance_id,
            write_session_id=started.write_session_id,
            success_blocks=BlockMask(offset=len(keys)),
        )
    )
    return [loc.location_specs[0].uri for loc in started.locations]


def served_uris(client: CacheClient, keys: list[int], instance_id: str = "i1") -> list[str]:
    """The URIs a prefix match of ``keys`` returns (one per matched key)."""
    result = client.get_cache_location(
        GetCacheLocationRequest(
            instance_id=instance_id, query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys
        )
    )
    return [loc.location_specs[0].uri for loc in result.locations]


def is_leader(node: ServeProcess) -> bool | None:
    """The node's CheckHealth ``is_leader``; None when it does not answer."""
    try:
        with node.client(timeout_s=1.0) as client:
            return bool(client.check_health().is_leader)
    except ServiceUnavailable:
        return None


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> float:
    """Poll ``predicate`` until it holds; returns the monotonic time it first held.

    Raises:
        AssertionError: it did not hold within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def error_code(fn: Callable[[], object]) -> ErrorCode | None:
    """The CacheError code ``fn()`` raises (None when it succeeds)."""
    try:
        fn()
    except CacheError as exc:
        return exc.code
    return None
