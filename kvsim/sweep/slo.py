"""Service-level objectives: bounds on a run's ``bench_serving`` metrics.

The ``slo:`` section maps a metric name to a bound::

    slo:
      p90_ttft_ms: 2 s          # <= 2000 ms; a bare number is in the metric's own unit
      p90_tpot_ms: 50           # <= 50 ms
      cache_hit_rate: {min: 0.3}

A bare bound is an upper bound (``<=``); ``{max: X}`` says so explicitly and ``{min: X}`` gives a lower
bound. A time with a unit (``"2 s"``, ``"150 ms"``) is converted to milliseconds for ``*_ms`` metrics.
This is Vidur-Search's definition (SLOs on percentiles of the whole run, e.g. TTFT P90 and TBT P99),
not DistServe's per-request attainment: a run meets its SLOs when every bound holds on its summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvsim.core.errors import ConfigError
from kvsim.core.units import parse_time
from kvsim.metrics.summary import LATENCY_METRICS, LATENCY_STATS, summarize

#: Metrics kvsim adds beyond ``summarize`` (engine counters, HiCache and storage-tier ratios).
EXTRA_METRICS = (
    "num_retractions",
    "prefill_steps",
    "decode_steps",
    "max_total_tokens",
    "prefix_cache_reused_ratio",
    "l2_hit_ratio",
    "l3_hit_ratio",
    "l3_prefetch_ratio",
)


def known_metrics() -> tuple[str, ...]:
    """Every metric name an SLO may bound: ``summarize``'s keys (all present even for an empty run)
    plus :data:`EXTRA_METRICS`."""
    names = list(summarize([]))
    for metric in LATENCY_METRICS:
        for stat in LATENCY_STATS:
            name = f"{stat}_{metric}_ms"
            if name not in names:
                names.append(name)
    names.extend(m for m in EXTRA_METRICS if m not in names)
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Bound:
    """One objective: ``metric <= value`` (``upper``) or ``metric >= value``."""

    metric: str
    value: float
    upper: bool = True

    def ratio(self, metrics: Mapping[str, Any]) -> float:
        """How far the run is from the bound: <= 1 when it holds (value / bound for an upper bound,
        bound / value for a lower one); inf when the metric is missing or not a number."""
        raw = metrics.get(self.metric)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
            return math.inf
        actual = float(raw)
        if self.upper:
            if self.value == 0:
                return 1.0 if actual <= 0 else math.inf
            return actual / self.value
        if actual == 0:
            return 1.0 if self.value <= 0 else math.inf
        return self.value / actual

    def holds(self, metrics: Mapping[str, Any]) -> bool:
        """Whether the run's metrics satisfy this bound (a missing metric never does)."""
        raw = metrics.get(self.metric)
        if isinstance(raw, bool) or not isinstance(raw, int | float) or math.isnan(raw):
            return False
        return raw <= self.value if self.upper else raw >= self.value

    def describe(self) -> str:
        """``p90_ttft_ms <= 2000``."""
        return f"{self.metric} {'<=' if self.upper else '>='} {self.value:g}"


@dataclass(frozen=True, slots=True)
class SloSpec:
    """All bounds of the ``slo:`` section; a run meets the SLOs when every bound holds."""

    bounds: tuple[Bound, ...]

    def violations(self, metrics: Mapping[str, Any]) -> list[str]:
        """The bounds a run breaks, each as ``metric=actual (bound)``; empty when it meets them all."""
        broken = []
        for bound in self.bounds:
            if not bound.holds(metrics):
                actual = metrics.get(bound.metric, "missing")
                shown = f"{actual:.4g}" if isinstance(actual, float) else str(actual)
                broken.append(f"{bound.metric}={shown} ({'<=' if bound.upper else '>='} {bound.value:g})")
        return broken

    def worst_ratio(self, metrics: Mapping[str, Any]) -> float:
        """The largest :meth:`Bound.ratio`: <= 1 when every bound holds; how far the worst one is off."""
        return max(bound.ratio(metrics) for bound in self.bounds)

    def describe(self) -> str:
        """``p90_ttft_ms <= 2000, p90_tpot_ms <= 50``."""
        return ", ".join(bound.describe() for bound in self.bounds)


def _number(value: Any, metric: str, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and metric.endswith("_ms"):
        # A time with a unit, e.g. "2 s": the metric is in milliseconds.
        number = parse_time(value, where) * 1000.0
    else:
        raise ConfigError(
            f"{where}: expected a number (or a time such as '2 s' for a *_ms metric), got {value!r}"
        )
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def parse_slo(data: Any) -> SloSpec | None:
    """Parse the ``slo:`` section (None when absent).

    Raises:
        ConfigError: an unknown metric (the message lists the valid ones), a malformed bound, or an
            empty section.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            "slo: expected a mapping of metric to bound, e.g. {p90_ttft_ms: 2 s, p90_tpot_ms: 50}"
        )
    valid = known_metrics()
    bounds = []
    for metric, spec in data.items():
        where = f"slo.{metric}"
        if metric not in valid:
            raise ConfigError(f"slo: unknown metric {metric!r}; valid: {', '.join(valid)}")
        if isinstance(spec, Mapping):
            keys = set(spec)
            if len(keys) != 1 or not keys <= {"max", "min"}:
                raise ConfigError(f"{where}: expected {{max: X}} or {{min: X}}, got {dict(spec)!r}")
            (kind,) = keys
            bounds.append(Bound(metric, _number(spec[kind], metric, f"{where}.{kind}"), upper=kind == "max"))
        else:
            bounds.append(Bound(metric, _number(spec, metric, where), upper=True))
    return SloSpec(tuple(bounds))
