"""Stores for the registry and the meta index: the interface and three implementations.

``memory`` (the simulator's default: dicts, nothing persisted), ``sqlite`` (the service's default: one
durable file in the data directory) and ``redis`` (shared by a leader and its standbys).

``make_store(name, **options)`` builds a store by name; :func:`open_store` builds one from the URI a
user writes (``memory``, ``sqlite``, ``sqlite:///path/to/file.db``, ``redis://[auth@]host:port?...``).
Both raise :class:`StoreOpenError` at once when the store cannot be opened: there is no silent fallback
to the memory store. The Redis module (and redis-py) is imported only when a redis store is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from kvsim.cache.store.base import (
    REGISTRY_KINDS,
    CacheStore,
    KeyRecord,
    MetaStore,
    RegistryStore,
    StoredLocation,
    StoreError,
    StoreOpenError,
    sample_sorted,
)
from kvsim.cache.store.memory import MemoryStore
from kvsim.cache.store.sqlite import SqliteStore


def _redis_store(**options: Any) -> CacheStore:
    """Build a :class:`~kvsim.cache.store.redis.RedisStore`, importing redis-py only now."""
    try:
        from kvsim.cache.store.redis import RedisStore
    except ImportError as exc:
        raise StoreOpenError(f"redis store: needs redis-py (pip install 'kvsim[all]'): {exc}") from None
    return RedisStore(**options)


_FACTORIES: dict[str, Callable[..., CacheStore]] = {
    "memory": MemoryStore,
    "sqlite": SqliteStore,
    "redis": _redis_store,
}
_SQLITE_OPTIONS = {"synchronous": str, "busy_timeout_ms": int, "decode_cache": int}


def register_store(name: str, factory: Callable[..., CacheStore]) -> None:
    """Make ``factory`` available to :func:`make_store` under ``name``."""
    _FACTORIES[name] = factory


def make_store(name: str, **options: Any) -> CacheStore:
    """Build the store registered as ``name`` with ``options``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"meta_store: unknown store {name!r} (known: {sorted(_FACTORIES)})") from None
    return factory(**options)


def open_store(uri: str, *, data_dir: str | Path | None = None) -> CacheStore:
    """Open the store a URI names.

    * ``memory``: a :class:`MemoryStore`.
    * ``sqlite``: ``<data_dir>/kvsim-meta.db``; ``sqlite:///abs/path.db`` or ``sqlite://rel/path.db``:
      that file. Options as query parameters: ``synchronous`` (``normal``/``full``),
      ``busy_timeout_ms``, ``decode_cache``.
    * ``redis://[auth@]host:port?timeout_ms=...``: a Redis store (see :mod:`kvsim.cache.store.redis`).

    Raises:
        StoreOpenError: an unknown scheme, a bad option, or a store that cannot be opened.
    """
    if not isinstance(uri, str):
        raise StoreOpenError(f"meta store: URI must be a string, got {type(uri).__name__}")
    text = uri.strip()
    if text in ("memory", "memory://"):
        return make_store("memory")
    if text == "sqlite" or text.startswith("sqlite://"):
        path, _, query = text.removeprefix("sqlite").removeprefix("://").partition("?")
        options: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            kind = _SQLITE_OPTIONS.get(key)
            if kind is None:
                raise StoreOpenError(
                    f"meta store {uri!r}: unknown option {key!r} (known: {sorted(_SQLITE_OPTIONS)})"
                )
            try:
                options[key] = kind(value)
            except ValueError:
                raise StoreOpenError(
                    f"meta store {uri!r}: option {key}={value!r} is not a {kind.__name__}"
                ) from None
        if path:
            return make_store("sqlite", path=path, **options)
        if data_dir is None:
            raise StoreOpenError(f"meta store {uri!r}: give a file path or a data directory")
        return make_store("sqlite", data_dir=data_dir, **options)
    if text.startswith(("redis://", "rediss://")):
        return make_store("redis", uri=text)
    raise StoreOpenError(
        f"meta store {uri!r}: unknown kind; use memory, sqlite, sqlite:///path/to/file.db or "
        "redis://[auth@]host:port"
    )


__all__ = [
    "REGISTRY_KINDS",
    "CacheStore",
    "KeyRecord",
    "MemoryStore",
    "MetaStore",
    "RegistryStore",
    "SqliteStore",
    "StoreError",
    "StoreOpenError",
    "StoredLocation",
    "make_store",
    "open_store",
    "register_store",
    "sample_sorted",
]
