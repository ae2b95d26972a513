"""The deletion queue: locations marked DELETING that wait for their storage to be released.

The reference's ``SchedulePlanExecutor`` (study §4.3) runs deletions in a thread pool at
``now + delay``. Here the queue is plain data ordered by due time, and the manager's ``poll(now)`` takes
what is due (:meth:`DeletionQueue.pop_due`) and deletes it, so a simulation advances it with simulated
time and the service with its periodic task.

A location's life in the queue:

1. It is marked DELETING in the meta index (by the manager, at submission) and queued with a due time:
   ``now`` for failed or expired writes and for RemoveCache/TrimCache (delay 0, as the reference),
   ``now + delay_before_delete_ms`` for the reclaimer (a grace period for readers that already hold
   its URIs; a DELETING location is never handed out again).
2. When due, its URIs are released by their backends, then the location is dropped from the index.
3. A backend delete that fails keeps the location DELETING and queued again with a growing back-off
   (:func:`retry_delay`); URIs already released are remembered (:attr:`Pending.released`) so a retry
   never releases a block twice. Nothing is dropped silently: failures are counted in the metrics.

The queue lives in memory; after a restart the manager rebuilds it from the DELETING locations of the
index, which is why a location leaves the index only after its storage is gone.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

#: First retry of a failed storage delete after this many seconds; doubled per failure up to the cap.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0


def retry_delay(attempts: int, base: float = RETRY_BASE_S, cap: float = RETRY_MAX_S) -> float:
    """Seconds to wait before retry number ``attempts`` (1 = first retry): ``base * 2**(attempts-1)``
    capped at ``cap``."""
    if attempts <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(attempts - 1, 62))


@dataclass(slots=True)
class Pending:
    """Queued locations of one block key.

    Attributes:
        location_ids: the locations to delete.
        due: when they may be deleted (seconds, the manager's clock).
        attempts: storage deletes that failed so far.
        released: location id -> URIs its backend already released (kept across retries).
        reclaimed: location ids submitted by the reclaimer (for its metrics).
    """

    location_ids: set[str]
    due: float
    attempts: int = 0
    released: dict[str, set[str]] = field(default_factory=dict)
    reclaimed: set[str] = field(default_factory=set)


class DeletionQueue:
    """Pending deletions by instance and block key, ordered by due time (earliest first, then by
    submission order)."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[int, Pending]] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._locations = 0

    def __len__(self) -> int:
        """Locations queued."""
        return self._locations

    def _push(self, instance_id: str, key: int, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, instance_id, key))

    def submit(
        self,
        instance_id: str,
        doomed: Mapping[int, Iterable[str]],
        due: float,
        *,
        reclaimed: bool = False,
    ) -> None:
        """Queue the locations ``{key: location ids}`` of one instance to be deleted at ``due``.

        A key already queued keeps one entry: its location ids are merged and the earlier due time wins.
        """
        table = self._pending.setdefault(instance_id, {})
        for key, ids in doomed.items():
            ids = set(ids)
            if not ids:
                continue
            entry = table.get(key)
            if entry is None:
                entry = table[key] = Pending(set(), due)
                self._push(instance_id, key, due)
            elif due < entry.due:
                entry.due = due
                self._push(instance_id, key, due)
            new = ids - entry.location_ids
            self._locations += len(new)
            entry.location_ids |= ids
            if reclaimed:
                entry.reclaimed |= new
        if not table:
            del self._pending[instance_id]

    def requeue(self, instance_id: str, key: int, entry: Pending) -> None:
        """Put back an entry taken by :meth:`pop_due` (its ``due`` set by the caller); merged with any
        entry submitted for the key meanwhile."""
        if not entry.location_ids:
            return
        table = self._pending.setdefault(instance_id, {})
        current = table.get(key)
        if current is None:
            table[key] = entry
            self._locations += len(entry.location_ids)
            self._push(instance_id, key, entry.due)
            return
        new = entry.location_ids - current.location_ids
        self._locations += len(new)
        current.location_ids |= entry.location_ids
        current.reclaimed |= entry.reclaimed
        current.attempts = max(current.attempts, entry.attempts)
        for loc_id, uris in entry.released.items():
            current.released.setdefault(loc_id, set()).update(uris)
        if entry.due < current.due:
            current.due = entry.due
            self._push(instance_id, key, entry.due)

    def pop_due(self, now: float) -> dict[str, dict[int, Pending]]:
        """Take every entry due at or before ``now``: ``{instance: {key: entry}}``."""
        out: dict[str, dict[int, Pending]] = {}
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, instance_id, key = heapq.heappop(heap)
            table = self._pending.get(instance_id)
            entry = None if table is None else table.get(key)
            if entry is None or entry.due != due:
                continue  # stale: taken already, or moved to an earlier time
            del table[key]  # type: ignore[union-attr]
            if not table:
                del self._pending[instance_id]
            self._locations -= len(entry.location_ids)
            out.setdefault(instance_id, {})[key] = entry
        return out

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing is queued."""
        heap = self._heap
        while heap:
            due, _, instance_id, key = heap[0]
            entry = self._pending.get(instance_id, {}).get(key)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(heap)
        return None

    def of_instance(self, instance_id: str) -> Mapping[int, Pending]:
        """The queued entries of one instance (read only; for the reclaimer's credit)."""
        return self._pending.get(instance_id, {})

    def drop_instance(self, instance_id: str) -> int:
        """Forget every entry of an instance (its index was dropped); return the locations forgotten."""
        table = self._pending.pop(instance_id, {})
        dropped = sum(len(e.location_ids) for e in table.values())
        self._locations -= dropped
        return dropped

    def items(self) -> Iterator[tuple[str, int, Pending]]:
        """Every queued ``(instance, key, entry)``."""
        for instance_id, table in self._pending.items():
            for key, entry in table.items():
                yield instance_id, key, entry


__all__ = ["RETRY_BASE_S", "RETRY_MAX_S", "DeletionQueue", "Pending", "retry_delay"]
