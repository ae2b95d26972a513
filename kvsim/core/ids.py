"""Per-run id counters: ids restart at the same value in every run, never shared across runs."""

from __future__ import annotations


class IdCounter:
    """A monotonically increasing integer id source owned by one run (or one component of it)."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def next(self) -> int:
        """Return the next id."""
        value = self._next
        self._next += 1
        return value

    def peek(self) -> int:
        """Return the id that :meth:`next` would hand out, without consuming it."""
        return self._next
