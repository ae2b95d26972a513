"""Injectable timers for measuring how long work takes (metrics, probes).

A timer is separate from a :class:`~kvsim.core.clock.Clock`: the clock says what time it is in the
modelled world, the timer measures elapsed wall time of real code. ``kvsim.cache`` records latency
metrics through an injected timer so that tests (and simulations) can use a deterministic one.
"""

from __future__ import annotations

import time
from typing import Protocol


class Timer(Protocol):
    """A monotonic stopwatch source in seconds."""

    def monotonic(self) -> float:
        """Return a monotonic time in seconds (only differences are meaningful)."""
        ...


class PerfTimer:
    """The real monotonic high-resolution timer."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Return ``time.perf_counter()``."""
        return time.perf_counter()


class FixedTimer:
    """A deterministic timer that advances by a fixed step on every read (for tests and simulation)."""

    __slots__ = ("_now", "_step")

    def __init__(self, step: float = 0.0) -> None:
        self._now = 0.0
        self._step = float(step)

    def monotonic(self) -> float:
        """Return the current reading, then advance it by the step."""
        value = self._now
        self._now += self._step
        return value
