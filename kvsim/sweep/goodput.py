"""Goodput: the highest request rate at which a configuration still meets its SLOs, found by bisection.

This is Vidur-Search's capacity search (a binary search for the highest QPS under TTFT-P90 and TBT-P99
SLOs) made explicit as a small state machine, so that the sweep can run the probes of many
configurations at once and resume a half-done search from the runs already on disk:

1. probe ``low``; if the SLOs fail there, the goodput is 0 (status ``none``) and the search stops;
2. probe ``high``; if the SLOs hold there, the goodput is at least ``high`` (status ``capped``);
3. otherwise bisect between the highest rate that met the SLOs and the lowest that did not, at their
   geometric mean (rates span orders of magnitude, so the mean is taken in log space), until the two
   are within ``tolerance`` of each other (relative) or ``max_steps`` probes have run.

The goodput is the highest probed rate that met the SLOs. Bisection assumes the SLO metrics grow with
the rate; where they do not (noise in a small workload) the answer is still a rate that met them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvsim.core.errors import ConfigError

GOODPUT_KEYS = ("low", "high", "tolerance", "max_steps")
#: Probed rates keep this many significant digits, so that tables read well and run keys are stable.
RATE_DIGITS = 6


def round_rate(rate: float) -> float:
    """``rate`` to :data:`RATE_DIGITS` significant digits."""
    return float(f"{rate:.{RATE_DIGITS}g}")


@dataclass(frozen=True, slots=True)
class GoodputSpec:
    """The ``sweep.goodput`` section: the rate range (requests/s) and when to stop bisecting."""

    low: float
    high: float
    tolerance: float = 0.05
    max_steps: int = 8


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def parse_goodput(data: Any) -> GoodputSpec | None:
    """Parse ``sweep.goodput`` (None when absent).

    Raises:
        ConfigError: an unknown key (naming the valid ones), ``low >= high``, a tolerance that is not
            positive, or fewer than 2 steps.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigError("sweep.goodput: expected a mapping such as {low: 0.1, high: 16}")
    unknown = sorted(set(data) - set(GOODPUT_KEYS))
    if unknown:
        raise ConfigError(f"sweep.goodput: unknown key {unknown[0]!r}; valid: {', '.join(GOODPUT_KEYS)}")
    for key in ("low", "high"):
        if key not in data:
            raise ConfigError(f"sweep.goodput.{key}: required (requests/s)")
    low = round_rate(_positive(data["low"], "sweep.goodput.low"))
    high = round_rate(_positive(data["high"], "sweep.goodput.high"))
    if not low < high:
        raise ConfigError(f"sweep.goodput: low ({low:g}) must be below high ({high:g})")
    tolerance = _positive(data.get("tolerance", 0.05), "sweep.goodput.tolerance")
    steps = data.get("max_steps", 8)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"sweep.goodput.max_steps: expected an integer >= 2, got {steps!r}")
    return GoodputSpec(low, high, tolerance, steps)


@dataclass(slots=True)
class GoodputSearch:
    """One configuration's bisection: ask :meth:`next_rate`, run it, tell :meth:`record` the outcome."""

    spec: GoodputSpec
    probes: list[tuple[float, bool]] = field(default_factory=list)
    #: highest rate that met the SLOs / lowest that did not (None until known)
    lo: float | None = None
    hi: float | None = None
    #: ``ok`` (bracketed), ``capped`` (met at ``high``), ``none`` (missed at ``low``); None while running
    status: str | None = None

    @property
    def done(self) -> bool:
        """Whether the search has its answer."""
        return self.status is not None

    @property
    def goodput(self) -> float | None:
        """The answer (requests/s): 0 for ``none``; None while the search runs."""
        if self.status is None:
            return None
        return 0.0 if self.status == "none" else self.lo

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when done."""
        if self.done:
            return None
        if not self.probes:
            return self.spec.low
        if len(self.probes) == 1:
            return self.spec.high
        assert self.lo is not None and self.hi is not None
        return round_rate(math.sqrt(self.lo * self.hi))

    def record(self, rate: float, met: bool) -> None:
        """Take the outcome of the probe at ``rate`` (as returned by :meth:`next_rate`)."""
        if self.done:
            raise RuntimeError("the goodput search is already done")
        self.probes.append((rate, met))
        if len(self.probes) == 1:
            if not met:
                self.status = "none"
                return
            self.lo = rate
            return
        if len(self.probes) == 2:
            if met:
                self.lo = rate
                self.status = "capped"
                return
            self.hi = rate
        elif met:
            self.lo = rate
        else:
            self.hi = rate
        assert self.lo is not None and self.hi is not None
        mid = round_rate(math.sqrt(self.lo * self.hi))
        # Stop when bracketed tightly enough, out of steps, or when rounding leaves no rate in between.
        if (
            self.hi <= self.lo * (1.0 + self.spec.tolerance)
            or len(self.probes) >= self.spec.max_steps
            or mid in (self.lo, self.hi)
        ):
            self.status = "ok"
