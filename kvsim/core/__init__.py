"""Shared primitives every kvsim layer builds on: clocks, seeded randomness, id counters, errors, units.

``kvsim.core`` imports nothing from the rest of kvsim and no third-party package but numpy, so every
other layer (including the simpy-free ``kvsim.cache``) may depend on it.
"""

from kvsim.core.clock import Clock, ManualClock, SimClock, WallClock
from kvsim.core.errors import ConfigError, KvsimError, NotSupportedError, UserInputError
from kvsim.core.ids import IdCounter
from kvsim.core.rng import make_rng, spawn_rng
from kvsim.core.timer import FixedTimer, PerfTimer, Timer

__all__ = [
    "Clock",
    "ConfigError",
    "FixedTimer",
    "IdCounter",
    "KvsimError",
    "ManualClock",
    "NotSupportedError",
    "PerfTimer",
    "SimClock",
    "Timer",
    "UserInputError",
    "WallClock",
    "make_rng",
    "spawn_rng",
]
