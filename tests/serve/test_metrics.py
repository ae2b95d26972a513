"""GetMetrics with the reference's names and tag keys, and ``GET /metrics`` (Prometheus text) on the admin
HTTP port with the same numbers, per-API latency histograms, meta store health and each storage's
enable flag."""

from __future__ import annotations

import http.client
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    BlockMask,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
)
from kvsim.cache.metrics import MetricSample
from kvsim.cache.store import MemoryStore, StoreError
from kvsim.core import ManualClock
from kvsim.serve.client import CacheClient
from kvsim.serve.prometheus import (
    CONTENT_TYPE,
    LATENCY_BUCKETS_S,
    LatencyHistogram,
    collect,
    metric_name,
    render,
)
from kvsim.serve.server import Endpoints, ServerThread
from kvsim.serve.service import KvcmService

from .conftest import T0, make_settings, new_manager

Key = tuple[str, tuple[tuple[str, str], ...]]


STEP_S = 2.0**-12  # 244.140625 µs: exact in binary, so sums and means of steps are exact too
STEP_US = STEP_S * 1e6


class StepTimer:
    """A timer whose every reading is STEP_S after the previous one: each call measures STEP_S."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += STEP_S
        return self.now


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Endpoints]]:
    """A server whose cache and service time every call as exactly STEP_S, after a known workload:
    RegisterInstance, StartWriteCache, FinishWriteCache, GetCacheLocation x3 (one of them for an unknown
    instance), CheckHealth x2."""
    mgr = new_manager(timer=StepTimer())
    service = KvcmService(mgr, clock=mgr.clock, timer=StepTimer())
    thread = ServerThread(service, make_settings(tmp_path_factory.mktemp("metrics")), background_poll=False)
    ep = thread.start()
    try:
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
            client.register_instance(
                RegisterInstanceRequest(
                    instance_group="default",
                    instance_id="i1",
                    block_size=4,
                    location_spec_infos=(LocationSpecInfo("tp0", 64),),
                    model_deployment=ModelDeployment("m", "bf16"),
                )
            )
            keys = (1, 2, 3, 4)
            started = client.start_write_cache(
                StartWriteCacheRequest(instance_id="i1", block_keys=keys, write_timeout_seconds=30)
            )
            client.finish_write_cache(
                FinishWriteCacheRequest(
                    instance_id="i1",
                    write_session_id=started.write_session_id,
                    success_blocks=BlockMask(offset=4),
                )
            )
            query = GetCacheLocationRequest(
                instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys
            )
            client.get_cache_location(query)
            client.get_cache_location(query)
            with pytest.raises(Exception, match="INSTANCE_NOT_EXIST"):
                client.get_cache_location(GetCacheLocationRequest(instance_id="ghost", block_keys=keys))
            client.check_health()
            client.check_health()
        yield thread, ep
    finally:
        thread.stop(grace_s=1.0)


def get_metrics(ep: Endpoints) -> dict[Key, Any]:
    """GetMetrics as ``(name, sorted tags) -> MetricValue``."""
    with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
        response = client.get_metrics()
    out: dict[Key, Any] = {}
    for m in response.metrics:  # type: ignore[attr-defined]
        key = (m.metric_name, tuple(sorted((t.tag_key, t.tag_value) for t in m.metric_tags)))
        assert key not in out, f"duplicate sample {key}"
        out[key] = m.metric_value
    return out


def scrape(ep: Endpoints) -> tuple[str, str]:
    """``GET /metrics`` on the admin HTTP port: (content type, text)."""
    conn = http.client.HTTPConnection(ep.host, ep.admin_http_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        assert reply.status == 200
        return reply.getheader("Content-Type") or "", reply.read().decode("utf-8")
    finally:
        conn.close()


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[Key, float], dict[str, str]]:
    """Samples ``(name, sorted labels) -> value`` and ``name -> TYPE`` of a Prometheus text page; also
    checks that each family's samples are contiguous and typed once."""
    samples: dict[Key, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} typed twice"
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = _LINE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        key = (name, tuple(sorted(_LABEL.findall(labels or ""))))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(value)
    return samples, types


# ---------------------------------------------------------------------------------------------- GetMetrics


def test_get_metrics_has_the_reference_names_and_tags(server: tuple[ServerThread, Endpoints]) -> None:
    _, ep = server
    values = get_metrics(ep)
    per_instance = (("api_name", "GetCacheLocation"), ("instance_group", "default"), ("instance_id", "i1"))
    assert values[("service.query_counter", per_instance)].int_value == 2
    assert values[("service.query_rt_us", per_instance)].float_value == STEP_US
    assert values[("service.error_counter", per_instance)].int_value == 0
    # The unknown instance has no group: the call is counted under api_name alone, as an error.
    unknown = (("api_name", "GetCacheLocation"),)
    assert values[("service.query_counter", unknown)].int_value == 1
    assert values[("service.error_counter", unknown)].int_value == 1
    assert values[("service.error_code", (*unknown, ("error_code", "INSTANCE_NOT_EXIST")))].int_value == 1
    for api in ("StartWriteCache", "FinishWriteCache"):
        tags = (("api_name", api), ("instance_group", "default"), ("instance_id", "i1"))
        assert values[("service.query_counter", tags)].int_value == 1
    assert values[("service.query_counter", (("api_name", "RegisterInstance"),))].int_value == 1
    # CheckHealth is measured by the service (the cache never sees it), with the same names.
    health = (("api_name", "CheckHealth"),)
    assert values[("service.query_counter", health)].int_value == 2
    assert values[("service.error_counter", health)].int_value == 0
    assert values[("service.query_rt_us", health)].float_value == STEP_US
    assert values[("manager.request_key_count", (("api_name", "GetCacheLocation"),))].float_value == 4.0
    # Every tag key is one of the reference's (or kvsim's documented additions).
    keys = {k for _, tags in values for k, _ in tags}
    assert keys <= {"api_name", "instance_group", "instance_id", "error_code", "type", "unique_name"}


def test_get_metrics_reports_store_health_and_storage_flags(server: tuple[ServerThread, Endpoints]) -> None:
    _, ep = server
    values = get_metrics(ep)
    storage = (("type", "file"), ("unique_name", "nfs_01"))
    assert values[("meta_store.healthy_status", (("type", "memory"),))].float_value == 1.0
    assert values[("data_storage.enabled_status", storage)].float_value == 1.0
    assert values[("data_storage.healthy_status", storage)].float_value == 1.0
    with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
        client.disable_storage("nfs_01")
        try:
            values = get_metrics(ep)
            assert values[("data_storage.enabled_status", storage)].float_value == 0.0
            assert values[("data_storage.healthy_status", storage)].float_value == 0.0
        finally:
            client.enable_storage("nfs_01")
    assert get_metrics(ep)[("data_storage.enabled_status", storage)].float_value == 1.0


class BrokenStore(MemoryStore):
    """A memory store whose meta reads fail, like a store that lost its connection."""

    broken = False

    def meta_key_count(self, instance_id: str) -> int:
        if self.broken:
            raise StoreError("connection refused")
        return super().meta_key_count(instance_id)


def test_a_failing_store_reports_unhealthy() -> None:
    store = BrokenStore()
    mgr = new_manager(store=store)
    service = KvcmService(mgr, clock=mgr.clock)

    def health() -> list[float]:
        return [s.value for s in collect(service) if s.name == "meta_store.healthy_status"]

    assert health() == [1.0]
    store.broken = True
    assert health() == [0.0]


def test_a_follower_without_a_cache_reports_service_metrics_only() -> None:
    service = KvcmService(None, clock=ManualClock(T0))
    service.metrics.record("CheckHealth", True, 0.001)
    assert collect(service) == [
        MetricSample("service.query_counter", (("api_name", "CheckHealth"),), "counter", 1),
        MetricSample("service.error_counter", (("api_name", "CheckHealth"),), "counter", 0),
        MetricSample("service.query_rt_us", (("api_name", "CheckHealth"),), "summary", 1000.0),
    ]


# ---------------------------------------------------------------------------------------------- /metrics


def test_prometheus_text_has_the_same_numbers(server: tuple[ServerThread, Endpoints]) -> None:
    _, ep = server
    content_type, text = scrape(ep)
    values = get_metrics(ep)
    samples, types = parse_prometheus(text)
    assert content_type == CONTENT_TYPE
    compared = 0
    for (name, tags), value in values.items():
        if ("api_name", "GetMetrics") in tags:
            continue  # GetMetrics counts itself after the scrape
        prom = samples[(metric_name(name), tags)]
        kind = value.WhichOneof("value")
        expected = float(value.int_value) if kind == "int_value" else value.float_value
        assert prom == expected or math.isclose(prom, expected, rel_tol=1e-12), (name, tags)
        assert types[metric_name(name)] == ("counter" if kind == "int_value" else "gauge")
        compared += 1
    assert compared >= 30
    per_instance = (("api_name", "GetCacheLocation"), ("instance_group", "default"), ("instance_id", "i1"))
    # Summaries add their count and sum (µs) as counters.
    assert samples[("kvcm_service_query_rt_us_count", per_instance)] == 2.0
    assert samples[("kvcm_service_query_rt_us_sum", per_instance)] == 2 * STEP_US
    assert types["kvcm_service_query_rt_us_count"] == "counter"
    health = (("api_name", "CheckHealth"),)
    assert samples[("kvcm_service_query_rt_us_count", health)] == 2.0
    assert samples[("kvcm_service_query_rt_us_sum", health)] == 2 * STEP_US
    assert samples[("process_cpu_seconds_total", ())] > 0.0
    assert types["process_cpu_seconds_total"] == "counter"


def test_prometheus_latency_histograms(server: tuple[ServerThread, Endpoints]) -> None:
    _, ep = server
    samples, types = parse_prometheus(scrape(ep)[1])
    assert types["kvsim_api_latency_seconds"] == "histogram"
    api = (("api_name", "GetCacheLocation"),)
    assert samples[("kvsim_api_latency_seconds_count", api)] == 3.0
    assert samples[("kvsim_api_latency_seconds_sum", api)] == 3 * STEP_S
    buckets = {
        dict(tags)["le"]: value
        for (name, tags), value in samples.items()
        if name == "kvsim_api_latency_seconds_bucket" and dict(tags)["api_name"] == "GetCacheLocation"
    }
    assert buckets["0.0001"] == 0.0
    assert buckets["0.00025"] == 3.0  # 244 µs
    assert buckets["+Inf"] == 3.0
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
    assert samples[("kvsim_api_latency_seconds_count", (("api_name", "CheckHealth"),))] == 2.0


def test_histogram_buckets_are_inclusive_and_cumulative() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.0, 0.0001, 0.00010001, 0.7, 99.0):
        histogram.observe(seconds)
    cumulative = histogram.cumulative()
    assert cumulative[0] == 2  # 0 and exactly 0.0001
    assert cumulative[1] == 3  # 0.00010001 <= 0.00025
    assert cumulative[LATENCY_BUCKETS_S.index(0.5)] == 3
    assert cumulative[LATENCY_BUCKETS_S.index(1.0)] == 4
    assert cumulative[-2] == 4 and cumulative[-1] == 5  # 99 s only in +Inf
    assert histogram.count == 5 and histogram.total == pytest.approx(99.70020001)


def test_names_and_labels_are_escaped() -> None:
    assert metric_name("service.query_counter") == "kvcm_service_query_counter"
    assert metric_name("a-b.c d") == "kvcm_a_b_c_d"
    service = KvcmService(None, clock=ManualClock(T0))
    service.metrics.record('we"ird\\api\nname', False, 0.002)
    text = render(service)
    assert 'kvcm_service_query_counter{api_name="we\\"ird\\\\api\\nname"} 1' in text.splitlines()
    assert 'kvcm_service_error_counter{api_name="we\\"ird\\\\api\\nname"} 1' in text.splitlines()


def test_metrics_path_is_only_on_the_admin_port(
    server: tuple[ServerThread, Endpoints], tmp_path: Path
) -> None:
    _, ep = server
    conn = http.client.HTTPConnection(ep.host, ep.http_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 404
    finally:
        conn.close()
