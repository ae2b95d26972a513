"""The ``memory`` store: dictionaries in this process, nothing persisted.

The default for simulation. Records are immutable, so they are kept by reference (no copies); batches
are checked before any change is made, which makes every write atomic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np

from kvsim.cache.store.base import REGISTRY_KINDS, CacheStore, KeyRecord, StoreError, sample_sorted


class MemoryStore(CacheStore):
    """Registry documents and meta records in plain dicts."""

    name = "memory"

    def __init__(self) -> None:
        self._registry: dict[str, dict[str, str]] = {kind: {} for kind in REGISTRY_KINDS}
        self._meta: dict[str, dict[int, KeyRecord]] = {}

    # ----------------------------------------------------------------------- registry

    def registry_load(self) -> dict[str, dict[str, str]]:
        """Return a copy of every document."""
        return {kind: dict(docs) for kind, docs in self._registry.items()}

    def registry_write(self, kind: str, upserts: Mapping[str, str], deletes: Collection[str] = ()) -> None:
        """Apply the batch to one kind."""
        docs = self._registry.get(kind)
        if docs is None:
            raise StoreError(f"kind: unknown registry kind {kind!r}")
        _check_disjoint(upserts, deletes)
        for name, doc in upserts.items():
            if not isinstance(name, str) or not isinstance(doc, str):
                raise StoreError("registry documents are str -> str")
        for name in deletes:
            docs.pop(name, None)
        docs.update(upserts)

    def registry_replace(self, documents: Mapping[str, Mapping[str, str]]) -> None:
        """Replace every document."""
        unknown = set(documents) - set(REGISTRY_KINDS)
        if unknown:
            raise StoreError(f"kind: unknown registry kind(s) {sorted(unknown)}")
        self._registry = {kind: dict(documents.get(kind, {})) for kind in REGISTRY_KINDS}

    # ----------------------------------------------------------------------- meta

    def meta_get(self, instance_id: str, keys: Sequence[int]) -> list[KeyRecord | None]:
        """Look the keys up."""
        table = self._meta.get(instance_id)
        if table is None:
            return [None] * len(keys)
        get = table.get
        return [get(k) for k in keys]

    def meta_write(
        self,
        instance_id: str,
        upserts: Mapping[int, KeyRecord],
        deletes: Collection[int] = (),
    ) -> None:
        """Apply the batch."""
        _check_disjoint(upserts, deletes)
        for record in upserts.values():
            if not record.locations:
                raise StoreError("meta_write: a stored record needs at least one location")
        table = self._meta.get(instance_id)
        if table is None:
            if not upserts:
                return
            table = self._meta[instance_id] = {}
        for key in deletes:
            table.pop(key, None)
        table.update(upserts)
        if not table:
            del self._meta[instance_id]

    def meta_touch(self, instance_id: str, access: Mapping[int, tuple[float, int]]) -> None:
        """Merge access statistics into existing records."""
        table = self._meta.get(instance_id)
        if table is None:
            return
        for key, (when, hits) in access.items():
            rec = table.get(key)
            if rec is not None:
                table[key] = KeyRecord(
                    rec.locations, rec.created, max(rec.last_access, when), rec.access_count + hits
                )

    def meta_scan(self, instance_id: str, cursor: str, limit: int) -> tuple[list[int], str]:
        """Page through keys in insertion order; the cursor is the position reached."""
        if limit <= 0:
            raise StoreError(f"limit: must be > 0, got {limit}")
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise StoreError(f"cursor: malformed cursor {cursor!r}") from None
        table = self._meta.get(instance_id, {})
        keys = list(islice(table, start, start + limit))
        end = start + len(keys)
        return keys, (str(end) if end < len(table) else "")

    def meta_key_count(self, instance_id: str) -> int:
        """Number of keys of the instance."""
        return len(self._meta.get(instance_id, ()))

    def meta_drop(self, instance_id: str) -> None:
        """Forget the instance's keys."""
        self._meta.pop(instance_id, None)

    def meta_instances(self) -> list[str]:
        """Instances with keys."""
        return sorted(self._meta)

    def meta_sample(self, instance_id: str, count: int, rng: np.random.Generator) -> list[int]:
        """The base class's draw over ``sorted(table)`` (no scan; same keys as every other store)."""
        table = self._meta.get(instance_id)
        if not table or count <= 0:
            return []
        return sample_sorted(sorted(table), count, rng)


def _check_disjoint(upserts: Mapping[Any, object], deletes: Collection[Any]) -> None:
    if deletes and not set(deletes).isdisjoint(upserts):
        raise StoreError("a name or key cannot be both upserted and deleted in one batch")
