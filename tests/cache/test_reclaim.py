"""The reclaimer and water levels: the reference's integration cases ``test_reclaiming_00/01`` as exact
tests, then the trigger rules, policies (LRU by last access, LFU, TTL), per-type restriction, the
group-wide order, the delete delay and its credit, and quota validation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    BlockMask,
    CacheConfig,
    CacheError,
    CacheLocation,
    CacheManager,
    CachePreferStrategy,
    CacheReclaimStrategy,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheMetaRequest,
    InstanceGroup,
    InstanceGroupQuota,
    LocationSpecInfo,
    LocationStatus,
    MetaIndexerConfig,
    ModelDeployment,
    NfsStorageSpec,
    QuotaConfig,
    ReclaimPolicy,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
    StartWriteCacheResult,
    StorageConfig,
    StorageType,
    ThreeFSStorageSpec,
    TriggerStrategy,
    default_instance_group,
)
from kvsim.cache.backends import real_backend_factory
from kvsim.cache.events import EventLog, MemorySink
from kvsim.cache.quota import GroupUsage, InstanceUsage, WaterLevel, group_usage, water_level
from kvsim.cache.reclaim import ReclaimerConfig
from kvsim.cache.store import CacheStore, KeyRecord, MemoryStore, StoredLocation
from kvsim.core import ManualClock, make_rng

from .conftest import T0, make_manager, prefix, register, write

STORAGE = "test_storage_01"
GROUP = "test_group_01"
INSTANCE = "test_instance_01"


# ------------------------------------------------------------------ the reference's integration cases


def reference_group(used_percentage: float = 3.2, version: int = 1) -> InstanceGroup:
    """``_make_dummy_instance_group`` of the reference's ``reclaiming_test.py``."""
    return InstanceGroup(
        name=GROUP,
        storage_candidates=(STORAGE,),
        global_quota_group_name="quota_group_test",
        max_instance_count=8,
        quota=InstanceGroupQuota(
            capacity=1024 * 32,
            quota_config=(
                QuotaConfig(StorageType.ST_TAIRMEMPOOL, 1024 * 16),
                QuotaConfig(StorageType.ST_NFS, 1024 * 16),
            ),
        ),
        cache_config=CacheConfig(
            reclaim_strategy=CacheReclaimStrategy(
                storage_unique_name=STORAGE,
                reclaim_policy=ReclaimPolicy.POLICY_LRU,
                trigger_strategy=TriggerStrategy(used_percentage=used_percentage),
                delay_before_delete_ms=100,
            ),
            data_storage_strategy=CachePreferStrategy.CPS_PREFER_3FS,
            meta_indexer_config=MetaIndexerConfig(max_key_count=16, mutex_shard_num=16),
        ),
        user_data="user-defined info",
        version=version,
    )


class ReferenceCase:
    """The reference test's server and client: NFS storage under a work dir, the dummy group and one
    instance (block size 128, one 1024-byte spec); the service's background task polls every 100 ms."""

    def __init__(self, workdir: Path) -> None:
        self.clock = ManualClock(T0)
        self.sink = MemorySink()
        self.mgr = make_manager(
            self.clock, backend_factory=real_backend_factory(), defaults=False, events=EventLog(self.sink)
        )
        self.root = workdir / STORAGE
        self.mgr.add_storage(StorageConfig(STORAGE, NfsStorageSpec(root_path=f"{self.root}/")))
        self.mgr.create_instance_group(reference_group())
        self.mgr.register_instance(
            RegisterInstanceRequest(
                instance_group=GROUP,
                instance_id=INSTANCE,
                block_size=128,
                location_spec_infos=(LocationSpecInfo("tp0", 1024),),
                model_deployment=ModelDeployment(model_name="test_model", dtype="FP8"),
            )
        )
        self.sessions: dict[int, StartWriteCacheResult] = {}

    def start_write(self, key: int) -> None:
        self.sessions[key] = self.mgr.start_write_cache(
            StartWriteCacheRequest(
                instance_id=INSTANCE, block_keys=[key], token_ids=[key + 100], write_timeout_seconds=30
            )
        )
        self.clock.advance(0.001)

    def finish_write(self, key: int) -> None:
        self.mgr.finish_write_cache(
            FinishWriteCacheRequest(
                instance_id=INSTANCE,
                write_session_id=self.sessions[key].write_session_id,
                success_blocks=BlockMask(bool_masks=(True,)),
            )
        )
        self.clock.advance(0.001)

    def write(self, key: int) -> None:
        self.start_write(key)
        self.finish_write(key)

    def start_write_fails(self, key: int) -> CacheError:
        with pytest.raises(CacheError) as err:
            self.start_write(key)
        return err.value

    def lower_threshold(self) -> None:
        self.mgr.update_instance_group(reference_group(0.1, version=2), 1)

    def sleep(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            self.clock.advance(0.1)
            self.mgr.poll()

    def files(self) -> list[str]:
        return sorted(os.listdir(self.root / INSTANCE / "tp0"))

    def cached(self, keys: range) -> list[int]:
        return cached(self.mgr, list(keys), INSTANCE)


def test_reclaiming_00(tmp_path: Path) -> None:
    case = ReferenceCase(tmp_path)
    for i in range(16):
        case.write(i)
    assert case.files() == [f"{i:x}" for i in range(16)]
    err = case.start_write_fails(16)  # max_key_count is reached and the trigger (320 %) never fires
    assert (err.code, err.message) == (
        ErrorCode.INTERNAL_ERROR,
        f"instance '{INSTANCE}': 16 keys + 1 new exceed max_key_count 16",
    )
    case.lower_threshold()
    case.sleep(2)
    # 10 %: at most 1 key of 16, 1638 of the NFS quota's 16384 bytes: LRU keeps only the newest key.
    assert case.cached(range(16)) == [15]
    assert case.files() == ["f"]
    case.write(16)
    reclaims = [r for r in case.sink.records if r["type"] == "CacheReclaimSubmit"]
    assert [(r["source"], r["component"], r["block_keys"], r["delay_us"]) for r in reclaims] == [
        (INSTANCE, "cache_reclaimer", list(range(15)), 100_000)
    ]


def test_reclaiming_01(tmp_path: Path) -> None:
    case = ReferenceCase(tmp_path)
    for i in range(16):
        case.start_write(i)  # started, never finished: WRITING
    case.start_write_fails(16)
    case.lower_threshold()
    case.sleep(2)
    # WRITING locations are never reclaimed.
    assert (
        case.start_write_fails(16).message
        == f"instance '{INSTANCE}': 16 keys + 1 new exceed max_key_count 16"
    )
    assert case.mgr.metrics().value("cache_reclaimer.location_submit_count", instance_group=GROUP) is None
    assert case.mgr.metrics().value("cache_reclaimer.trigger_count", instance_group=GROUP) == 20
    for i in range(16):
        case.finish_write(i)
    case.sleep(2)
    assert case.cached(range(16)) == [15]
    case.write(16)
    assert case.files() == ["10", "f"]


# ------------------------------------------------------------------ water levels


def usage(keys: int, bytes_per_key: int = 1024, max_keys: int = 1000, **types: int) -> GroupUsage:
    type_bytes = {StorageType[f"ST_{k.upper()}"]: v for k, v in types.items()}
    return group_usage([InstanceUsage("i", keys, bytes_per_key, max_keys, type_bytes)])


def group_of(capacity: int, threshold: float, *quotas: tuple[StorageType, int]) -> InstanceGroup:
    base = default_instance_group()
    assert base.cache_config is not None
    rs = dataclasses.replace(
        base.cache_config.reclaim_strategy, trigger_strategy=TriggerStrategy(used_percentage=threshold)
    )
    return dataclasses.replace(
        base,
        quota=InstanceGroupQuota(capacity, tuple(QuotaConfig(t, c) for t, c in quotas)),
        cache_config=dataclasses.replace(base.cache_config, reclaim_strategy=rs),
    )


def test_water_level_trigger_rules() -> None:
    # Under every level.
    assert water_level(group_of(10 * 1024, 0.8), usage(7)) == WaterLevel(False)
    # Exactly at the level counts as over (the reference tests value + 1e-9 > t): 8191 bytes may stay.
    assert water_level(group_of(10 * 1024, 0.8), usage(8)) == WaterLevel(True, 0, 1, {})
    assert water_level(group_of(10 * 1024, 0.7), usage(8)) == WaterLevel(True, 0, 8192 - 7167, {})
    # Keys against the sum of max_key_count.
    assert water_level(group_of(10**9, 0.5), usage(6, max_keys=10)) == WaterLevel(True, 2, 0, {})
    # Per-type quota (VCNS entries are skipped, as the reference).
    level = water_level(
        group_of(10**9, 0.5, (StorageType.ST_NFS, 4096), (StorageType.ST_VCNS_3FS, 1)),
        usage(3, nfs=3072, **{"3fs": 100}),
    )
    assert level == WaterLevel(True, 0, 0, {StorageType.ST_NFS: 3072 - 2047})
    assert level.over_types == {StorageType.ST_NFS}
    # Capacity <= 0 is always exceeded (everything must go), but an empty group is never over.
    assert water_level(group_of(0, 0.8), usage(2)) == WaterLevel(True, 0, 2048, {})
    assert water_level(group_of(0, 0.8), usage(0)) == WaterLevel(False)
    assert water_level(
        group_of(10**9, 0.8, (StorageType.ST_3FS, 0)), usage(1, **{"3fs": 10})
    ).free_type_bytes == {StorageType.ST_3FS: 10}


def test_quota_validation_errors(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    base = default_instance_group()
    assert base.cache_config is not None
    rs = base.cache_config.reclaim_strategy

    def refused(group: InstanceGroup) -> str:
        with pytest.raises(CacheError) as err:
            mgr.create_instance_group(dataclasses.replace(group, name="g2"))
        assert err.value.code == ErrorCode.INVALID_ARGUMENT
        return err.value.message

    def with_rs(**changes: Any) -> InstanceGroup:
        assert base.cache_config is not None
        cc = dataclasses.replace(base.cache_config, reclaim_strategy=dataclasses.replace(rs, **changes))
        return dataclasses.replace(base, cache_config=cc)

    assert refused(dataclasses.replace(base, quota=InstanceGroupQuota(-1))) == (
        "instance_group.quota.capacity: must be >= 0, got -1"
    )
    assert refused(
        dataclasses.replace(base, quota=InstanceGroupQuota(1, (QuotaConfig(StorageType.ST_NFS, -5),)))
    ) == ("instance_group.quota.quota_config[0].capacity: must be >= 0, got -5")
    dup = (QuotaConfig(StorageType.ST_NFS, 1), QuotaConfig(StorageType.ST_NFS, 2))
    assert refused(dataclasses.replace(base, quota=InstanceGroupQuota(1, dup))) == (
        "instance_group.quota.quota_config[1].storage_type: duplicate quota for ST_NFS"
    )
    assert refused(dataclasses.replace(base, quota=InstanceGroupQuota(1, (QuotaConfig(),)))) == (
        "instance_group.quota.quota_config[0].storage_type: "
        "must be a storage type, got <StorageType.ST_UNSPECIFIED: 0>"
    )
    assert refused(with_rs(trigger_strategy=TriggerStrategy(used_percentage=-0.1))) == (
        "instance_group.cache_config.reclaim_strategy.trigger_strategy.used_percentage: "
        "must be a finite number >= 0, got -0.1"
    )
    assert refused(with_rs(delay_before_delete_ms=-1)) == (
        "instance_group.cache_config.reclaim_strategy.delay_before_delete_ms: must be an integer >= 0, got -1"
    )
    assert refused(with_rs(ttl_seconds=-3)) == (
        "instance_group.cache_config.reclaim_strategy.ttl_seconds: must be an integer >= 0, got -3"
    )
    group = mgr.get_instance_group("default")
    with pytest.raises(CacheError, match=r"quota\.capacity: must be >= 0"):
        mgr.update_instance_group(
            dataclasses.replace(group, version=group.version + 1, quota=InstanceGroupQuota(-1)), group.version
        )


# ------------------------------------------------------------------ policies


def pressured(
    clock: ManualClock,
    *,
    capacity_keys: int = 4,
    threshold: float = 0.5,
    policy: ReclaimPolicy = ReclaimPolicy.POLICY_LRU,
    delay_ms: int = 0,
    ttl_seconds: int = 0,
    quotas: tuple[QuotaConfig, ...] = (),
    config: ReclaimerConfig | None = None,
    **kwargs: Any,
) -> CacheManager:
    """The default setup with a small group quota (``capacity_keys`` blocks of 1024 B), a water level,
    and the reclaimer's period at 0 (every poll reclaims)."""
    mgr = make_manager(clock, reclaimer=config or ReclaimerConfig(interval_s=0.0), **kwargs)
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    rs = dataclasses.replace(
        group.cache_config.reclaim_strategy,
        reclaim_policy=policy,
        trigger_strategy=TriggerStrategy(used_percentage=threshold),
        delay_before_delete_ms=delay_ms,
        ttl_seconds=ttl_seconds,
    )
    mgr.update_instance_group(
        dataclasses.replace(
            group,
            version=group.version + 1,
            quota=InstanceGroupQuota(capacity_keys * 1024, quotas),
            cache_config=dataclasses.replace(group.cache_config, reclaim_strategy=rs),
        ),
        group.version,
    )
    return mgr


def cached(mgr: CacheManager, keys: list[int], instance_id: str = "i1") -> list[int]:
    """Keys whose (first) location is SERVING, asked with GetCacheMeta: unlike a read, it is no access."""
    metas = mgr.get_cache_meta(GetCacheMetaRequest(instance_id=instance_id, block_keys=keys)).metas
    return [k for k, meta in zip(keys, metas, strict=True) if '"status":"CLS_SERVING"' in meta]


def test_lru_counts_reads_as_access(clock: ManualClock) -> None:
    mgr = pressured(clock, capacity_keys=4, threshold=0.5)  # 3 of 4 blocks: 2 must go
    register(mgr)
    for k in (1, 2, 3):
        write(mgr, [k])
        clock.advance(1)
    prefix(mgr, [1])  # key 1 is read last: the reference's last-write LRU would evict it first
    clock.advance(1)
    assert mgr.poll().reclaimed_locations == 2
    assert cached(mgr, [1, 2, 3]) == [1]


def test_lfu_orders_by_hits(clock: ManualClock) -> None:
    mgr = pressured(clock, policy=ReclaimPolicy.POLICY_LFU)
    register(mgr)
    for k in (1, 2, 3):
        write(mgr, [k])
        clock.advance(1)
    for _ in range(3):
        prefix(mgr, [1])  # early but frequent
    clock.advance(1)
    prefix(mgr, [3])  # late but rare
    mgr.poll()
    assert cached(mgr, [1, 2, 3]) == [1]


def test_ttl_reclaims_unused_blocks_below_the_water_level(clock: ManualClock) -> None:
    mgr = pressured(clock, capacity_keys=100, policy=ReclaimPolicy.POLICY_TTL, ttl_seconds=10)
    register(mgr)
    write(mgr, [1])
    clock.advance(5)
    write(mgr, [2])
    clock.advance(4.5)
    assert mgr.poll().reclaimed_locations == 0
    clock.advance(0.5)  # key 1 unused for exactly 10 s
    assert mgr.poll().reclaimed_locations == 1
    assert cached(mgr, [1, 2]) == [2]
    clock.advance(5)
    mgr.poll()
    assert cached(mgr, [1, 2]) == []


def test_ttl_zero_is_plain_lru(clock: ManualClock) -> None:
    mgr = pressured(clock, capacity_keys=100, policy=ReclaimPolicy.POLICY_TTL, ttl_seconds=0)
    register(mgr)
    write(mgr, [1])
    clock.advance(10_000)
    assert mgr.poll().reclaimed_locations == 0


def test_only_the_over_type_is_reclaimed(clock: ManualClock) -> None:
    mgr = pressured(
        clock,
        capacity_keys=1000,
        threshold=0.5,
        quotas=(QuotaConfig(StorageType.ST_NFS, 2048), QuotaConfig(StorageType.ST_3FS, 10**9)),
    )
    mgr.add_storage(StorageConfig("3fs", ThreeFSStorageSpec("", "/3fs/", "kv/", 1)))
    group = mgr.get_instance_group("default")
    mgr.update_instance_group(
        dataclasses.replace(group, version=group.version + 1, storage_candidates=("nfs_01", "3fs")),
        group.version,
    )
    register(mgr)
    write(mgr, [3, 4])  # 3FS (preferred), the oldest keys
    clock.advance(1)
    mgr.disable_storage("3fs")
    write(mgr, [1, 2])  # NFS: its 2048-byte quota is full, far over 50 %
    mgr.enable_storage("3fs")
    # Only NFS is over its level, so only NFS locations go, although the 3FS keys are older.
    assert mgr.poll().reclaimed_locations == 2
    assert cached(mgr, [1, 2, 3, 4]) == [3, 4]


def test_group_wide_lru_and_batch_size(clock: ManualClock) -> None:
    mgr = pressured(
        clock, capacity_keys=8, threshold=0.5, config=ReclaimerConfig(batch_size=1, interval_s=0.0)
    )
    register(mgr, "a")
    register(mgr, "b")
    write(mgr, [1, 2, 3], instance_id="a")  # cold
    clock.advance(1)
    write(mgr, [1, 2, 3], instance_id="b")  # hot
    # 6 of 8 blocks, level 50 %: 3 must go. One victim per instance per round: the oldest of each.
    assert mgr.poll().reclaimed_locations == 2
    assert (cached(mgr, [1, 2, 3], "a"), cached(mgr, [1, 2, 3], "b")) == ([2, 3], [2, 3])
    assert mgr.poll().reclaimed_locations == 1
    assert (cached(mgr, [1, 2, 3], "a"), cached(mgr, [1, 2, 3], "b")) == ([3], [2, 3])


def test_sampling_is_reproducible_and_bounded(clock: ManualClock) -> None:
    def run(seed: int) -> list[int]:
        mgr = pressured(
            ManualClock(T0),
            capacity_keys=100,
            threshold=0.5,
            config=ReclaimerConfig(sampling_size=10, interval_s=0.0),
            seed=seed,
        )
        register(mgr)
        write(mgr, list(range(60)))  # all written at once: LRU ties, so the sample decides
        assert mgr.poll().reclaimed_locations == 10  # only 10 sampled keys can be chosen per round
        return cached(mgr, list(range(60)))

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_meta_sample_default_and_memory() -> None:
    """The scan-based default and the memory store's override draw the same keys (ascending)."""

    class ScanOnly(MemoryStore):
        meta_sample = CacheStore.meta_sample  # the base class's scan-based default

    loc = StoredLocation("l", LocationStatus.CLS_SERVING, CacheLocation(), "s", 1)
    samples = []
    for store in (MemoryStore(), ScanOnly()):
        assert store.meta_sample("i", 3, make_rng(0)) == []
        store.meta_write("i", {k: KeyRecord((loc,), 0.0, 0.0) for k in (9, 3, 7, 1, 5, 0, 8, 2, 6, 4)})
        assert store.meta_sample("i", 20, make_rng(0)) == list(range(10))
        assert store.meta_sample("i", 0, make_rng(1)) == []
        samples.append(store.meta_sample("i", 4, make_rng(1)))
    assert samples[0] == samples[1] == sorted(set(samples[0])) and len(samples[0]) == 4


# ------------------------------------------------------------------ delay, credit, "done when"


def test_delay_is_a_grace_period_and_deletions_are_not_submitted_twice(clock: ManualClock) -> None:
    mgr = pressured(clock, capacity_keys=4, threshold=0.5, delay_ms=10_000)
    register(mgr)
    for k in (1, 2, 3):
        write(mgr, [k])
        clock.advance(1)
    backend = mgr.backend("nfs_01")
    assert mgr.poll().reclaimed_locations == 2
    # DELETING at once (never handed out again) but the storage stays allocated for the grace period.
    assert cached(mgr, [1, 2, 3]) == [3]
    assert backend.used_bytes == 3 * 1024  # type: ignore[attr-defined]
    assert mgr.next_deadline() == pytest.approx(T0 + 3 + 10)
    for _ in range(99):
        clock.advance(0.1)
        assert mgr.poll().reclaimed_locations == 0  # queued deletions count as freed: no over-eviction
    clock.advance(0.1)
    assert mgr.poll().deleted_locations == 2
    assert backend.used_bytes == 1024  # type: ignore[attr-defined]
    assert mgr.num_pending_deletions() == 0


def test_reclaimer_off_and_period(clock: ManualClock) -> None:
    mgr = pressured(clock, config=ReclaimerConfig(enabled=False))
    register(mgr)
    write(mgr, [1, 2, 3])
    assert mgr.poll().reclaimed_locations == 0
    mgr = pressured(clock, config=ReclaimerConfig(interval_s=1.0))
    register(mgr)
    write(mgr, [1])
    mgr.poll()  # a round at T0: 25 % is under the level
    write(mgr, [2, 3])
    assert mgr.poll().reclaimed_locations == 0  # 75 %, but the next round is due at T0 + 1
    assert mgr.next_deadline() is None  # nothing queued and the last round found nothing to do
    clock.advance(1)
    assert mgr.poll().reclaimed_locations == 2


def test_a_filled_group_is_brought_under_its_water_level_with_files_deleted(
    tmp_path: Path, clock: ManualClock
) -> None:
    mgr = make_manager(clock, backend_factory=real_backend_factory(), defaults=False)
    mgr.add_storage(StorageConfig("nfs", NfsStorageSpec(f"{tmp_path}/", 1)))
    base = default_instance_group()
    mgr.create_instance_group(
        dataclasses.replace(base, storage_candidates=("nfs",), quota=InstanceGroupQuota(20 * 1024))
    )
    register(mgr)
    for k in range(20):  # no poll while filling: 100 % of the quota, far past the 80 % level
        write(mgr, [k])
        clock.advance(0.01)
    assert len(os.listdir(tmp_path / "i1" / "tp0")) == 20
    clock.advance(1)
    mgr.poll()  # submits (delay 1 s in the default group)
    clock.advance(1)
    mgr.poll()  # deletes
    group = mgr.get_instance_group("default")
    level = water_level(group, mgr._group_usage(group, ["i1"]))
    assert level == WaterLevel(False)
    # 16 of 20 blocks is exactly 80 %, which the reference's test counts as over: 15 are kept.
    assert sorted(os.listdir(tmp_path / "i1" / "tp0")) == sorted(f"{k:x}" for k in range(5, 20))
    assert mgr.metrics().value("cache_manager_group.usage_ratio", instance_group="default") == 0.75
