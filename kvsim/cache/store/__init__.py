"""Stores for the registry and the meta index: the interface and the ``memory`` implementation.

``make_store("memory")`` builds a store by name; later issues register ``sqlite`` and ``redis``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvsim.cache.store.base import (
    REGISTRY_KINDS,
    CacheStore,
    KeyRecord,
    MetaStore,
    RegistryStore,
    StoredLocation,
    StoreError,
)
from kvsim.cache.store.memory import MemoryStore

_FACTORIES: dict[str, Callable[..., CacheStore]] = {"memory": MemoryStore}


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


__all__ = [
    "REGISTRY_KINDS",
    "CacheStore",
    "KeyRecord",
    "MemoryStore",
    "MetaStore",
    "RegistryStore",
    "StoreError",
    "StoredLocation",
    "make_store",
    "register_store",
]
