"""Write sessions of the two-phase write, with deadlines acted on by ``poll``.

StartWriteCache opens a session naming the locations it allocated (all WRITING); FinishWriteCache closes
it. A session whose deadline has passed is expired by :meth:`SessionTable.pop_due`, which the manager's
``poll(now)`` calls; the manager then treats every block of it as failed. Sessions live in memory only:
after a restart their WRITING locations are turned into deletions (see ``CacheManager``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WriteSession:
    """One open write.

    Attributes:
        session_id: 32 random ``[a-z0-9]`` characters.
        instance_id: the writing instance.
        keys: the block keys that got a location, in the order of the returned locations.
        location_ids: the id of each key's new location.
        deadline: time (seconds) at which the session expires.
    """

    session_id: str
    instance_id: str
    keys: tuple[int, ...]
    location_ids: tuple[str, ...]
    deadline: float


class SessionTable:
    """Open sessions by id plus a min-heap of deadlines (entries of closed sessions are skipped lazily)."""

    def __init__(self) -> None:
        self._sessions: dict[str, WriteSession] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def add(self, session: WriteSession) -> None:
        """Open ``session`` (its id must be new)."""
        if session.session_id in self._sessions:
            raise ValueError(f"write_session_id: {session.session_id!r} is already open")
        self._sessions[session.session_id] = session
        self._seq += 1
        heapq.heappush(self._deadlines, (session.deadline, self._seq, session.session_id))

    def get(self, session_id: str) -> WriteSession | None:
        """The open session with this id, or None."""
        return self._sessions.get(session_id)

    def pop(self, session_id: str) -> WriteSession | None:
        """Close and return the session (None if not open)."""
        session = self._sessions.pop(session_id, None)
        if not self._sessions:
            self._deadlines.clear()  # everything left in the heap is stale
        return session

    def pop_due(self, now: float) -> list[WriteSession]:
        """Close and return every session with ``deadline < now``, earliest first."""
        due: list[WriteSession] = []
        heap = self._deadlines
        while heap and heap[0][0] < now:
            deadline, _, sid = heapq.heappop(heap)
            session = self._sessions.get(sid)
            if session is not None and session.deadline == deadline:
                del self._sessions[sid]
                due.append(session)
        return due

    def next_deadline(self) -> float | None:
        """The earliest deadline of an open session, or None when none is open."""
        heap = self._deadlines
        while heap and heap[0][2] not in self._sessions:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def of_instance(self, instance_id: str) -> list[WriteSession]:
        """Open sessions of one instance, in opening order."""
        return [s for s in self._sessions.values() if s.instance_id == instance_id]

    def all(self) -> list[WriteSession]:
        """Every open session, in opening order."""
        return list(self._sessions.values())
