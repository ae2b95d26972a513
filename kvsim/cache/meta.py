"""The meta index of one instance: block key -> locations, over a :class:`~kvsim.cache.store.MetaStore`.

:class:`InstanceIndex` adds what the store does not keep cheaply:

* running counters (key count, bytes per storage type) for quota checks, recounted from the store when
  the index is opened, so they survive a restart (the reference's per-type counters do not);
* read-access statistics buffered in memory and merged into the store lazily (:meth:`flush_access`),
  so a prefix match costs one store read and no write.

Changes are committed as ``{key: (old_record, new_record_or_None)}``: one atomic store write, after which
the counters move by the difference between old and new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kvsim.cache.store.base import KeyRecord, MetaStore
from kvsim.cache.types import StorageType

_SCAN_BATCH = 4096

Change = tuple[KeyRecord | None, KeyRecord | None]


def _usage(record: KeyRecord | None, out: dict[StorageType, int], sign: int) -> None:
    if record is None:
        return
    for loc in record.locations:
        t = loc.location.type
        out[t] = out.get(t, 0) + sign * loc.size_bytes


class InstanceIndex:
    """Meta index of one instance.

    Args:
        store: where records live.
        instance_id: the instance (the store namespace).
    """

    def __init__(self, store: MetaStore, instance_id: str) -> None:
        self._store = store
        self.instance_id = instance_id
        self._pending: dict[int, list[float | int]] = {}  # key -> [last_access, hits since flush]
        self.key_count = 0
        self.usage_bytes: dict[StorageType, int] = {}
        self.recount()

    def recount(self) -> None:
        """Recompute the key count and per-type bytes from the store."""
        usage: dict[StorageType, int] = {}
        count = 0
        for keys in self.scan():
            for rec in self._store.meta_get(self.instance_id, keys):
                if rec is not None:
                    count += 1
                    _usage(rec, usage, 1)
        self.key_count = count
        self.usage_bytes = usage

    def get(self, keys: Sequence[int]) -> list[KeyRecord | None]:
        """Records of ``keys`` (one store read)."""
        return self._store.meta_get(self.instance_id, keys)

    def scan(self, batch: int = _SCAN_BATCH) -> Iterable[list[int]]:
        """Yield every key of the instance in ascending batches (do not commit while iterating).

        Every key is collected before the first batch is yielded and the keys are sorted: each store
        pages in its own order (insertion, B-tree, Redis hash order), and what the callers derive from
        the order (deletion queues, events, backend bookkeeping) must not depend on the store.
        """
        found: set[int] = set()  # a set: a store scan may repeat a key
        cursor = ""
        while True:
            keys, cursor = self._store.meta_scan(self.instance_id, cursor, batch)
            found.update(keys)
            if not cursor:
                break
        ordered = sorted(found)
        for start in range(0, len(ordered), batch):
            yield ordered[start : start + batch]

    def all_keys(self) -> list[int]:
        """Every key of the instance."""
        out: list[int] = []
        for keys in self.scan():
            out.extend(keys)
        return out

    def commit(
        self,
        changes: Mapping[int, Change],
        usage_delta: Mapping[StorageType, int] | None = None,
    ) -> None:
        """Apply ``{key: (old, new)}`` in one atomic store write (``new=None`` deletes the key).

        Args:
            changes: the old and new record of every key touched.
            usage_delta: bytes added per storage type, when the caller already knows it (e.g. ``{}``
                for status-only changes); computed from the records when None.

        Raises:
            StoreError: from the store; nothing was applied and the counters are unchanged.
        """
        if not changes:
            return
        upserts = {key: new for key, (_, new) in changes.items() if new is not None}
        deletes = [key for key, (old, new) in changes.items() if new is None and old is not None]
        created = sum(1 for old, new in changes.values() if old is None and new is not None) - len(deletes)
        if usage_delta is None:
            delta: dict[StorageType, int] = {}
            for old, new in changes.values():
                _usage(old, delta, -1)
                _usage(new, delta, 1)
        else:
            delta = dict(usage_delta)
        self._store.meta_write(self.instance_id, upserts, deletes)
        self.key_count += created
        for t, d in delta.items():
            if d:
                self.usage_bytes[t] = self.usage_bytes.get(t, 0) + d
        for key in deletes:
            self._pending.pop(key, None)

    def touch(self, keys: Iterable[int], now: float) -> None:
        """Record a read hit of each key at ``now`` (buffered until :meth:`flush_access`)."""
        pending = self._pending
        for key in keys:
            slot = pending.get(key)
            if slot is None:
                pending[key] = [now, 1]
            else:
                slot[0] = now
                slot[1] += 1

    def last_access(self, key: int, record: KeyRecord) -> float:
        """The key's last access including buffered reads."""
        slot = self._pending.get(key)
        return record.last_access if slot is None else max(record.last_access, slot[0])

    def access_count(self, key: int, record: KeyRecord) -> int:
        """The key's read hits including buffered reads."""
        slot = self._pending.get(key)
        return record.access_count + (0 if slot is None else int(slot[1]))

    def flush_access(self) -> int:
        """Merge buffered access statistics into the store; return how many keys were written."""
        if not self._pending:
            return 0
        access = {k: (float(v[0]), int(v[1])) for k, v in self._pending.items()}
        self._store.meta_touch(self.instance_id, access)
        self._pending.clear()
        return len(access)

    def drop(self) -> None:
        """Remove every key of the instance from the store and reset the counters."""
        self._store.meta_drop(self.instance_id)
        self._pending.clear()
        self.key_count = 0
        self.usage_bytes = {}
