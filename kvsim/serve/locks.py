"""Distributed lock backends for leader election: ``memory://``, ``file:///dir`` and ``redis://``.

The reference's leader elector (study §3.6) takes one lock, ``_TAIR_KVCM_LEADER_KEY``, with a lease: the
holder must renew it before the lease runs out, and a holder that fails to renew loses it when the lease
expires. Every backend here offers the same four operations on one lock key:

``try_lock(value, ttl_ms)``
    Take the lock if it is free (or expired); True when this call took it. Never takes a lock held by
    another value.
``renew(value, ttl_ms)``
    Extend the lease, only if ``value`` still holds the lock (compare-and-set); False when it does not
    (the lease expired or someone else holds it): the caller has lost the lock.
``unlock(value)``
    Release the lock, only if ``value`` holds it (compare-and-delete): never deletes another holder's lock.
``holder()``
    The current holder's value and remaining lease, or None when the lock is free.

An operation that cannot reach the backend raises :class:`LockError`; the elector then keeps its
leadership only until its own lease deadline (it cannot know whether the renewal landed).

Backends, chosen by ``kvcm.distributed_lock.uri``:

* ``memory://`` (or empty): in this process only; one node, always leader unless it demotes itself.
* ``file:///dir``: ``<dir>/<key>.lock`` holding ``{"value": ..., "expire_time_ms": ...}``, read and written
  under ``flock``; expiry uses the wall clock, which every process on one host shares. For single-host
  tests and deployments, as the reference offers.
* ``redis://[auth@]host:port?timeout_ms=...``: the string key ``kvcm_lock:<key>`` (the reference's name;
  ``kvcm_lock:<cluster_name>:<key>`` when the URI names a cluster other than ``default``). ``SET NX PX``
  takes it; renewal and release are Lua scripts that compare the value first, so they are atomic.

The blocking backends (file, redis) are called from a worker thread by the elector, one call at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kvsim.core import ConfigError

LEADER_KEY = "_TAIR_KVCM_LEADER_KEY"
_RECORD_BYTES = 4096  # one page: the file lock's record is rewritten whole in one write
REDIS_LOCK_PREFIX = "kvcm_lock:"


class LockError(Exception):
    """The lock backend could not be reached or answered nonsense; the outcome of the call is unknown."""


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds the lock now and how much of its lease is left (milliseconds)."""

    value: str
    ttl_ms: int


class LockBackend:
    """One named lock with a lease. Subclasses implement the four operations (see the module docstring)."""

    #: The URI scheme, for logs and ``--check``.
    kind = "abstract"

    def try_lock(self, value: str, ttl_ms: int) -> bool:
        """Take the lock for ``ttl_ms`` if it is free; True when this call took it."""
        raise NotImplementedError

    def renew(self, value: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now if ``value`` holds the lock; False when it does not."""
        raise NotImplementedError

    def unlock(self, value: str) -> bool:
        """Release the lock if ``value`` holds it; False when it did not (nothing is changed then)."""
        raise NotImplementedError

    def holder(self) -> LockHolder | None:
        """The current holder, or None when the lock is free."""
        raise NotImplementedError

    def describe(self) -> str:
        """Where the lock lives, without secrets (for logs)."""
        return self.kind

    def close(self) -> None:
        """Release connections; the backend must not be used afterwards."""


# ---------------------------------------------------------------------------------------------- memory


class MemoryLock(LockBackend):
    """A lock inside this process (``memory://``): what a single node uses when no lock is configured.

    Args:
        monotonic: the clock of lease expiry (seconds); injectable for tests.
    """

    kind = "memory"

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._mutex = threading.Lock()  # the elector calls from worker threads
        self._value: str | None = None
        self._expires = 0.0

    def _current(self) -> str | None:
        if self._value is not None and self._now() >= self._expires:
            self._value = None
        return self._value

    def try_lock(self, value: str, ttl_ms: int) -> bool:
        """Take the lock if it is free or expired."""
        with self._mutex:
            if self._current() is not None:
                return False
            self._value, self._expires = value, self._now() + ttl_ms / 1000.0
            return True

    def renew(self, value: str, ttl_ms: int) -> bool:
        """Extend the lease if ``value`` holds the lock."""
        with self._mutex:
            if self._current() != value:
                return False
            self._expires = self._now() + ttl_ms / 1000.0
            return True

    def unlock(self, value: str) -> bool:
        """Release the lock if ``value`` holds it."""
        with self._mutex:
            if self._current() != value:
                return False
            self._value = None
            return True

    def holder(self) -> LockHolder | None:
        """The holder and its remaining lease."""
        with self._mutex:
            value = self._current()
            if value is None:
                return None
            return LockHolder(value, max(0, int((self._expires - self._now()) * 1000)))


# ---------------------------------------------------------------------------------------------- file


class FileLock(LockBackend):
    """``<directory>/<key>.lock`` with ``{"value": ..., "expire_time_ms": ...}`` (the reference's format).

    Every operation opens the file, takes an exclusive ``flock`` (so a read-modify-write is atomic among
    processes on this host), and replaces the content in place. Expiry is wall-clock epoch milliseconds,
    the same on every process of the host.

    The content is rewritten with one ``pwrite`` of one page (the JSON padded with spaces), never by
    truncating first: a holder killed in the middle of a renewal leaves either the old or the new record,
    never an empty file that another node would read as a free lock (the flock dies with the process).

    Args:
        directory: the lock directory (created when missing).
        key: the lock name.
        wall_ms: the clock of expiry (epoch milliseconds); injectable for tests.

    Raises:
        LockError: the directory cannot be created.
    """

    kind = "file"

    def __init__(
        self,
        directory: str | Path,
        key: str = LEADER_KEY,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{key}.lock"
        self._wall_ms = wall_ms
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(f"file lock {self.directory}: {exc.strerror or exc}") from None

    def describe(self) -> str:
        """The lock file's path."""
        return f"file lock {self.path}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """The open file descriptor under an exclusive flock, and its live content (None: free)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"file lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            content: dict[str, Any] | None = None
            text = raw.decode("utf-8", errors="replace").strip()
            if text:
                try:
                    # raw_decode: the record is followed by padding (or, in a foreign file, anything).
                    parsed, _ = json.JSONDecoder().raw_decode(text)
                    if isinstance(parsed, dict) and isinstance(parsed.get("value"), str):
                        content = parsed
                except ValueError:
                    content = None  # a foreign or corrupt file counts as free; the next write repairs it
            if content is not None and float(content.get("expire_time_ms", 0)) <= self._wall_ms():
                content = None
            yield fd, content
        except OSError as exc:
            raise LockError(f"file lock {self.path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _write(self, fd: int, content: dict[str, Any] | None) -> None:
        data = b"{}" if content is None else json.dumps(content, separators=(",", ":")).encode()
        if len(data) > _RECORD_BYTES:
            raise LockError(f"file lock {self.path}: a lock value of {len(data)} bytes is too long")
        # One page in one call: the kernel copies it whole or not at all, even if the process is killed.
        os.pwrite(fd, data.ljust(_RECORD_BYTES), 0)
        if os.fstat(fd).st_size > _RECORD_BYTES:  # a longer foreign file: drop its tail (harmless if cut)
            os.ftruncate(fd, _RECORD_BYTES)

    def try_lock(self, value: str, ttl_ms: int) -> bool:
        """Take the lock if the file holds no live lock."""
        with self._locked() as (fd, content):
            if content is not None:
                return False
            self._write(fd, {"value": value, "expire_time_ms": int(self._wall_ms() + ttl_ms)})
            return True

    def renew(self, value: str, ttl_ms: int) -> bool:
        """Push the expiry out if ``value`` holds a live lock."""
        with self._locked() as (fd, content):
            if content is None or content["value"] != value:
                return False
            self._write(fd, {"value": value, "expire_time_ms": int(self._wall_ms() + ttl_ms)})
            return True

    def unlock(self, value: str) -> bool:
        """Empty the file if ``value`` holds a live lock."""
        with self._locked() as (fd, content):
            if content is None or content["value"] != value:
                return False
            self._write(fd, None)
            return True

    def holder(self) -> LockHolder | None:
        """The live holder, if any."""
        with self._locked() as (_, content):
            if content is None:
                return None
            left = int(float(content["expire_time_ms"]) - self._wall_ms())
            return LockHolder(content["value"], max(0, left))


# ---------------------------------------------------------------------------------------------- redis

# KEYS[1] = the lock key; ARGV[1] = the value; ARGV[2] = the lease in ms. 1 when renewed, 0 when the key
# is gone or belongs to someone else (GET and PEXPIRE run atomically inside the script).
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] = the lock key; ARGV[1] = the value. 1 when deleted; never deletes another holder's lock.
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock(LockBackend):
    """The lock as a Redis string key with a ``PX`` expiry.

    Args:
        uri: ``redis://[auth@]host:port?timeout_ms=...`` (the store's grammar; ``cluster_name`` other than
            ``default`` namespaces the key, ``db`` picks the database).
        key: the lock name.

    Raises:
        ConfigError: a malformed URI.
    """

    kind = "redis"

    def __init__(self, uri: str, key: str = LEADER_KEY) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            from kvsim.cache.store.redis import parse_uri
        except ImportError as exc:
            raise ConfigError(f"redis lock: needs redis-py (pip install 'kvsim[all]'): {exc}") from None
        from kvsim.cache.store import StoreOpenError

        try:
            settings = parse_uri(uri)
        except StoreOpenError as exc:
            raise ConfigError(str(exc).replace("redis store", "redis lock", 1)) from None
        self.address = f"{settings['host']}:{settings['port']}"
        cluster = settings["cluster_name"]
        # The reference's key; another cluster sharing the Redis gets its own lock.
        self.key = (
            f"{REDIS_LOCK_PREFIX}{key}" if cluster == "default" else f"{REDIS_LOCK_PREFIX}{cluster}:{key}"
        )
        timeout = settings["timeout_ms"] / 1000.0
        tls: dict[str, Any] = {"connection_class": redis.SSLConnection} if settings["tls"] else {}
        # No retries inside redis-py: a lock call that fails is answered by the elector, which retries
        # at its next loop (a retry here would only eat into the lease while the outcome is unknown).
        pool = redis.ConnectionPool(
            **tls,
            host=settings["host"],
            port=settings["port"],
            db=settings["db"],
            username=settings["username"],
            password=settings["password"],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=4,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._redis_error: type[Exception] = redis.RedisError
        self._r: Any = redis.Redis(connection_pool=pool)
        self._renew = self._r.register_script(_RENEW_LUA)
        self._unlock = self._r.register_script(_UNLOCK_LUA)

    def describe(self) -> str:
        """``redis lock host:port key``, never the password."""
        return f"redis lock {self.address} {self.key}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._redis_error as exc:
            raise LockError(f"redis lock {self.address}: {type(exc).__name__}: {exc}") from None

    def try_lock(self, value: str, ttl_ms: int) -> bool:
        """``SET key value NX PX ttl``: atomic, never overwrites a live lock."""
        return bool(self._call(lambda: self._r.set(self.key, value, nx=True, px=int(ttl_ms))))

    def renew(self, value: str, ttl_ms: int) -> bool:
        """Compare-and-``PEXPIRE`` in one Lua script."""
        return int(self._call(lambda: self._renew(keys=[self.key], args=[value, int(ttl_ms)]))) == 1

    def unlock(self, value: str) -> bool:
        """Compare-and-``DEL`` in one Lua script."""
        return int(self._call(lambda: self._unlock(keys=[self.key], args=[value]))) == 1

    def holder(self) -> LockHolder | None:
        """``GET`` and ``PTTL`` in one transaction."""

        def read() -> Any:
            pipe = self._r.pipeline(transaction=True)
            pipe.get(self.key)
            pipe.pttl(self.key)
            return pipe.execute()

        value, ttl = self._call(read)
        if value is None:
            return None
        return LockHolder(str(value), max(0, int(ttl)))

    def close(self) -> None:
        """Drop the connections."""
        with contextlib.suppress(Exception):
            self._r.close()
            self._r.connection_pool.disconnect()


# ---------------------------------------------------------------------------------------------- opening


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for logs and ``--check``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    hidden = f"{user}:***" if colon else "***"
    return parts._replace(netloc=f"{hidden}@{hostport}").geturl()


def lock_directory(uri: str) -> Path:
    """The directory of a ``file:///dir`` URI.

    Raises:
        ConfigError: not a file URI with an absolute path.
    """
    parts = urlsplit(uri)
    # file:///abs/dir (empty host) is the reference's form; file://localhost/abs/dir is accepted too.
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ConfigError(f"distributed lock {uri!r}: expected file:///absolute/directory")
    return Path(unquote(parts.path))


def open_lock(uri: str, key: str = LEADER_KEY) -> LockBackend:
    """The lock backend a ``kvcm.distributed_lock.uri`` names (empty or ``memory://``: in process).

    Raises:
        ConfigError: an unknown scheme or a malformed URI (nothing is contacted yet).
    """
    text = uri.strip()
    if text in ("", "memory", "memory://"):
        return MemoryLock()
    scheme = text.partition("://")[0]
    if scheme == "file":
        try:
            return FileLock(lock_directory(text), key)
        except LockError as exc:
            raise ConfigError(f"distributed lock: {exc}") from None
    if scheme in ("redis", "rediss"):
        return RedisLock(text, key)
    raise ConfigError(
        f"distributed lock {redact(text)!r}: unknown kind; use memory://, file:///dir or redis://host:port"
    )
