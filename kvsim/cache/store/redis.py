"""The ``redis`` store: registry and meta index in Redis, shared by a leader and its standbys.

URI (the reference's form): ``redis://[auth@]host:port?timeout_ms=2000&retry_count=2&
client_max_pool_size=16&cluster_name=default&db=0``; ``rediss://`` for TLS. ``auth`` is a password, or
``user:password`` for a Redis 6 ACL user. ``timeout_ms`` bounds connecting, each reply and waiting for a
pooled connection; ``retry_count`` is how often a command is retried after a broken connection (a Redis
restart), with a short exponential back-off. ``client_min_pool_size`` is accepted and ignored, as the
pool opens connections on demand; any other parameter is refused.

Key layout (one hash per instance instead of the reference's one hash per block key, so a prefix
match of any length is one ``HMGET``)::

    kvcache:instance_<instance id>:cache  hash    <block key> -> "<created> <last access> <hits> <json>"
    kvcache_registry:<cluster>:<kind>     hash    <name> -> JSON document (storage, instance_group, ...)
    kvcache:schema_version                string  the layout version (1)

``<json>`` is the locations array of :mod:`kvsim.cache.store.records` and the three numbers before it
are the access statistics, so ``HGET kvcache:instance_i1:cache 123`` shows an operator what
``HGETALL kvcache:instance_i1:cache_123`` shows in the reference. The registry keeps the reference's
``kvcache_registry:<cluster_name>:<logical key>`` hashes.

Every call is one round trip: reads are one command (or one ``MULTI``/``EXEC``), writes are one
``MULTI``/``EXEC`` transaction, access statistics are merged by a Lua script (one ``EVALSHA`` per 1,000
keys, pipelined). Only scans take one round trip per page. The reclaimer's sample walks the instance's
hash with ``HSCAN`` and draws from the sorted keys with the caller's generator (never ``RANDOMKEY``), so
it picks the same keys as every other store.

Several kvsim servers may share one Redis as a leader and standbys: only the leader's manager writes, and
a standby that takes over opens a fresh manager, which reloads everything. Writes are idempotent
(whole records), so a retried transaction after a broken connection does no harm; a retried statistics
merge may count some hits twice.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from kvsim.cache.store.base import (
    REGISTRY_KINDS,
    CacheStore,
    KeyRecord,
    StoreError,
    StoreOpenError,
    sample_sorted,
)
from kvsim.cache.store.records import DEFAULT_DECODE_CACHE, LocationCodec

SCHEMA_VERSION = 1
SCHEMA_KEY = "kvcache:schema_version"
META_PREFIX = "kvcache:instance_"
META_SUFFIX = ":cache"
DEFAULT_PORT = 6379
#: URI parameters: name -> (type, default, minimum).
PARAMETERS: dict[str, tuple[type, Any, int]] = {
    "timeout_ms": (int, 2_000, 1),
    "retry_count": (int, 2, 0),
    "client_max_pool_size": (int, 16, 1),
    "client_min_pool_size": (int, 0, 0),
    "cluster_name": (str, "default", 0),
    "db": (int, 0, 0),
}
_TOUCH_BATCH = 1_000  # keys per Lua call: keeps each script short (Redis runs scripts atomically)
_SCAN_COUNT = 1_000

# KEYS[1] = the instance's hash; ARGV = key, time, hits, key, time, hits, ...
# last_access = max(stored, time) compared as numbers but kept as the client's exact text (Lua would print
# a double with 14 digits); access_count += hits. Absent keys are skipped.
_TOUCH_LUA = """
local h = KEYS[1]
local n = 0
for i = 1, #ARGV, 3 do
  local v = redis.call('HGET', h, ARGV[i])
  if v then
    local created, last, hits, rest = string.match(v, '^(%S+) (%S+) (%S+) (.*)$')
    if rest then
      if tonumber(ARGV[i + 1]) > tonumber(last) then last = ARGV[i + 1] end
      hits = string.format('%d', tonumber(hits) + tonumber(ARGV[i + 2]))
      redis.call('HSET', h, ARGV[i], created .. ' ' .. last .. ' ' .. hits .. ' ' .. rest)
      n = n + 1
    end
  end
end
return n
"""

_F = TypeVar("_F", bound=Callable[..., Any])


def _wrapped(fn: _F) -> _F:
    """Report Redis failures as :class:`StoreError` naming the server (never its password)."""

    @functools.wraps(fn)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"redis store {self.address}: {type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


def parse_uri(uri: str) -> dict[str, Any]:
    """Split a ``redis://`` URI into connection settings (see the module docstring).

    Raises:
        StoreOpenError: not a redis URI, a bad port, an unknown or malformed parameter.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("redis", "rediss"):
        raise StoreOpenError(f"redis store {uri!r}: the URI must start with redis:// (or rediss:// for TLS)")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = parts.hostname
    if not host:
        raise StoreOpenError(f"redis store {uri!r}: no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise StoreOpenError(f"redis store {hostport!r}: bad port") from None
    if parts.path not in ("", "/"):
        raise StoreOpenError(f"redis store {host}:{port}: unexpected path {parts.path!r}")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user), unquote(secret)) if colon else (None, unquote(user))
    settings: dict[str, Any] = {name: default for name, (_, default, _) in PARAMETERS.items()}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in PARAMETERS:
            raise StoreOpenError(
                f"redis store {host}:{port}: unknown parameter {name!r} (known: {sorted(PARAMETERS)})"
            )
        kind, _, minimum = PARAMETERS[name]
        try:
            converted = kind(value)
        except ValueError:
            converted = None
        if converted is None or (kind is int and converted < minimum) or (kind is str and not converted):
            raise StoreOpenError(f"redis store {host}:{port}: bad value {name}={value!r}")
        settings[name] = converted
    settings.update(host=host, port=port, username=username, password=password, tls=parts.scheme == "rediss")
    return settings


class _Closed:
    """Stands in for the client after :meth:`RedisStore.close`: any use is a :class:`StoreError`."""

    def __init__(self, address: str) -> None:
        self._address = address

    def __getattr__(self, name: str) -> NoReturn:
        raise StoreError(f"redis store {self._address}: used after close()")


class RedisStore(CacheStore):
    """Registry and meta index in one Redis database.

    Args:
        uri: ``redis://[auth@]host:port?...`` (see the module docstring).
        decode_cache: decoded location arrays memoised (0 disables).

    Raises:
        StoreOpenError: a malformed URI, a server that does not answer PING within the timeout (after
            the retries), a failed AUTH, a read-only replica, or a layout version newer than this one.
    """

    name = "redis"

    def __init__(
        self, uri: str = "redis://127.0.0.1:6379", *, decode_cache: int = DEFAULT_DECODE_CACHE
    ) -> None:
        settings = parse_uri(uri)
        self.address = f"{settings['host']}:{settings['port']}"
        self.cluster_name: str = settings["cluster_name"]
        timeout = settings["timeout_ms"] / 1000.0
        if decode_cache < 0:
            raise StoreOpenError(f"redis store {self.address}: decode_cache must be >= 0")
        self._codec = LocationCodec(decode_cache)
        tls: dict[str, Any] = {"connection_class": redis.SSLConnection} if settings["tls"] else {}
        self._pool = redis.BlockingConnectionPool(
            **tls,
            host=settings["host"],
            port=settings["port"],
            db=settings["db"],
            username=settings["username"],
            password=settings["password"],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=settings["client_max_pool_size"],
            timeout=timeout,  # waiting for a free pooled connection
            retry=Retry(ExponentialBackoff(cap=timeout, base=0.01), settings["retry_count"]),
            decode_responses=True,
        )
        self._r: Any = redis.Redis(connection_pool=self._pool)
        try:
            self._r.ping()
            version = self._r.info("server").get("redis_version", "0")
            self.server_version = tuple(int(x) for x in str(version).split(".")[:2])
            self._check_layout()
        except redis.RedisError as exc:
            self._pool.disconnect()
            raise StoreOpenError(
                f"redis store {self.address}: does not answer: {type(exc).__name__}: {exc}"
            ) from None
        except StoreOpenError:
            self._pool.disconnect()
            raise
        # HSCAN ... NOVALUES (Redis 7.4+) leaves the records out of a key scan.
        self._novalues = self.server_version >= (7, 4)
        self._touch_sha = hashlib.sha1(_TOUCH_LUA.encode()).hexdigest()  # what SCRIPT LOAD returns

    # ------------------------------------------------------------------------------- plumbing

    def _check_layout(self) -> None:
        self._r.set(SCHEMA_KEY, SCHEMA_VERSION, nx=True)  # a fresh database takes the current layout
        stored = self._r.get(SCHEMA_KEY)
        try:
            version = int(stored)
        except (TypeError, ValueError):
            raise StoreOpenError(f"redis store {self.address}: {SCHEMA_KEY} holds {stored!r}") from None
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"redis store {self.address}: layout version {version} is newer than this kvsim's "
                f"({SCHEMA_VERSION}); open it with a newer kvsim"
            )

    @staticmethod
    def meta_key(instance_id: str) -> str:
        """The hash that holds an instance's records."""
        return f"{META_PREFIX}{instance_id}{META_SUFFIX}"

    def registry_key(self, kind: str) -> str:
        """The hash that holds one kind of registry document."""
        return f"kvcache_registry:{self.cluster_name}:{kind}"

    def _decode(self, value: str) -> KeyRecord:
        try:
            created, last, hits, locations = value.split(" ", 3)
            return KeyRecord(self._codec.decode(locations), float(created), float(last), int(hits))
        except ValueError:
            raise StoreError(f"redis store {self.address}: corrupt meta record {value[:80]!r}") from None

    def _encode(self, key: int, record: KeyRecord) -> str:
        if not record.locations:
            raise StoreError("meta_write: a stored record needs at least one location")
        try:
            text = self._codec.encode(tuple(record.locations))
            # repr() of a float reads back exactly (Python and Lua's strtod alike).
            return (
                f"{float(record.created)!r} {float(record.last_access)!r} {int(record.access_count)} {text}"
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"meta_write: key {key}: record does not encode: {exc}") from None

    # ------------------------------------------------------------------------------- registry

    @_wrapped
    def registry_load(self) -> dict[str, dict[str, str]]:
        """Every document: one ``HGETALL`` per kind in one transaction (a consistent snapshot)."""
        pipe = self._r.pipeline(transaction=True)
        for kind in REGISTRY_KINDS:
            pipe.hgetall(self.registry_key(kind))
        return {kind: dict(docs) for kind, docs in zip(REGISTRY_KINDS, pipe.execute(), strict=True)}

    @_wrapped
    def registry_write(self, kind: str, upserts: Mapping[str, str], deletes: Collection[str] = ()) -> None:
        """``HDEL`` + ``HSET`` in one transaction."""
        if kind not in REGISTRY_KINDS:
            raise StoreError(f"kind: unknown registry kind {kind!r}")
        _check_batch(upserts, deletes)
        if not upserts and not deletes:
            return
        key = self.registry_key(kind)
        pipe = self._r.pipeline(transaction=True)
        if deletes:
            pipe.hdel(key, *deletes)
        if upserts:
            pipe.hset(key, mapping=dict(upserts))
        pipe.execute()

    @_wrapped
    def registry_replace(self, documents: Mapping[str, Mapping[str, str]]) -> None:
        """``DEL`` every kind and ``HSET`` the new documents in one transaction."""
        unknown = set(documents) - set(REGISTRY_KINDS)
        if unknown:
            raise StoreError(f"kind: unknown registry kind(s) {sorted(unknown)}")
        for docs in documents.values():
            _check_batch(docs, ())
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(*(self.registry_key(kind) for kind in REGISTRY_KINDS))
        for kind, docs in documents.items():
            if docs:
                pipe.hset(self.registry_key(kind), mapping=dict(docs))
        pipe.execute()

    # ------------------------------------------------------------------------------- meta

    @_wrapped
    def meta_get(self, instance_id: str, keys: Sequence[int]) -> list[KeyRecord | None]:
        """One ``HMGET``."""
        if not len(keys):
            return []
        values = self._r.hmget(self.meta_key(instance_id), [str(k) for k in keys])
        decode = self._decode
        return [None if v is None else decode(v) for v in values]

    @_wrapped
    def meta_write(
        self,
        instance_id: str,
        upserts: Mapping[int, KeyRecord],
        deletes: Collection[int] = (),
    ) -> None:
        """``HDEL`` + ``HSET`` in one ``MULTI``/``EXEC`` (a single command needs no transaction)."""
        _check_disjoint(upserts, deletes)
        mapping = {str(key): self._encode(key, rec) for key, rec in upserts.items()}
        key = self.meta_key(instance_id)
        if deletes and mapping:
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(key, *(str(k) for k in deletes))
            pipe.hset(key, mapping=mapping)
            pipe.execute()
        elif mapping:
            self._r.hset(key, mapping=mapping)
        elif deletes:
            self._r.hdel(key, *(str(k) for k in deletes))

    @_wrapped
    def meta_touch(self, instance_id: str, access: Mapping[int, tuple[float, int]]) -> None:
        """Merge statistics with the Lua script: one ``EVALSHA`` per 1,000 keys, all in one pipeline
        (separate scripts, so Redis serves other clients between them). If the server lost its script
        cache (a restart), every ``EVALSHA`` fails alike; the script is loaded and the pipeline sent again."""
        if not access:
            return
        key = self.meta_key(instance_id)
        items = list(access.items())
        batches: list[list[str]] = []
        for start in range(0, len(items), _TOUCH_BATCH):
            args: list[str] = []
            for k, (when, hits) in items[start : start + _TOUCH_BATCH]:
                args += (str(k), repr(float(when)), str(int(hits)))
            batches.append(args)
        for attempt in range(2):
            pipe = self._r.pipeline(transaction=False)
            for args in batches:
                pipe.evalsha(self._touch_sha, 1, key, *args)
            try:
                pipe.execute()
                return
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._touch_sha = self._r.script_load(_TOUCH_LUA)

    @_wrapped
    def meta_scan(self, instance_id: str, cursor: str, limit: int) -> tuple[list[int], str]:
        """``HSCAN``. The cursor is ``"<redis cursor>:<skip>"``: a small hash answers one HSCAN with every
        field whatever ``COUNT`` says, so a page may stop inside a reply; the next call repeats that
        HSCAN (the same reply while the hash is unchanged) and skips what was already returned."""
        if limit <= 0:
            raise StoreError(f"limit: must be > 0, got {limit}")
        try:
            redis_cursor, skip = (int(x) for x in cursor.split(":")) if cursor else (0, 0)
        except ValueError:
            raise StoreError(f"cursor: malformed cursor {cursor!r}") from None
        key = self.meta_key(instance_id)
        out: list[str] = []
        while True:
            next_cursor, fields = self._hscan(key, redis_cursor, limit)
            rest = fields[skip:]
            taken = rest[: limit - len(out)]
            out.extend(taken)
            if len(taken) < len(rest):
                return [int(k) for k in out], f"{redis_cursor}:{skip + len(taken)}"
            if next_cursor == 0:
                return [int(k) for k in out], ""
            redis_cursor, skip = next_cursor, 0
            if len(out) >= limit:
                return [int(k) for k in out], f"{redis_cursor}:0"

    def _hscan(self, key: str, cursor: int, count: int) -> tuple[int, list[str]]:
        """One ``HSCAN``: the next cursor and the field names."""
        if self._novalues:
            next_cursor, fields = self._r.hscan(key, cursor, count=count, no_values=True)
            return int(next_cursor), list(fields)
        next_cursor, pairs = self._r.hscan(key, cursor, count=count)
        return int(next_cursor), list(pairs)

    @_wrapped
    def meta_key_count(self, instance_id: str) -> int:
        """``HLEN``."""
        return int(self._r.hlen(self.meta_key(instance_id)))

    @_wrapped
    def meta_drop(self, instance_id: str) -> None:
        """``UNLINK`` the instance's hash (freed in the background by Redis)."""
        self._r.unlink(self.meta_key(instance_id))

    @_wrapped
    def meta_instances(self) -> list[str]:
        """``SCAN`` for the instances' hashes (Redis drops a hash when its last field goes)."""
        found = {
            name[len(META_PREFIX) : -len(META_SUFFIX)]
            for name in self._r.scan_iter(
                match=f"{META_PREFIX}*{META_SUFFIX}", count=_SCAN_COUNT, _type="hash"
            )
        }
        return sorted(found)

    @_wrapped
    def meta_sample(self, instance_id: str, count: int, rng: np.random.Generator) -> list[int]:
        """``HSCAN`` the instance's keys, sort them, then the common draw with ``rng``."""
        if count <= 0:
            return []
        key = self.meta_key(instance_id)
        keys: set[int] = set()  # HSCAN may repeat a field if the hash is resized during the scan
        cursor = 0
        while True:
            cursor, fields = self._hscan(key, cursor, _SCAN_COUNT)
            keys.update(int(k) for k in fields)
            if cursor == 0:
                return sample_sorted(sorted(keys), count, rng)

    @property
    def hiredis(self) -> bool:
        """Whether redis-py parses replies with hiredis (installed: ``pip install hiredis``)."""
        from redis.utils import HIREDIS_AVAILABLE

        return bool(HIREDIS_AVAILABLE)

    def close(self) -> None:
        """Close the pooled connections (idempotent); later calls raise :class:`StoreError`."""
        if not isinstance(self._r, _Closed):
            self._pool.disconnect()
            self._r = _Closed(self.address)

    def __repr__(self) -> str:
        return f"RedisStore({self.address!r}, cluster_name={self.cluster_name!r})"


def _check_disjoint(upserts: Mapping[Any, object], deletes: Collection[Any]) -> None:
    if deletes and not set(deletes).isdisjoint(upserts):
        raise StoreError("a name or key cannot be both upserted and deleted in one batch")


def _check_batch(upserts: Mapping[Any, object], deletes: Collection[Any]) -> None:
    _check_disjoint(upserts, deletes)
    for name, doc in upserts.items():
        if not isinstance(name, str) or not isinstance(doc, str):
            raise StoreError("registry documents are str -> str")
