"""Upkeep of a long-running server: the one background poll task, log rotation (access and event logs) and
``kvsim serve --check``, plus the start-time refusal of a store this kvsim cannot open."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import GetCacheLocationRequest, QueryType
from kvsim.cache.store import SqliteStore
from kvsim.core import ConfigError, ManualClock, WallClock
from kvsim.serve.accesslog import AccessLog
from kvsim.serve.client import CacheClient
from kvsim.serve.config import resolve_settings
from kvsim.serve.server import ServerThread
from kvsim.serve.service import KvcmService
from kvsim.serve.upkeep import (
    EVENT_LOG_FILE,
    RotatingJsonlSink,
    check_configuration,
    effective_lock_uri,
    poll_delay,
    poll_forever,
    rotate,
)

from ..cache.redis_server import RedisServer, free_port
from .conftest import make_settings, new_manager
from .serve_process import ServeProcess, node_factory, register, served_uris, write


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Makes ``kvsim serve`` processes; kills them all at the end."""
    yield from node_factory(tmp_path)


# ---------------------------------------------------------------------------------------------- the poll


class _Deadline:
    def __init__(self, at: float | None) -> None:
        self.at = at

    def next_deadline(self) -> float | None:
        return self.at


def test_poll_delay_wakes_just_after_the_next_deadline() -> None:
    assert poll_delay(None, 100.0, 0.5) == 0.5  # a follower: just the interval
    assert poll_delay(_Deadline(None), 100.0, 0.5) == 0.5
    assert poll_delay(_Deadline(100.2), 100.0, 0.5) == pytest.approx(0.21)
    assert poll_delay(_Deadline(99.0), 100.0, 0.5) == 0.01  # overdue: soon, never a busy loop
    assert poll_delay(_Deadline(200.0), 100.0, 0.5) == 0.5


def test_the_poll_task_skips_followers_survives_failures_and_stops_on_cancel() -> None:
    class Cache:
        def __init__(self) -> None:
            self.polls = 0

        def next_deadline(self) -> None:
            return None

    class Service:
        def __init__(self) -> None:
            self.cache: Cache | None = None
            self.clock = WallClock()
            self.calls = 0

        def poll(self) -> None:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("store hiccup")  # logged; the next round polls again

    async def main() -> int:
        service = Service()
        task = asyncio.create_task(poll_forever(service, 0.01))
        await asyncio.sleep(0.1)
        assert service.calls == 0  # no cache: a follower does not poll
        service.cache = Cache()
        deadline = time.monotonic() + 5
        while service.calls < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return service.calls

    assert asyncio.run(asyncio.wait_for(main(), 10)) >= 5


def test_the_poll_task_waits_while_the_lease_may_be_lapsing() -> None:
    """A poll writes to the store, so a leader that is not serving (its lease too close to its end)
    skips it even though it still has a cache."""

    class Elector:
        serving_now = False

        def serving(self) -> bool:
            return self.serving_now

    class Service:
        def __init__(self) -> None:
            self.cache = object()
            self.clock = WallClock()
            self.elector = Elector()
            self.calls = 0

        def poll(self) -> None:
            self.calls += 1

    async def main() -> tuple[int, int]:
        service = Service()
        task = asyncio.create_task(poll_forever(service, 0.01))
        await asyncio.sleep(0.1)
        skipped = service.calls
        service.elector.serving_now = True
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return skipped, service.calls

    skipped, polled = asyncio.run(asyncio.wait_for(main(), 10))
    assert (skipped, polled > 0) == (0, True)


def test_the_background_poll_persists_access_statistics_lazily(tmp_path: Path) -> None:
    """Reads are counted in memory; the background poll merges them into the store."""
    clock = WallClock()
    mgr = new_manager(clock, store=SqliteStore(tmp_path / "meta.db"))  # type: ignore[arg-type]
    service = KvcmService(mgr, clock=clock)
    with ServerThread(service, make_settings(tmp_path, poll_interval_s=0.05)) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.grpc(ep.host, ep.rpc_port, timeout_s=5) as client:
            register(client)
            write(client, [1, 2])
            for keys in ([1, 2], [1, 2], [1]):
                served_uris(client, keys)

        def stored_hits() -> list[int]:
            con = sqlite3.connect(tmp_path / "meta.db")  # another connection: what a restart would see
            try:
                return [row[0] for row in con.execute("SELECT access_count FROM meta ORDER BY key")]
            finally:
                con.close()

        deadline = time.monotonic() + 5
        while stored_hits() != [3, 2] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored_hits() == [3, 2]


# ---------------------------------------------------------------------------------------------- rotation


def test_rotate_shifts_files_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    for text in ("one", "two", "three", "four"):
        log.write_text(text)
        rotate(log, 2)
    assert not log.exists()
    assert [(tmp_path / f"x.log.{n}").read_text() for n in (1, 2)] == ["four", "three"]
    assert not (tmp_path / "x.log.3").exists()


def test_the_event_sink_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "logs" / EVENT_LOG_FILE
    sink = RotatingJsonlSink(path, max_bytes=200, backups=2)
    for n in range(12):
        sink.write([{"type": "GetCacheLocation", "n": n, "pad": "x" * 40}])
    sink.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == [EVENT_LOG_FILE, f"{EVENT_LOG_FILE}.1", f"{EVENT_LOG_FILE}.2"]
    kept = [
        json.loads(line)["n"]
        for name in (f"{EVENT_LOG_FILE}.2", f"{EVENT_LOG_FILE}.1", EVENT_LOG_FILE)
        for line in (path.parent / name).read_text().splitlines()
    ]
    assert kept == list(range(12 - len(kept), 12))  # the newest records, in order, none torn
    assert all((path.parent / f).stat().st_size <= 200 + 70 for f in files)


def test_the_access_log_rotates_by_size(tmp_path: Path) -> None:
    log = AccessLog(tmp_path / "access.log", ManualClock(1.0), max_bytes=600, backups=2)
    for n in range(40):
        log.write(transport="grpc", service="meta", api="GetCacheLocation", status="OK", latency_s=0.001,
                  request_bytes=n, response_bytes=n)  # fmt: skip
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["access.log", "access.log.1", "access.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 600
        assert all(
            json.loads(line)["api"] == "GetCacheLocation"
            for line in (tmp_path / name).read_text().splitlines()
        )


@pytest.mark.slow
def test_serve_writes_and_rotates_the_event_and_access_logs(
    nodes: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    config = tmp_path / "logs.conf"
    config.write_text(
        "kvsim.event_log=true\nkvsim.log_max_bytes=4000\nkvsim.log_backups=2\nkvsim.poll_interval_ms=50\n"
    )
    node = nodes("logs", "--config", str(config), "--storage-backend", "simulated").start()
    node.wait_ready()
    with node.client("grpc") as client:
        register(client)
        for n in range(30):
            keys = [n * 2, n * 2 + 1]
            write(client, keys)
            client.get_cache_location(
                GetCacheLocationRequest(
                    instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys
                )
            )
    assert node.terminate() == 0  # closing the cache flushes the last events
    data = node.data
    for name in ("access.log", EVENT_LOG_FILE):
        assert sorted(p.name for p in data.glob(f"{name}*")) == [name, f"{name}.1", f"{name}.2"]
    events = [
        json.loads(line)
        for name in (f"{EVENT_LOG_FILE}.2", f"{EVENT_LOG_FILE}.1", EVENT_LOG_FILE)
        for line in (data / name).read_text().splitlines()
    ]
    assert events[-1]["type"] == "GetCacheLocation" and events[-1]["keys"] == [58, 59]
    assert {e["type"] for e in events} <= {"StartWriteCache", "FinishWriteCache", "GetCacheLocation"}


# ---------------------------------------------------------------------------------------------- --check


def kvsim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvsim.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_check_validates_without_starting_or_writing(tmp_path: Path) -> None:
    out = kvsim("serve", "--check", "--data-dir", "data", "--rpc-port", "0", "--http-port", "0",
                "--admin-rpc-port", "0", "--admin-http-port", "0", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "data dir: data (created at start)",
        "storage backend: real",
        "startup config: built-in (storage nfs_01 under the data dir, group default)",
        "meta store: sqlite data/kvsim-meta.db (new file, schema 1)",
        "leader election: in-process lock (a single node, always leader)",
        "lease 10000 ms, renewed every 100 ms, leader-only requests refused 100 ms before it ends; "
        "node id (default)",
        "configuration OK",
    ]
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_check_reports_an_existing_store_and_ports_in_use(tmp_path: Path) -> None:
    SqliteStore(data_dir=tmp_path).close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = make_settings(tmp_path, meta_store="sqlite", rpc_port=port, node_id="n1")
        lines = check_configuration(settings)
    assert f"meta store: sqlite {tmp_path / 'kvsim-meta.db'} (schema 1)" in lines
    assert lines[-2] == (
        "lease 10000 ms, renewed every 100 ms, leader-only requests refused 100 ms before it ends; node id n1"
    )
    assert lines[-1].startswith(f"WARNING: rpc_port 127.0.0.1:{port} cannot be bound now")


def newer_store(path: Path) -> Path:
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    return path


CHECK_FAILURES = [
    ({"meta_store": "sqlite://{tmp}/newer.db"}, "schema version 99 is newer than this kvsim's (1)"),
    ({"meta_store": "sqlite://{tmp}/junk.db"}, "not a kvsim store"),
    (
        {"meta_store": "redis://:secret@127.0.0.1:{port}?timeout_ms=200"},
        "meta store 127.0.0.1:{port}: does not answer",
    ),
    (
        {"distributed_lock_uri": "redis://127.0.0.1:{port}?timeout_ms=200"},
        "redis lock 127.0.0.1:{port}: does not answer",
    ),
    ({"distributed_lock_uri": "zk://h:1"}, "unknown kind; use memory://, file:///dir or redis://"),
    ({"distributed_lock_uri": "file://{tmp}/plain/sub"}, "file lock dir {tmp}/plain/sub: cannot be created"),
    ({"startup_config": "{tmp}/missing.json"}, "--startup-config {tmp}/missing.json: No such file"),
    ({"data_dir": "{tmp}/plain"}, "data dir {tmp}/plain: exists and is not a directory"),
]


@pytest.mark.parametrize(("overrides", "message"), CHECK_FAILURES)
def test_check_finds_what_would_stop_the_server(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    newer_store(tmp_path / "newer.db")
    (tmp_path / "junk.db").write_text("not sqlite at all, just text" * 100)
    (tmp_path / "plain").write_text("a file")
    port = free_port()
    values = {k: v.format(tmp=tmp_path, port=port) for k, v in overrides.items()}
    values = {k: Path(v) if k == "data_dir" else v for k, v in values.items()}
    settings = make_settings(tmp_path, **{"meta_store": "memory", **values})
    with pytest.raises(ConfigError) as err:
        check_configuration(settings, probe_ports=False)
    assert message.format(tmp=tmp_path, port=port) in str(err.value)
    assert "secret" not in str(err.value)


def test_check_against_a_live_redis(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        settings = make_settings(tmp_path, meta_store=server.url)
        lines = check_configuration(settings, probe_ports=False)
    assert f"meta store: redis 127.0.0.1:{server.port} answers (layout new)" in lines
    assert f"redis lock: redis 127.0.0.1:{server.port} answers" in lines  # the store's Redis, by default
    assert effective_lock_uri(settings) == server.url


def test_check_of_bad_elector_settings_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("kvcm.leader_elector.lease_ms=1000\nkvcm.leader_elector.loop_interval_ms=500\n")
    out = kvsim("serve", "--check", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "kvsim serve: error: kvcm.leader_elector.loop_interval_ms 500 must be at most a quarter of "
        "kvcm.leader_elector.lease_ms 1000"
    )


def test_serve_refuses_a_store_from_a_newer_kvsim(tmp_path: Path) -> None:
    newer_store(tmp_path / "kvsim-meta.db")
    proc = subprocess.run(
        [sys.executable, "-m", "kvsim.cli.main", "serve", "--data-dir", str(tmp_path), "--rpc-port", "0",
         "--http-port", "0", "--admin-rpc-port", "0", "--admin-http-port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "schema version 99 is newer than this kvsim's" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ports.json").exists()


def test_settings_keys_of_upkeep() -> None:
    settings = resolve_settings(
        {"kvsim.log_max_bytes": "0", "kvsim.log_backups": "3", "kvsim.event_log": "true"}
    )
    assert (settings.log_max_bytes, settings.log_backups, settings.event_log) == (0, 3, True)
    with pytest.raises(ConfigError, match=r"kvsim\.log_backups='0': must be > 0"):
        resolve_settings({"kvsim.log_backups": "0"})
