"""Keeping a long-running ``kvsim serve`` healthy: the background poll, log rotation, ``--check``.

* :func:`poll_forever` is the one background task that drives the cache's ``poll``: write-session expiry,
  reclaim rounds, delayed deletions, the lazy merge of access statistics into the store and the event
  log's flush. It wakes every ``poll_interval`` or just after the next session deadline, skips while this
  node is not serving as leader, survives a failing poll and ends at cancellation (``KvcmServer.stop``).
* :class:`RotatingJsonlSink` is the event log's sink (the reference's ``event_publisher.log``): a
  :class:`~kvsim.cache.events.JsonlFileSink` that is rotated by size, like the access log
  (``<file>.1`` is the newest old file, ``<file>.<backups>`` the oldest kept).
* :func:`check_configuration` is ``kvsim serve --check``: everything the server would refuse at start,
  found without starting it and without writing anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kvsim.cache.events import JsonlFileSink, Record
from kvsim.core import ConfigError
from kvsim.serve.config import ServeSettings
from kvsim.serve.locks import lock_directory, redact

logger = logging.getLogger("kvsim.serve")

EVENT_LOG_FILE = "event_publisher.log"  # the reference's name (its logs/event_publisher.log)
_MIN_DELAY_S = 0.01  # never spin: a deadline already past is acted on after 10 ms


# ---------------------------------------------------------------------------------------------- the poll


def poll_delay(cache: Any, now: float, interval_s: float) -> float:
    """How long the poll task sleeps: the interval, or less when the cache has work due sooner.

    Deadlines are inclusive (a session may still be finished *at* its deadline), so the task wakes just
    after the earliest one.
    """
    deadline = cache.next_deadline() if cache is not None and hasattr(cache, "next_deadline") else None
    if deadline is None:
        return interval_s
    return min(interval_s, max(_MIN_DELAY_S, deadline - now + _MIN_DELAY_S))


async def poll_forever(service: Any, interval_s: float) -> None:
    """Run ``service.poll()`` whenever the cache has work due, until cancelled.

    ``service.cache`` is read afresh every round: a follower has none (the round is skipped), and a
    promotion or demotion swaps it between rounds. A leader whose lease may be lapsing skips too. A
    failing poll is logged and retried next round, so the server keeps serving.
    """
    while True:
        await asyncio.sleep(poll_delay(service.cache, service.clock.now(), interval_s))
        elector = getattr(service, "elector", None)
        # A poll writes to the store (expiry, deletions, statistics): like a leader-only RPC, it runs only
        # while this node leads with its lease safely ahead.
        if service.cache is None or (elector is not None and not elector.serving()):
            continue
        try:
            service.poll()
        except Exception:
            logger.exception("cache poll failed")


# ---------------------------------------------------------------------------------------------- rotation


def rotate(path: Path, backups: int) -> None:
    """Shift ``path`` to ``path.1`` (``path.1`` to ``path.2``, ...); the oldest beyond ``backups`` goes.

    With ``backups`` 0 the file is simply emptied by deletion. Missing files are skipped.
    """
    if backups <= 0:
        path.unlink(missing_ok=True)
        return
    path.with_name(f"{path.name}.{backups}").unlink(missing_ok=True)
    for number in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{number + 1}"))
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))


class RotatingJsonlSink:
    """An event sink writing JSON lines through :class:`JsonlFileSink`, rotated once the file reaches
    ``max_bytes`` (checked after each batch, so a file may exceed it by one batch).

    Args:
        path: the log file.
        max_bytes: rotate at this size; 0 never rotates.
        backups: old files kept (``path.1`` ... ``path.<backups>``).

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._sink = JsonlFileSink(self.path)

    def write(self, records: Sequence[Record]) -> None:
        """Append the batch, then rotate if the file has reached its size."""
        self._sink.write(records)
        if self.max_bytes > 0 and records and self.path.stat().st_size >= self.max_bytes:
            self._sink.close()
            rotate(self.path, self.backups)
            self._sink = JsonlFileSink(self.path)

    def close(self) -> None:
        """Close the current file."""
        self._sink.close()


# ---------------------------------------------------------------------------------------------- --check


def _writable_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (itself included) if files can be created in it."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return probe if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else None


def _check_dir(label: str, path: Path) -> str:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {path}: exists and is not a directory")
    if _writable_ancestor(path) is None:
        raise ConfigError(f"{label} {path}: cannot be created or written")
    return f"{label}: {path}{'' if path.exists() else ' (created at start)'}"


def sqlite_path(spec: str, data_dir: Path) -> Path:
    """The database file a ``sqlite`` meta-store spec names (as :func:`kvsim.cache.store.open_store`)."""
    path = spec.removeprefix("sqlite").removeprefix("://").partition("?")[0]
    return Path(path) if path else data_dir / "kvsim-meta.db"


def _check_sqlite(spec: str, data_dir: Path) -> str:
    from kvsim.cache.store.sqlite_schema import SCHEMA_VERSION

    path = sqlite_path(spec, data_dir)
    if not path.exists():
        if _writable_ancestor(path.parent) is None:
            raise ConfigError(f"meta store {path}: its directory cannot be created or written")
        return f"meta store: sqlite {path} (new file, schema {SCHEMA_VERSION})"
    try:
        # Read-only: --check never migrates or creates anything.
        con = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True)
        try:
            version = int(con.execute("SELECT version FROM schema_version").fetchone()[0])
        finally:
            con.close()
    except (sqlite3.Error, TypeError, ValueError) as exc:
        raise ConfigError(f"meta store {path}: not a kvsim store: {exc}") from None
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"meta store {path}: schema version {version} is newer than this kvsim's ({SCHEMA_VERSION})"
        )
    note = "" if version == SCHEMA_VERSION else f", migrated to {SCHEMA_VERSION} at start"
    return f"meta store: sqlite {path} (schema {version}{note})"


def _redis_client(uri: str, label: str) -> tuple[Any, str]:
    """A redis-py client for ``uri`` and its ``host:port``."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from kvsim.cache.store import StoreOpenError
        from kvsim.cache.store.redis import parse_uri
    except ImportError as exc:
        raise ConfigError(f"{label}: needs redis-py (pip install 'kvsim[all]'): {exc}") from None
    try:
        s = parse_uri(uri)
    except StoreOpenError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    timeout = s["timeout_ms"] / 1000.0
    tls: dict[str, Any] = {"ssl": True} if s["tls"] else {}
    client = redis.Redis(
        host=s["host"],
        port=s["port"],
        db=s["db"],
        username=s["username"],
        password=s["password"],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        **tls,
    )
    return client, f"{s['host']}:{s['port']}"


def _check_redis(uri: str, label: str, schema: bool) -> str:
    import redis

    from kvsim.cache.store.redis import SCHEMA_KEY, SCHEMA_VERSION

    client, address = _redis_client(uri, label)
    try:
        client.ping()
        version = client.get(SCHEMA_KEY) if schema else None
    except redis.RedisError as exc:
        raise ConfigError(f"{label} {address}: does not answer: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()
    if version is not None and int(version) > SCHEMA_VERSION:
        raise ConfigError(f"{label} {address}: layout version {version} is newer than this kvsim's")
    return f"{label}: redis {address} answers" + (f" (layout {version or 'new'})" if schema else "")


def effective_lock_uri(settings: ServeSettings) -> str:
    """The lock leader election uses: ``kvcm.distributed_lock.uri``; else, with a Redis meta store, that
    same Redis (nodes that share a store must share a lock); else the in-process lock (one node)."""
    if settings.distributed_lock_uri.strip():
        return settings.distributed_lock_uri.strip()
    if settings.meta_store.strip().startswith(("redis://", "rediss://")):
        return settings.meta_store.strip()
    return "memory://"


def check_configuration(settings: ServeSettings, *, probe_ports: bool = True) -> list[str]:
    """``kvsim serve --check``: validate everything the server needs, start nothing, write nothing.

    Checks the data directory, the storage backend mode, the startup config, the meta store (a sqlite
    file is opened read-only and its schema version compared; a Redis store is PINGed), the lock
    (a file lock's directory, a Redis lock's server) and the lease. Ports already in use are reported
    as warnings only: the configuration may belong to the server running on them.

    Returns:
        One line per item checked, for the operator; secrets in URIs are masked.

    Raises:
        ConfigError: the first problem found.
    """
    from kvsim.serve.server import open_backends
    from kvsim.serve.startup import load_startup_config

    lines = [_check_dir("data dir", settings.data_dir)]
    open_backends(settings.storage_backend)
    lines.append(f"storage backend: {settings.storage_backend}")
    if settings.startup_config:
        storage, group = load_startup_config(Path(settings.startup_config))
        names = [x for x in (getattr(storage, "global_unique_name", None), getattr(group, "name", None)) if x]
        lines.append(f"startup config: {settings.startup_config} ({', '.join(names) or 'empty'})")
    else:
        lines.append("startup config: built-in (storage nfs_01 under the data dir, group default)")
    store = settings.meta_store.strip()
    if store in ("memory", "memory://"):
        lines.append("meta store: memory (WARNING: nothing survives a restart)")
    elif store == "sqlite" or store.startswith("sqlite://"):
        lines.append(_check_sqlite(store, settings.data_dir))
    elif store.startswith(("redis://", "rediss://")):
        lines.append(_check_redis(store, "meta store", schema=True))
    else:
        raise ConfigError(f"--meta-store {redact(store)!r}: unknown kind; use memory, sqlite or redis://...")
    lock = effective_lock_uri(settings)
    if lock == "memory://":
        lines.append("leader election: in-process lock (a single node, always leader)")
    elif lock.startswith("file:"):
        lines.append(_check_dir("file lock dir", lock_directory(lock)))
    elif lock.startswith(("redis://", "rediss://")):
        lines.append(_check_redis(lock, "redis lock", schema=False))
    else:
        from kvsim.serve.locks import open_lock

        open_lock(lock)  # raises the unknown-kind error
    from kvsim.serve.leader import admission_margin_s

    margin = admission_margin_s(settings)
    lines.append(
        f"lease {settings.lease_s * 1000:g} ms, renewed every {settings.loop_interval_s * 1000:g} ms, "
        f"leader-only requests refused {margin * 1000:g} ms before it ends; "
        f"node id {settings.node_id or '(default)'}"
    )
    if probe_ports:
        lines.extend(_port_warnings(settings))
    return lines


def _port_warnings(settings: ServeSettings) -> list[str]:
    ports = {
        "rpc_port": settings.rpc_port,
        "http_port": settings.http_port,
        "admin_http_port": settings.admin_http_port,
    }
    if not settings.shared_admin_rpc:
        ports["admin_rpc_port"] = settings.admin_rpc_port
    warnings = []
    for name, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as sock:
            try:
                sock.bind((settings.host, port))
            except OSError as exc:
                warnings.append(f"WARNING: {name} {settings.host}:{port} cannot be bound now: {exc.strerror}")
    return warnings
