"""What the service reports about itself: GetMetrics' samples and the Prometheus text of ``GET /metrics``.

:func:`collect` is the one list of numbers both report, so they always agree:

* the cache's registry with the reference's names and tag keys (``service.query_counter``,
  ``service.query_rt_us``, ... tagged ``api_name``, and ``instance_group``/``instance_id`` on the
  per-instance meta APIs; storage, reclaimer and queue metrics; see :mod:`kvsim.cache.metrics`);
* the same ``service.*`` names for the APIs the cache does not see (CheckHealth, the leader elector and
  logger RPCs, the debug service), so nothing is counted twice;
* kvsim's additions: ``meta_store.healthy_status`` [``type``] (1 when a probe of the meta store
  succeeds), ``data_storage.enabled_status`` [``type``, ``unique_name``] (the operator's enable/disable
  flag of each storage backend, next to the cache's probed ``data_storage.healthy_status``) and
  ``service.unauthenticated_counter`` [``service``] (requests refused for a missing or wrong admin token).

GetMetrics sends counters as ``int_value`` and everything else as ``float_value`` (a summary's value is
its mean), as the reference. ``GET /metrics`` on the admin HTTP port prints the same samples in the
Prometheus text format 0.0.4: the name gets a ``kvcm_`` prefix with dots turned into underscores
(``kvcm_service_query_counter{api_name="GetCacheLocation",...}``); counters are ``counter``, gauges and
summary means are ``gauge``, and each summary adds ``<name>_count`` and ``<name>_sum`` counters so rates
can be computed. Only the Prometheus text has the per-API latency histograms
(``kvsim_api_latency_seconds`` [``api_name``], the time :meth:`KvcmService.dispatch` spent, decoding and
transport excluded) and the process's own ``process_cpu_seconds_total`` and
``process_resident_memory_bytes``.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import resource
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kvsim.cache.metrics import MetricSample, Summary, tags_of

if TYPE_CHECKING:
    from kvsim.serve.service import KvcmService

#: Upper bounds (seconds) of the latency histogram buckets; ``+Inf`` is implied.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "kvcm_"
HISTOGRAM_NAME = "kvsim_api_latency_seconds"
#: A meta store instance id nothing uses: probing it reads the store without touching real data.
_PROBE_INSTANCE = "\x00kvsim-health-probe"


class LatencyHistogram:
    """Call latencies in the buckets of :data:`LATENCY_BUCKETS_S` (cumulative only when printed)."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one call of ``seconds``."""
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus ``le`` is <=).
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, then the total (the ``+Inf`` bucket)."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


# ---------------------------------------------------------------------------------------------- samples


def collect(service: KvcmService) -> list[MetricSample]:
    """Every sample GetMetrics reports (and ``/metrics`` prints), cache first, sorted within each part."""
    return _collect(service)[0]


def _collect(service: KvcmService) -> tuple[list[MetricSample], Any]:
    """:func:`collect` and the cache's registry it read (None without a cache that keeps metrics)."""
    samples: list[MetricSample] = []
    cache = service.cache
    # ``metrics()`` refreshes the cache's interval gauges (storage health, usage, key counts) first.
    registry = cache.metrics() if cache is not None and callable(getattr(cache, "metrics", None)) else None
    measured: set[str] = set()
    if registry is not None:
        for sample in registry.samples():
            samples.append(sample)
            measured.update(v for k, v in sample.tags if k == "api_name")
    for api, stats in sorted(service.metrics.snapshot().items()):
        if api in measured:
            continue
        tags = tags_of(api_name=api)
        mean_us = stats.total_us / stats.calls if stats.calls else 0.0
        samples.append(MetricSample("service.query_counter", tags, "counter", stats.calls))
        samples.append(MetricSample("service.error_counter", tags, "counter", stats.errors))
        samples.append(MetricSample("service.query_rt_us", tags, "summary", mean_us))
    if cache is not None and registry is not None:
        samples.extend(_store_samples(cache, registry))
    for kind, count in sorted(service.metrics.refused.items()):
        samples.append(
            MetricSample("service.unauthenticated_counter", tags_of(service=kind), "counter", count)
        )
    return samples, registry


def _store_samples(cache: Any, registry: Any) -> Iterable[MetricSample]:
    store = getattr(cache, "store", None)
    if store is not None:
        try:
            store.meta_key_count(_PROBE_INSTANCE)
            healthy = 1.0
        except Exception:  # any failure of the probe means the store cannot serve right now
            healthy = 0.0
        yield MetricSample(
            "meta_store.healthy_status", tags_of(type=getattr(store, "name", "unknown")), "gauge", healthy
        )
    # The cache's refresh just set ``data_storage.healthy_status`` for every open backend; its tags name
    # the storages, and each backend knows whether the operator enabled it.
    backend = getattr(cache, "backend", None)
    for sample in registry.samples():
        if sample.name != "data_storage.healthy_status" or backend is None:
            continue
        tags = dict(sample.tags)
        try:
            enabled = backend(tags.get("unique_name", "")).enabled
        except KeyError:
            continue  # a removed storage: its old gauges stay in the registry, but it has no backend
        yield MetricSample("data_storage.enabled_status", sample.tags, "gauge", 1.0 if enabled else 0.0)


# ---------------------------------------------------------------------------------------------- text format

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(name: str) -> str:
    """The Prometheus name of a GetMetrics name: ``kvcm_`` + the name with dots (and anything else a
    Prometheus name cannot hold) turned into ``_``."""
    return PREFIX + _NAME_BAD.sub("_", name)


def _label_name(key: str) -> str:
    cleaned = _NAME_BAD.sub("_", key).replace(":", "_")
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(tags: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{_label_name(k)}="{_escape(str(v))}"' for k, v in tags)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(service: KvcmService) -> str:
    """The Prometheus text (format 0.0.4) of :func:`collect`, the latency histograms and process metrics."""
    samples, registry = _collect(service)
    families: dict[str, list[MetricSample]] = {}
    for sample in samples:
        families.setdefault(sample.name, []).append(sample)
    lines: list[str] = []
    extras: dict[str, list[str]] = {}  # <name>_count / _sum of summaries, printed as their own families
    for name in sorted(families):
        prom = metric_name(name)
        kind = families[name][0].kind
        lines.append(f"# HELP {prom} KVCM metric {name} (GetMetrics)")
        lines.append(f"# TYPE {prom} {'counter' if kind == 'counter' else 'gauge'}")
        for sample in families[name]:
            labels = _labels(sample.tags)
            lines.append(f"{prom}{labels} {_number(sample.value)}")
            if kind != "summary":
                continue
            found = registry.find(name, **dict(sample.tags)) if registry is not None else None
            if isinstance(found, Summary):
                count, total = found.count, found.total
            else:  # a service-level summary: the service keeps calls and the mean
                stats = service.metrics.snapshot().get(dict(sample.tags).get("api_name", ""))
                count, total = (stats.calls, stats.total_us) if stats is not None else (0, 0.0)
            extras.setdefault(f"{prom}_count", []).append(f"{prom}_count{labels} {count}")
            extras.setdefault(f"{prom}_sum", []).append(f"{prom}_sum{labels} {_number(float(total))}")
    for prom in sorted(extras):
        lines.append(f"# TYPE {prom} counter")
        lines.extend(extras[prom])
    lines.extend(_histogram_lines(service))
    lines.extend(_process_lines())
    return "\n".join(lines) + "\n"


def _histogram_lines(service: KvcmService) -> list[str]:
    histograms = service.metrics.histograms
    if not histograms:
        return []
    lines = [
        f"# HELP {HISTOGRAM_NAME} Time the service spent on one call, by API (transport excluded).",
        f"# TYPE {HISTOGRAM_NAME} histogram",
    ]
    bounds = [_number(b) for b in LATENCY_BUCKETS_S] + ["+Inf"]
    for api in sorted(histograms):
        histogram = histograms[api]
        api_label = _escape(api)
        for bound, count in zip(bounds, histogram.cumulative(), strict=True):
            lines.append(f'{HISTOGRAM_NAME}_bucket{{api_name="{api_label}",le="{bound}"}} {count}')
        lines.append(f'{HISTOGRAM_NAME}_sum{{api_name="{api_label}"}} {_number(histogram.total)}')
        lines.append(f'{HISTOGRAM_NAME}_count{{api_name="{api_label}"}} {histogram.count}')
    return lines


def process_cpu_seconds() -> float:
    """User plus system CPU time of this process, every thread included (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_lines() -> list[str]:
    lines = [
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        f"process_cpu_seconds_total {_number(process_cpu_seconds())}",
    ]
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:  # Linux; skipped elsewhere
            rss_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return lines
    lines += [
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge",
        f"process_resident_memory_bytes {rss_pages * os.sysconf('SC_PAGE_SIZE')}",
    ]
    return lines


# ---------------------------------------------------------------------------------------------- route


def add_metrics_route(app: Any, service: KvcmService) -> None:
    """Serve ``GET /metrics`` (the Prometheus text) on ``app``, the admin HTTP application."""
    from aiohttp import web

    async def metrics(request: web.Request) -> web.Response:
        body = render(service).encode("utf-8")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", metrics)
