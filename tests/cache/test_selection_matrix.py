"""Write selection (reference study §2.6) as a matrix: preference strategies x per-type quotas x which
candidates are available, then the group checks (byte quota, per-type quota, max_key_count) through
the manager."""

from __future__ import annotations

import dataclasses

import pytest

from kvsim.cache import (
    CacheConfig,
    CacheError,
    CacheManager,
    CachePreferStrategy,
    ErrorCode,
    InstanceGroup,
    InstanceGroupQuota,
    MooncakeStorageSpec,
    NfsStorageSpec,
    QuotaConfig,
    StorageConfig,
    StorageType,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
    default_instance_group,
)
from kvsim.cache.selection import select_write_storage, write_exclusions
from kvsim.core import ManualClock

from .conftest import make_manager, register, start, write

S = CachePreferStrategy
T = StorageType
ALL = [
    ("nfs", T.ST_NFS),
    ("3fs", T.ST_3FS),
    ("mc", T.ST_MOONCAKE),
    ("pool", T.ST_TAIRMEMPOOL),
    ("vcns", T.ST_VCNS_3FS),
]
NFS_AND_MC = [("nfs", T.ST_NFS), ("mc", T.ST_MOONCAKE)]
NONE: list[tuple[str, StorageType]] = []
FAIL = None

# strategy -> expected storage for (all available, no quota full), (all, 3FS quota full), (all, NFS full),
# (only nfs+mc available, none full), (nfs+mc, NFS full). FAIL = the write is refused.
EXPECTED: dict[CachePreferStrategy, tuple[str | None, ...]] = {
    S.CPS_UNSPECIFIED: ("nfs", "nfs", "3fs", "nfs", "mc"),
    S.CPS_ALWAYS_3FS: ("3fs", FAIL, "3fs", FAIL, FAIL),
    S.CPS_PREFER_3FS: ("3fs", "nfs", "3fs", "nfs", "mc"),
    S.CPS_ALWAYS_MOONCAKE: ("mc", "mc", "mc", "mc", "mc"),
    S.CPS_PREFER_MOONCAKE: ("mc", "mc", "mc", "mc", "mc"),
    S.CPS_ALWAYS_TAIR_MEMPOOL: ("pool", "pool", "pool", FAIL, FAIL),
    S.CPS_PREFER_TAIR_MEMPOOL: ("pool", "pool", "pool", "nfs", "mc"),
    # VCNS counts as 3FS for quotas, so a full 3FS quota rules VCNS out too.
    S.CPS_ALWAYS_VCNS_3FS: ("vcns", FAIL, "vcns", FAIL, FAIL),
    S.CPS_PREFER_VCNS_3FS: ("vcns", "nfs", "vcns", "nfs", "mc"),
}
SCENARIOS = [
    (ALL, set()),
    (ALL, {T.ST_3FS}),
    (ALL, {T.ST_NFS}),
    (NFS_AND_MC, set()),
    (NFS_AND_MC, {T.ST_NFS}),
]


def group_with(strategy: CachePreferStrategy) -> InstanceGroup:
    base = default_instance_group()
    assert base.cache_config is not None
    return dataclasses.replace(
        base, cache_config=dataclasses.replace(base.cache_config, data_storage_strategy=strategy)
    )


@pytest.mark.parametrize("strategy", list(S))
@pytest.mark.parametrize("scenario", range(len(SCENARIOS)))
def test_strategy_x_quota_x_availability(strategy: CachePreferStrategy, scenario: int) -> None:
    candidates, excluded = SCENARIOS[scenario]
    expected = EXPECTED[strategy][scenario]
    group = group_with(strategy)
    if expected is not None:
        assert select_write_storage(group, candidates, excluded) == expected
        return
    with pytest.raises(CacheError) as err:
        select_write_storage(group, candidates, excluded)
    want = {
        S.CPS_ALWAYS_3FS: "ST_3FS",
        S.CPS_ALWAYS_TAIR_MEMPOOL: "ST_TAIRMEMPOOL",
        S.CPS_ALWAYS_VCNS_3FS: "ST_VCNS_3FS",
    }[strategy]
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        f"instance group 'default': {strategy.name} but no available {want} storage",
    )


@pytest.mark.parametrize("strategy", list(S))
def test_no_candidate_left_refuses_every_strategy(strategy: CachePreferStrategy) -> None:
    for candidates, excluded in [(NONE, set()), (NFS_AND_MC, {T.ST_NFS, T.ST_MOONCAKE})]:
        with pytest.raises(CacheError) as err:
            select_write_storage(group_with(strategy), candidates, excluded)
        assert err.value.message == "instance group 'default': no available storage within its quotas"


@pytest.mark.parametrize(
    ("capacity", "used", "quotas", "usage", "excluded"),
    [
        (100, 99, [], {}, set()),
        (100, 0, [(T.ST_NFS, 10)], {T.ST_NFS: 10}, {T.ST_NFS}),  # capacity <= usage excludes the type
        (100, 0, [(T.ST_NFS, 10)], {T.ST_NFS: 9}, set()),
        (100, 0, [(T.ST_NFS, 0), (T.ST_3FS, 5)], {}, {T.ST_NFS}),  # a 0 quota excludes at once
        (
            100,
            50,
            [(T.ST_3FS, 1), (T.ST_MOONCAKE, 1)],
            {T.ST_3FS: 1, T.ST_MOONCAKE: 1},
            {T.ST_3FS, T.ST_MOONCAKE},
        ),
    ],
)
def test_write_exclusions(
    capacity: int,
    used: int,
    quotas: list[tuple[StorageType, int]],
    usage: dict[StorageType, int],
    excluded: set[StorageType],
) -> None:
    group = dataclasses.replace(default_instance_group(), quota=InstanceGroupQuota(capacity=capacity))
    assert write_exclusions(group, quotas, used, usage) == excluded


@pytest.mark.parametrize(("capacity", "used"), [(100, 100), (100, 101), (0, 0), (-1, 0)])
def test_group_byte_quota_refuses(capacity: int, used: int) -> None:
    group = dataclasses.replace(default_instance_group(), quota=InstanceGroupQuota(capacity=capacity))
    with pytest.raises(CacheError) as err:
        write_exclusions(group, [], used, {})
    assert err.value.message == f"instance group 'default' is over its quota: {used} of {capacity} bytes used"


# ------------------------------------------------------------------------------------- through the manager

STORAGES = [
    StorageConfig("nfs", NfsStorageSpec("/n/", 1)),
    StorageConfig("3fs", ThreeFSStorageSpec("", "/m/", "r/", 1)),
    StorageConfig("mc", MooncakeStorageSpec("h", "c", "tcp", "", "m")),
    StorageConfig("pool", TairMemPoolStorageSpec("d")),
    StorageConfig("vcns", VcnsThreeFSStorageSpec("", "/v/", "r/", 1, False, "h", 80, "u")),
]


def five_storages(clock: ManualClock, strategy: CachePreferStrategy, **quota: object) -> CacheManager:
    mgr = make_manager(clock, defaults=False)
    for config in STORAGES:
        mgr.add_storage(config)
    base = group_with(strategy)
    mgr.create_instance_group(
        dataclasses.replace(
            base,
            storage_candidates=("nfs", "3fs", "mc", "pool", "vcns"),
            quota=InstanceGroupQuota(**quota) if quota else base.quota,  # type: ignore[arg-type]
        )
    )
    register(mgr)
    return mgr


def written_to(mgr: CacheManager, key: int) -> StorageType:
    return start(mgr, [key]).locations[0].type


@pytest.mark.parametrize("strategy", [s for s in S if s != S.CPS_UNSPECIFIED])
def test_manager_follows_the_matrix_as_storages_go_away(
    clock: ManualClock, strategy: CachePreferStrategy
) -> None:
    mgr = five_storages(clock, strategy)
    by_name = dict(ALL)
    assert written_to(mgr, 1) == by_name[EXPECTED[strategy][0]]  # type: ignore[index]
    for name in ("3fs", "pool", "vcns"):
        mgr.disable_storage(name)
    expected = EXPECTED[strategy][3]
    if expected is None:
        with pytest.raises(CacheError, match="but no available"):
            start(mgr, [2])
    else:
        assert written_to(mgr, 2) == by_name[expected]


def test_vcns_quota_counts_as_3fs(clock: ManualClock) -> None:
    mgr = five_storages(
        clock,
        S.CPS_ALWAYS_3FS,
        capacity=10**9,
        quota_config=(QuotaConfig(T.ST_VCNS_3FS, 1024),),
    )
    write(mgr, [1])  # 1024 bytes on 3FS use up the (VCNS-folded) 3FS quota
    with pytest.raises(CacheError, match="CPS_ALWAYS_3FS but no available ST_3FS storage"):
        start(mgr, [2])


def test_unknown_candidates_are_skipped_in_order(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("mc", MooncakeStorageSpec("h", "c", "tcp", "", "m")))
    group = mgr.get_instance_group("default")
    mgr.update_instance_group(
        dataclasses.replace(group, version=group.version + 1, storage_candidates=("ghost", "mc", "nfs_01")),
        group.version,
    )
    register(mgr)
    assert written_to(mgr, 1) == T.ST_MOONCAKE  # PREFER_3FS falls back to the first *known* candidate


def test_group_quota_counts_every_instance(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    group = mgr.get_instance_group("default")
    mgr.update_instance_group(
        dataclasses.replace(group, version=group.version + 1, quota=InstanceGroupQuota(capacity=3 * 1024)),
        group.version,
    )
    register(mgr, "a")
    register(mgr, "b", specs=[("tp0", 1024), ("tp1", 1024)])
    write(mgr, [1], instance_id="a")  # 1024
    write(mgr, [1], instance_id="b")  # 2048 (two specs per key)
    with pytest.raises(CacheError) as err:
        start(mgr, [2], instance_id="a")
    assert err.value.message == "instance group 'default' is over its quota: 3072 of 3072 bytes used"


def test_zero_capacity_group_refuses_every_write(clock: ManualClock) -> None:
    mgr = make_manager(clock, defaults=False)
    mgr.add_storage(StorageConfig("nfs", NfsStorageSpec("/n/", 1)))
    base = default_instance_group()
    mgr.create_instance_group(
        dataclasses.replace(
            base,
            storage_candidates=("nfs",),
            quota=InstanceGroupQuota(),
            cache_config=dataclasses.replace(base.cache_config or CacheConfig()),
        )
    )
    register(mgr)
    with pytest.raises(CacheError, match="over its quota: 0 of 0 bytes used"):
        start(mgr, [1])
