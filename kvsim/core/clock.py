"""Clocks: the one place kvsim reads time.

Components never call ``time.time()`` themselves; they receive a :class:`Clock`. In simulation the clock
is a :class:`SimClock` over the event loop (anything with a ``.now`` attribute, such as a
``simpy.Environment``); in the live service it is a :class:`WallClock`. Tests use :class:`ManualClock`.
All clocks answer in seconds as a float.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything that can tell the current time in seconds."""

    def now(self) -> float:
        """Return the current time in seconds."""
        ...


class _HasNow(Protocol):
    @property
    def now(self) -> float: ...


class SimClock:
    """Simulated time read from an event loop's ``.now`` attribute (e.g. a simpy ``Environment``).

    ``kvsim.core`` does not import simpy: any object with a numeric ``now`` attribute will do.
    """

    __slots__ = ("_source",)

    def __init__(self, source: _HasNow) -> None:
        if not hasattr(source, "now"):
            raise TypeError("SimClock needs an object with a .now attribute")
        self._source = source

    def now(self) -> float:
        """Return the event loop's current time in seconds."""
        return float(self._source.now)


class WallClock:
    """Real time: seconds since the Unix epoch, as ``time.time()`` gives them."""

    __slots__ = ()

    def now(self) -> float:
        """Return the wall-clock time in seconds since the epoch."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to; for tests and for driving the cache by hand."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        """Return the time last set."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"seconds(={seconds}) must be >= 0")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``; time never goes backwards."""
        if now < self._now:
            raise ValueError(f"now(={now}) is before the current time {self._now}")
        self._now = float(now)
