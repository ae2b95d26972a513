"""Metrics of the cache manager, named as the reference's (study §4.4): ``<group>.<name>`` plus tags.

Three kinds, all plain in-memory numbers (no threads, no reporter; ``kvsim.serve`` turns a
:meth:`MetricsRegistry.samples` list into a GetMetrics response, counters as ``int_value`` and the rest
as ``float_value``):

* :class:`Counter`: a monotonically growing integer (``service.query_counter``);
* :class:`Summary`: count, sum, min, max and mean of observations (``service.query_rt_us``); its
  sample value is the mean, and :meth:`Summary.as_dict` has the rest;
* :class:`Gauge`: a value set when the manager refreshes it (``cache_manager_group.usage_ratio``).

Latencies are measured with the manager's injected :class:`~kvsim.core.Timer` (never the wall clock),
so tests can use a deterministic timer.

Names the manager records (tags in brackets):

* per API call [``api_name``; the six per-instance meta APIs add ``instance_group``, ``instance_id``]:
  ``service.query_counter``, ``service.query_rt_us``, ``service.error_counter``,
  ``service.error_code`` [+ ``error_code``], ``manager.request_key_count``, ``manager.prefix_match_len``,
  ``manager.gen_write_location_us``;
* write sessions: ``cache_manager.write_location_expire_size``;
* storages [``type``, ``unique_name``]: ``data_storage.create_counter``, ``.create_keys_counter``,
  ``.create_time_us``, ``.create_error_counter``, and kvsim's ``.delete_counter``, ``.delete_keys_counter``,
  ``.delete_time_us``, ``.delete_error_counter``, ``.delete_orphan_counter``; gauges
  ``data_storage.healthy_status``, ``.storage_usage_ratio``;
* reclaimer [``instance_group``]: ``cache_reclaimer.round_count``, ``.trigger_count``,
  ``.block_submit_count``, ``.location_submit_count``, ``.block_del_count``, ``.location_del_count``;
* deletion queue: ``schedule_plan_executor.waiting_task_count`` (gauge), ``.delete_retry_count``,
  ``.location_del_count``, ``.block_del_count``;
* gauges refreshed by :meth:`CacheManager.metrics <kvsim.cache.manager.CacheManager.metrics>`:
  ``cache_manager_group.usage_ratio`` [``instance_group``], ``cache_manager_instance.key_count`` and
  ``.byte_size`` [``instance_group``, ``instance_id``], ``meta_indexer.total_key_count``,
  ``meta_indexer.total_cache_usage``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Tags = tuple[tuple[str, str], ...]


def tags_of(**tags: object) -> Tags:
    """Tags as a sorted tuple of ``(key, str(value))`` pairs (the registry's key)."""
    return tuple(sorted((k, str(v)) for k, v in tags.items()))


class Counter:
    """A growing integer."""

    __slots__ = ("value",)
    kind = "counter"

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        """Add ``n`` (>= 0)."""
        self.value += n

    def sample(self) -> int:
        """The value reported."""
        return self.value


class Summary:
    """Count, sum, min and max of observations."""

    __slots__ = ("count", "max", "min", "total")
    kind = "summary"

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    @property
    def mean(self) -> float:
        """Average observation (0.0 before the first)."""
        return self.total / self.count if self.count else 0.0

    def sample(self) -> float:
        """The value reported: the mean."""
        return self.mean

    def as_dict(self) -> dict[str, float]:
        """``count``, ``sum``, ``min``, ``max``, ``mean`` (min and max are 0.0 before the first)."""
        empty = self.count == 0
        return {
            "count": self.count,
            "sum": self.total,
            "min": 0.0 if empty else self.min,
            "max": 0.0 if empty else self.max,
            "mean": self.mean,
        }


class Gauge:
    """A value that is set, not accumulated."""

    __slots__ = ("value",)
    kind = "gauge"

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Replace the value."""
        self.value = float(value)

    def sample(self) -> float:
        """The value reported."""
        return self.value


Metric = Counter | Summary | Gauge


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One reported metric: name, tags, kind (``counter``/``summary``/``gauge``) and value."""

    name: str
    tags: Tags
    kind: str
    value: int | float


class MetricsRegistry:
    """Metrics by ``(name, tags)``; getters create on first use and return the same object after."""

    def __init__(self) -> None:
        self._metrics: dict[tuple[str, Tags], Metric] = {}

    def _get(self, cls: type[Any], name: str, tags: Tags) -> Any:
        metric = self._metrics.get((name, tags))
        if metric is None:
            metric = self._metrics[(name, tags)] = cls()
        elif not isinstance(metric, cls):
            raise TypeError(f"metric {name!r} {dict(tags)} is a {metric.kind}, not a {cls.kind}")
        return metric

    def counter(self, name: str, tags: Tags = ()) -> Counter:
        """The counter ``name`` with ``tags`` (see :func:`tags_of`)."""
        return self._get(Counter, name, tags)  # type: ignore[no-any-return]

    def summary(self, name: str, tags: Tags = ()) -> Summary:
        """The summary ``name`` with ``tags``."""
        return self._get(Summary, name, tags)  # type: ignore[no-any-return]

    def gauge(self, name: str, tags: Tags = ()) -> Gauge:
        """The gauge ``name`` with ``tags``."""
        return self._get(Gauge, name, tags)  # type: ignore[no-any-return]

    def find(self, name: str, **tags: object) -> Metric | None:
        """The metric ``name`` with exactly these tags, or None (for tests and tools)."""
        return self._metrics.get((name, tags_of(**tags)))

    def value(self, name: str, **tags: object) -> int | float | None:
        """The reported value of ``name`` with exactly these tags, or None."""
        metric = self.find(name, **tags)
        return None if metric is None else metric.sample()

    def total(self, name: str) -> int | float:
        """The sum of ``name``'s values over every tag set (0 when absent; for counters)."""
        return sum(m.sample() for (n, _), m in self._metrics.items() if n == name)

    def samples(self) -> list[MetricSample]:
        """Every metric, sorted by name then tags."""
        return [
            MetricSample(name, tags, metric.kind, metric.sample())
            for (name, tags), metric in sorted(self._metrics.items(), key=lambda kv: kv[0])
        ]

    def names(self) -> set[str]:
        """The names of every metric recorded so far."""
        return {name for name, _ in self._metrics}

    def clear(self) -> None:
        """Forget every metric."""
        self._metrics.clear()


__all__ = [
    "Counter",
    "Gauge",
    "Metric",
    "MetricSample",
    "MetricsRegistry",
    "Summary",
    "Tags",
    "tags_of",
]
