"""The store interface: where the registry and the per-instance meta index are kept.

One :class:`CacheStore` object holds both halves:

Registry documents
    Four *kinds* (``storage``, ``instance_group``, ``instance``, ``account``), each a map from a name to
    a JSON document (the :mod:`kvsim.cache.codec` encoding of the object). The store never parses them.

Meta index
    Per instance, block key (signed int64) -> :class:`KeyRecord`: the key's locations, each with a
    status (WRITING / SERVING / DELETING), plus access statistics.

Batching rule: every method takes or returns a whole batch, and a :class:`~kvsim.cache.manager.
CacheManager` operation makes one read call and at most one write call per instance, so a networked
store (SQLite, Redis) costs one round trip per operation, not one per key. Writes are atomic: either the
whole batch is applied or (on :class:`StoreError`) none of it is.

Records are ``NamedTuple``s rather than frozen dataclasses: they are built on every write (several per
key), and a named tuple is about twice as cheap to create while just as immutable.

Implementations must pass the reusable contract suite in ``tests/cache/store_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from kvsim.cache.types import CacheLocation, LocationStatus
from kvsim.core.errors import ConfigError, KvsimError

REGISTRY_KINDS: tuple[str, ...] = ("storage", "instance_group", "instance", "account")


class StoreError(KvsimError):
    """The store could not carry out a read or write (the batch was not applied)."""


class StoreOpenError(StoreError, ConfigError):
    """A store cannot be opened: a bad URI or path, a server that does not answer, a file that is not
    a kvsim store or whose schema is newer than this kvsim. Raised at start, in one line; kvsim never
    falls back to the memory store."""


class StoredLocation(NamedTuple):
    """One location of a block key as the meta index keeps it (an immutable record).

    Attributes:
        location_id: 8 random ``[a-z0-9]`` characters, unique within the key.
        status: WRITING, SERVING or DELETING.
        location: what clients are given (type, spec count, spec names and URIs).
        storage_name: the storage (``global_unique_name``) that holds it; also every URI's host.
        size_bytes: bytes of all its specs together (for per-type usage).
    """

    location_id: str
    status: LocationStatus
    location: CacheLocation
    storage_name: str
    size_bytes: int

    def with_status(self, status: LocationStatus) -> StoredLocation:
        """A copy with another status."""
        return StoredLocation(self.location_id, status, self.location, self.storage_name, self.size_bytes)


class KeyRecord(NamedTuple):
    """Everything stored for one block key (an immutable record).

    Attributes:
        locations: the key's locations in the order they were added (never empty in a stored record).
        created: time the key was first written (seconds, the manager's clock).
        last_access: last read hit or write of the key.
        access_count: number of read hits.
    """

    locations: tuple[StoredLocation, ...]
    created: float
    last_access: float
    access_count: int = 0


class RegistryStore(ABC):
    """Storage of the registry documents (see the module docstring)."""

    @abstractmethod
    def registry_load(self) -> dict[str, dict[str, str]]:
        """Return every document: ``{kind: {name: json}}`` with all :data:`REGISTRY_KINDS` present."""

    @abstractmethod
    def registry_write(self, kind: str, upserts: Mapping[str, str], deletes: Collection[str] = ()) -> None:
        """Atomically put ``upserts`` and remove ``deletes`` (missing names are ignored) in ``kind``.

        Raises:
            StoreError: unknown kind or a name both upserted and deleted; nothing is applied.
        """

    @abstractmethod
    def registry_replace(self, documents: Mapping[str, Mapping[str, str]]) -> None:
        """Atomically replace every document by ``documents`` (kinds left out become empty)."""


class MetaStore(ABC):
    """Storage of the per-instance meta index (see the module docstring)."""

    @abstractmethod
    def meta_get(self, instance_id: str, keys: Sequence[int]) -> list[KeyRecord | None]:
        """Return the record of each key (None when absent), in the order of ``keys``."""

    @abstractmethod
    def meta_write(
        self,
        instance_id: str,
        upserts: Mapping[int, KeyRecord],
        deletes: Collection[int] = (),
    ) -> None:
        """Atomically put ``upserts`` (whole records) and remove ``deletes`` (missing keys ignored).

        Raises:
            StoreError: a key both upserted and deleted, or an upsert with no locations; nothing applied.
        """

    @abstractmethod
    def meta_touch(self, instance_id: str, access: Mapping[int, tuple[float, int]]) -> None:
        """Merge access statistics: for each existing key ``k`` with ``(t, hits)``, set
        ``last_access = max(last_access, t)`` and add ``hits`` to ``access_count``; absent keys are skipped.
        """

    @abstractmethod
    def meta_scan(self, instance_id: str, cursor: str, limit: int) -> tuple[list[int], str]:
        """Return up to ``limit`` keys after ``cursor`` ("" = start) and the next cursor ("" = done).

        Every key present for the whole scan is returned exactly once if the instance is not written
        to during the scan; ``limit`` must be > 0.
        """

    @abstractmethod
    def meta_key_count(self, instance_id: str) -> int:
        """Number of keys stored for the instance."""

    @abstractmethod
    def meta_drop(self, instance_id: str) -> None:
        """Remove every key of the instance."""

    @abstractmethod
    def meta_instances(self) -> list[str]:
        """Ids of the instances that have at least one key, sorted."""

    def meta_sample(self, instance_id: str, count: int, rng: np.random.Generator) -> list[int]:
        """Up to ``count`` distinct keys of the instance drawn uniformly with ``rng`` (every key when it
        has no more than ``count``), for the reclaimer; ascending.

        Every store returns the same keys for the same key set and generator state: the candidates are
        sorted by key before ``rng`` picks positions (see :func:`sample_sorted`), so the store's own
        scan order (insertion order, B-tree order, Redis hash order) never decides the victims. This
        default pages through :meth:`meta_scan` (Redis: HSCAN, never RANDOMKEY); a store may override
        it with anything that returns the same list.
        """
        if count <= 0:
            return []
        keys: set[int] = set()  # a set: a scan racing with writes may repeat a key
        cursor = ""
        while True:
            page, cursor = self.meta_scan(instance_id, cursor, 4096)
            keys.update(page)
            if not cursor:
                return sample_sorted(sorted(keys), count, rng)


def sample_sorted(keys: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
    """Pick ``count`` of the ascending ``keys`` uniformly without replacement; ascending.

    ``rng`` is used only when there is a choice (``len(keys) > count``): one
    ``rng.choice(len(keys), count, replace=False)``, so two stores holding the same keys consume the
    generator identically.
    """
    if count <= 0:
        return []
    if len(keys) <= count:
        return list(keys)
    picked = np.sort(rng.choice(len(keys), size=count, replace=False))
    return [keys[i] for i in picked.tolist()]


class CacheStore(RegistryStore, MetaStore):
    """A store for both the registry and the meta index; ``close`` releases its resources."""

    name: str = "abstract"

    def close(self) -> None:
        """Release connections or files; the store must not be used afterwards."""
