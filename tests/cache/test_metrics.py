"""Metrics with the reference's names: per-API counters and latency summaries timed with the injected
timer, manager and storage figures, reclaimer counters and the interval gauges."""

from __future__ import annotations

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    GetCacheLocationRequest,
    QueryType,
    RemoveCacheRequest,
    default_storage_config,
)
from kvsim.cache.metrics import MetricSample, MetricsRegistry, tags_of
from kvsim.core import FixedTimer, ManualClock

from .conftest import finish, make_manager, prefix, register, start, write

# A FixedTimer advancing 0.25 s per read: a call with no timed step inside takes exactly 250 000 µs.
STEP = 0.25


@pytest.fixture
def timed(clock: ManualClock) -> CacheManager:
    mgr = make_manager(clock, timer=FixedTimer(STEP))
    register(mgr)
    return mgr


def test_registry_kinds_and_samples() -> None:
    m = MetricsRegistry()
    m.counter("a.count", tags_of(x=1)).inc(2)
    s = m.summary("a.rt_us")
    for v in (1.0, 3.0):
        s.observe(v)
    m.gauge("a.level").set(0.5)
    assert m.samples() == [
        MetricSample("a.count", (("x", "1"),), "counter", 2),
        MetricSample("a.level", (), "gauge", 0.5),
        MetricSample("a.rt_us", (), "summary", 2.0),
    ]
    assert s.as_dict() == {"count": 2, "sum": 4.0, "min": 1.0, "max": 3.0, "mean": 2.0}
    assert m.value("a.count", x=1) == 2 and m.value("a.count") is None and m.total("a.count") == 2
    with pytest.raises(TypeError, match=r"metric 'a\.level' \{\} is a gauge, not a counter"):
        m.counter("a.level")
    assert MetricsRegistry().summary("x").as_dict() == {
        "count": 0,
        "sum": 0.0,
        "min": 0.0,
        "max": 0.0,
        "mean": 0.0,
    }


def test_per_api_counters_and_latency(timed: CacheManager) -> None:
    write(timed, [1, 2])
    prefix(timed, [1, 2, 3])
    prefix(timed, [9])
    m = timed.metrics()
    tags = {"instance_group": "default", "instance_id": "i1"}
    assert m.value("service.query_counter", api_name="GetCacheLocation", **tags) == 2
    assert m.value("service.query_rt_us", api_name="GetCacheLocation", **tags) == 250_000.0
    assert m.value("service.error_counter", api_name="GetCacheLocation", **tags) == 0
    # StartWriteCache times its allocation (2 reads) and the storage create (2 reads) inside the call.
    assert m.value("service.query_rt_us", api_name="StartWriteCache", **tags) == 5 * 250_000.0
    assert m.value("manager.gen_write_location_us") == 3 * 250_000.0
    assert m.value("data_storage.create_time_us", type="file", unique_name="nfs_01") == 250_000.0
    assert m.value("manager.prefix_match_len") == 1.0  # (2 + 0) / 2
    assert m.value("manager.request_key_count", api_name="GetCacheLocation") == 2.0  # (3 + 1) / 2
    assert m.value("manager.request_key_count", api_name="StartWriteCache") == 2.0
    assert m.value("data_storage.create_counter", type="file", unique_name="nfs_01") == 1
    assert m.value("data_storage.create_keys_counter", type="file", unique_name="nfs_01") == 2
    # Admin and registration calls are tagged by API only.
    assert m.value("service.query_counter", api_name="RegisterInstance") == 1
    assert m.value("service.query_counter", api_name="AddStorage") == 1


def test_errors_are_counted_by_code(timed: CacheManager) -> None:
    with pytest.raises(CacheError):
        prefix(timed, [1], instance_id="ghost")
    with pytest.raises(CacheError):
        timed.get_cache_location(GetCacheLocationRequest(instance_id="i1", block_keys=[1]))  # no query type
    m = timed.metrics()
    # An unknown instance cannot be tagged with a group: the API name alone.
    assert m.value("service.error_counter", api_name="GetCacheLocation") == 1
    assert m.value("service.error_code", api_name="GetCacheLocation", error_code="INSTANCE_NOT_EXIST") == 1
    tags = {"instance_group": "default", "instance_id": "i1"}
    assert m.value("service.error_counter", api_name="GetCacheLocation", **tags) == 1
    assert (
        m.value("service.error_code", api_name="GetCacheLocation", error_code="INVALID_ARGUMENT", **tags) == 1
    )


def test_reference_get_metrics_case(clock: ManualClock) -> None:
    """The reference's ``test_get_metrics``: after AddStorage and ListStorage both have a query count
    and a latency above 1 µs (here exactly one timer step)."""
    mgr = make_manager(clock, timer=FixedTimer(STEP), defaults=False)
    mgr.add_storage(default_storage_config())
    mgr.list_storage()
    m = mgr.metrics()
    for api in ("AddStorage", "ListStorage"):
        assert m.value("service.query_counter", api_name=api) == 1
        assert m.value("service.query_rt_us", api_name=api) == 250_000.0


def test_gauges_and_lifecycle_counters(timed: CacheManager, clock: ManualClock) -> None:
    write(timed, [1, 2])
    start(timed, [3], timeout=1)
    clock.advance(2)
    timed.poll()
    timed.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    m = timed.metrics()
    assert m.value("cache_manager.write_location_expire_size") == 1
    assert m.value("schedule_plan_executor.waiting_task_count") == 1.0
    assert m.value("cache_manager_instance.key_count", instance_group="default", instance_id="i1") == 2.0
    assert m.value("cache_manager_instance.byte_size", instance_group="default", instance_id="i1") == 2048.0
    assert m.value("cache_manager_group.usage_ratio", instance_group="default") == 2048 / 30_000_000_000
    assert (m.value("meta_indexer.total_key_count"), m.value("meta_indexer.total_cache_usage")) == (
        2.0,
        2048.0,
    )
    assert m.value("data_storage.healthy_status", type="file", unique_name="nfs_01") == 1.0
    timed.poll()
    m = timed.metrics()
    assert m.value("schedule_plan_executor.location_del_count") == 2  # the expired block, then key 1
    assert m.value("data_storage.delete_keys_counter", type="file", unique_name="nfs_01") == 2
    timed.disable_storage("nfs_01")
    assert timed.metrics().value("data_storage.healthy_status", type="file", unique_name="nfs_01") == 0.0


def test_the_names_recorded(timed: CacheManager, clock: ManualClock) -> None:
    """Every name a run records is one of the reference's groups (plus kvsim's documented additions)."""
    res = start(timed, [1, 2])
    finish(timed, res.write_session_id, BlockMask(offset=2))
    timed.get_cache_location(
        GetCacheLocationRequest(instance_id="i1", query_type=QueryType.QT_BATCH_GET, block_keys=[1])
    )
    timed.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    timed.poll()
    names = timed.metrics().names()
    assert {n.split(".")[0] for n in names} == {
        "service",
        "manager",
        "cache_manager",
        "cache_manager_group",
        "cache_manager_instance",
        "data_storage",
        "meta_indexer",
        "schedule_plan_executor",
    }
    assert {
        "service.query_counter",
        "service.query_rt_us",
        "service.error_counter",
        "manager.request_key_count",
        "manager.prefix_match_len",
        "manager.gen_write_location_us",
        "data_storage.create_counter",
        "data_storage.create_keys_counter",
        "data_storage.create_time_us",
        "data_storage.delete_counter",
        "data_storage.delete_keys_counter",
        "data_storage.delete_time_us",
        "data_storage.healthy_status",
        "data_storage.storage_usage_ratio",
    } <= names
