"""The two-phase write (§2.5, §2.6, §7 client cases): masks, locations, spec groups, sessions, quotas."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    CachePreferStrategy,
    ErrorCode,
    GetCacheMetaRequest,
    InstanceGroupQuota,
    MooncakeStorageSpec,
    NfsStorageSpec,
    QuotaConfig,
    StorageConfig,
    StorageType,
    ThreeFSStorageSpec,
    default_instance_group,
)
from kvsim.core import ManualClock

from .conftest import T0, finish, make_manager, prefix, register, start, uris, write


def nfs_file(*storage_keys: str) -> str:
    """The simulated NFS file holding several blocks: first key + hash of all keys."""
    digest = hashlib.blake2b("|".join(storage_keys).encode(), digest_size=8).hexdigest()
    return f"file://nfs_01/tmp/nfs/{storage_keys[0]}_{digest}"


def statuses(mgr: CacheManager, keys: list[int]) -> list[str]:
    metas = mgr.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=keys)).metas
    return [m.split('"status":"')[1].rstrip('"}') for m in metas]


def test_start_write_cache_mask_sequence(mgr: CacheManager) -> None:
    """§2.5 / client TestStartWriteCache: earlier writes are still WRITING and count as cached."""
    first = start(mgr, [1, 2, 3, 4])
    assert re.fullmatch(r"[a-z0-9]{32}", first.write_session_id)
    assert first.block_mask == BlockMask(offset=0)
    f = nfs_file("i1/tp0/1", "i1/tp0/2", "i1/tp0/3", "i1/tp0/4")
    assert uris(first.locations) == [[f"{f}?blkid={i}&size=1024"] for i in range(4)]

    again = start(mgr, [1, 2, 3, 4])
    assert (again.block_mask, again.locations) == (BlockMask(offset=4), ())
    assert again.write_session_id != first.write_session_id

    longer = start(mgr, [1, 2, 3, 4, 5, 6])
    assert longer.block_mask == BlockMask(offset=4)
    f = nfs_file("i1/tp0/5", "i1/tp0/6")
    assert uris(longer.locations) == [[f"{f}?blkid=0&size=1024"], [f"{f}?blkid=1&size=1024"]]

    shifted = start(mgr, [5, 6, 7, 8])
    assert shifted.block_mask == BlockMask(offset=2)
    assert len(shifted.locations) == 2

    holes = start(mgr, [5, 55, 66, 6])
    assert holes.block_mask == BlockMask(bool_masks=(True, False, False, True))
    f = nfs_file("i1/tp0/37", "i1/tp0/42")  # 55 and 66 in hex
    assert uris(holes.locations) == [[f"{f}?blkid=0&size=1024"], [f"{f}?blkid=1&size=1024"]]
    assert mgr.num_open_sessions() == 5


def test_finish_success_makes_blocks_serving(mgr: CacheManager) -> None:
    """Client TestFinishWriteCacheSuccess."""
    res = start(mgr, [1, 2, 3, 4])
    assert statuses(mgr, [1, 2, 3, 4]) == ["CLS_WRITING"] * 4
    out = finish(mgr, res.write_session_id, BlockMask(offset=4))
    assert (out.num_serving, out.num_failed) == (4, 0)  # type: ignore[attr-defined]
    assert statuses(mgr, [1, 2, 3, 4]) == ["CLS_SERVING"] * 4
    assert prefix(mgr, [1, 2, 3, 4]) == res.locations
    assert mgr.num_open_sessions() == 0


def test_finish_failures(mgr: CacheManager) -> None:
    """Client TestFinishWriteCacheFail, with kvsim's fix: a bad mask leaves the session open."""
    res = start(mgr, [1, 2, 3, 4])
    with pytest.raises(CacheError) as err:
        finish(mgr, "no-such-session", BlockMask(offset=4))
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert err.value.message == (
        "write_session_id: session 'no-such-session' does not exist (unknown, finished or expired)"
    )
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, True)))
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_blocks.bool_masks: has 2 values, the session has 4 blocks",
    )
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(offset=6))
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_blocks.offset: 6 is past the 4 blocks of the session",
    )
    assert statuses(mgr, [1, 2, 3, 4]) == ["CLS_WRITING"] * 4
    out = finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, False, True, False)))
    assert (out.num_serving, out.num_failed) == (2, 2)  # type: ignore[attr-defined]
    assert statuses(mgr, [1, 2, 3, 4]) == ["CLS_SERVING", "CLS_DELETING", "CLS_SERVING", "CLS_DELETING"]
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(offset=4))
    assert err.value.code == ErrorCode.INTERNAL_ERROR  # already finished
    assert mgr.num_pending_deletions() == 2
    poll = mgr.poll()
    assert (poll.expired_sessions, poll.deleted_locations, poll.deleted_keys) == (0, 2, 2)
    assert statuses(mgr, [1, 2, 3, 4]) == ["CLS_SERVING", "CLS_NOT_FOUND", "CLS_SERVING", "CLS_NOT_FOUND"]
    assert mgr.backend("nfs_01").used_bytes == 2 * 1024  # type: ignore[attr-defined]


def test_finish_needs_session_id_and_mask(mgr: CacheManager) -> None:
    res = start(mgr, [1])
    with pytest.raises(CacheError, match="write_session_id: is required"):
        finish(mgr, "", BlockMask(offset=1))
    with pytest.raises(CacheError, match="success_blocks: is required"):
        finish(mgr, res.write_session_id, None)  # type: ignore[arg-type]
    register(mgr, "i2")
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(offset=1), instance_id="i2")
    assert err.value.code == ErrorCode.INTERNAL_ERROR  # a session belongs to its instance


def test_empty_bool_mask_means_nothing_written(mgr: CacheManager) -> None:
    res = start(mgr, [9])
    out = finish(mgr, res.write_session_id, BlockMask(offset=0))
    assert (out.num_serving, out.num_failed) == (0, 1)  # type: ignore[attr-defined]
    empty = start(mgr, [9])  # DELETING still counts as cached until the next poll
    assert (empty.block_mask, empty.locations) == (BlockMask(offset=1), ())
    mgr.poll()
    assert start(mgr, [9]).block_mask == BlockMask(offset=0)


def test_session_expiry(mgr: CacheManager, clock: ManualClock) -> None:
    res = start(mgr, [1, 2], timeout=30)
    nothing = start(mgr, [1, 2], timeout=300)  # nothing to write: forced to 10 s
    assert nothing.locations == ()
    assert mgr.next_deadline() == T0 + 10
    clock.set(T0 + 10)
    assert mgr.poll().expired_sessions == 0  # a deadline is inclusive
    clock.set(T0 + 10.5)
    assert mgr.poll().expired_sessions == 1
    assert mgr.next_deadline() == T0 + 30
    clock.set(T0 + 30.5)
    # Overdue but not yet polled: finishing fails and changes nothing; poll then expires it.
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(offset=2))
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert statuses(mgr, [1, 2]) == ["CLS_WRITING", "CLS_WRITING"]
    poll = mgr.poll()
    assert (poll.expired_sessions, poll.deleted_locations, poll.deleted_keys) == (1, 2, 2)
    assert statuses(mgr, [1, 2]) == ["CLS_NOT_FOUND", "CLS_NOT_FOUND"]
    assert mgr.next_deadline() is None
    assert mgr.backend("nfs_01").used_bytes == 0  # type: ignore[attr-defined]


def test_zero_timeout_expires_as_soon_as_time_moves(mgr: CacheManager, clock: ManualClock) -> None:
    kept = start(mgr, [1], timeout=0)
    finish(mgr, kept.write_session_id, BlockMask(offset=1))  # same instant: still open
    res = start(mgr, [2], timeout=0)
    assert mgr.poll().expired_sessions == 0
    clock.advance(0.001)
    assert mgr.poll().expired_sessions == 1
    with pytest.raises(CacheError):
        finish(mgr, res.write_session_id, BlockMask(offset=1))


def test_poll_with_explicit_time(mgr: CacheManager) -> None:
    start(mgr, [1], timeout=5)
    assert mgr.poll(T0 + 5).expired_sessions == 0
    assert mgr.poll(T0 + 5.01).expired_sessions == 1


def test_duplicate_keys_in_one_request_get_two_locations(mgr: CacheManager) -> None:
    res = start(mgr, [7, 7])
    assert res.block_mask == BlockMask(offset=0) and len(res.locations) == 2
    assert res.locations[0] != res.locations[1]
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(False, True)))
    assert prefix(mgr, [7]) == res.locations[1:]
    mgr.poll()
    assert prefix(mgr, [7]) == res.locations[1:]


def spec_group_instance(mgr: CacheManager, sizes: tuple[int, int, int, int] = (64, 64, 64, 64)) -> None:
    register(
        mgr,
        specs=list(zip(["tp0_F0", "tp1_F0", "tp0_L1", "tp1_L1"], sizes, strict=True)),
        spec_groups=[("F0", ["tp0_F0", "tp1_F0"]), ("F0L1", ["tp1_L1", "tp0_F0", "tp1_F0", "tp0_L1"])],
    )


def test_spec_groups_allocate_only_their_specs(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    spec_group_instance(mgr)
    res = start(mgr, [11, 12, 13], groups=["F0", "F0", "F0L1"])
    assert [loc.spec_size for loc in res.locations] == [2, 2, 4]
    assert [[s.name for s in loc.location_specs] for loc in res.locations] == [
        ["tp0_F0", "tp1_F0"],
        ["tp0_F0", "tp1_F0"],
        ["tp0_F0", "tp1_F0", "tp0_L1", "tp1_L1"],
    ]
    # Equal spec sizes: one create call, spec-major, 8 blocks per file.
    keys = ["i1/tp0_F0/b", "i1/tp0_F0/c", "i1/tp0_F0/d", "i1/tp1_F0/b", "i1/tp1_F0/c", "i1/tp1_F0/d"]
    keys += ["i1/tp0_L1/d", "i1/tp1_L1/d"]
    f = nfs_file(*keys)
    assert uris(res.locations) == [
        [f"{f}?blkid=0&size=64", f"{f}?blkid=3&size=64"],
        [f"{f}?blkid=1&size=64", f"{f}?blkid=4&size=64"],
        [f"{f}?blkid=2&size=64", f"{f}?blkid=5&size=64", f"{f}?blkid=6&size=64", f"{f}?blkid=7&size=64"],
    ]
    finish(mgr, res.write_session_id, BlockMask(offset=3))
    assert mgr.backend("nfs_01").used_bytes == 8 * 64  # type: ignore[attr-defined]


def test_unequal_spec_sizes_use_one_create_per_spec(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr, specs=[("tp0", 100), ("tp1", 200)])
    res = start(mgr, [1, 2])
    f0 = nfs_file("i1/tp0/1", "i1/tp0/2")
    f1 = nfs_file("i1/tp1/1", "i1/tp1/2")
    assert uris(res.locations) == [
        [f"{f0}?blkid=0&size=100", f"{f1}?blkid=0&size=200"],
        [f"{f0}?blkid=1&size=100", f"{f1}?blkid=1&size=200"],
    ]


def test_three_blocks_of_two_ranks_share_one_file(clock: ManualClock) -> None:
    """§2.5: tp1's blocks follow tp0's in the same file (blkid 3..5)."""
    mgr = make_manager(clock)
    register(mgr, specs=[("tp0", 64), ("tp1", 64)])
    res = start(mgr, [1, 2, 3])
    f = nfs_file("i1/tp0/1", "i1/tp0/2", "i1/tp0/3", "i1/tp1/1", "i1/tp1/2", "i1/tp1/3")
    assert [spec.uri for spec in res.locations[2].location_specs] == [
        f"{f}?blkid=2&size=64",
        f"{f}?blkid=5&size=64",
    ]


def test_spec_group_errors(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    spec_group_instance(mgr)
    with pytest.raises(CacheError) as err:
        start(mgr, [1, 2], groups=["F0"])
    assert err.value.message == "location_spec_group_names: has 1 names for 2 keys"
    with pytest.raises(CacheError) as err:
        start(mgr, [1, 2], groups=["F0", "XX"])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "location_spec_group_names: unknown spec group 'XX'",
    )
    assert mgr.num_open_sessions() == 0 and statuses(mgr, [1]) == ["CLS_NOT_FOUND"]


def with_group(mgr: CacheManager, **changes: object) -> None:
    group = mgr.get_instance_group("default")
    mgr.update_instance_group(dataclasses.replace(group, version=group.version + 1, **changes), group.version)


def test_group_quota_refuses_writes_when_full(mgr: CacheManager) -> None:
    with_group(mgr, quota=InstanceGroupQuota(capacity=2 * 1024))
    write(mgr, [1])
    write(mgr, [2])  # used 1024 < 2048 before this write
    with pytest.raises(CacheError) as err:
        start(mgr, [3])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "instance group 'default' is over its quota: 2048 of 2048 bytes used",
    )
    # Keys already cached need no room.
    assert start(mgr, [1, 2]).block_mask == BlockMask(offset=2)


def test_per_type_quota_excludes_the_type(mgr: CacheManager) -> None:
    with_group(
        mgr, quota=InstanceGroupQuota(capacity=10**9, quota_config=(QuotaConfig(StorageType.ST_NFS, 1024),))
    )
    write(mgr, [1])
    with pytest.raises(CacheError) as err:
        start(mgr, [2])
    assert err.value.message == "instance group 'default': no available storage within its quotas"


def test_max_key_count(mgr: CacheManager) -> None:
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    mic = dataclasses.replace(group.cache_config.meta_indexer_config, max_key_count=3)
    with_group(mgr, cache_config=dataclasses.replace(group.cache_config, meta_indexer_config=mic))
    write(mgr, [1, 2])
    with pytest.raises(CacheError) as err:
        start(mgr, [3, 4])
    assert err.value.message == "instance 'i1': 2 keys + 2 new exceed max_key_count 3"
    assert len(start(mgr, [1, 2, 3]).locations) == 1


def test_preference_strategies(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("mc", MooncakeStorageSpec("h", "http://meta", "tcp", "", "m:1")))
    mgr.add_storage(StorageConfig("3fs", ThreeFSStorageSpec("", "/3fs/", "kv/", 1)))
    register(mgr)
    base = default_instance_group()
    assert base.cache_config is not None

    def use(strategy: CachePreferStrategy, candidates: tuple[str, ...]) -> None:
        cc = dataclasses.replace(base.cache_config, data_storage_strategy=strategy)  # type: ignore[arg-type]
        with_group(mgr, cache_config=cc, storage_candidates=candidates)

    use(CachePreferStrategy.CPS_PREFER_MOONCAKE, ("nfs_01", "mc"))
    assert uris(start(mgr, [1]).locations) == [["mooncake://mc/?key=i1/tp0/1&size=1024"]]
    use(CachePreferStrategy.CPS_PREFER_3FS, ("nfs_01", "mc"))  # no 3FS candidate: the first one
    assert start(mgr, [2]).locations[0].type == StorageType.ST_NFS
    use(CachePreferStrategy.CPS_ALWAYS_3FS, ("nfs_01", "3fs"))
    assert uris(start(mgr, [3]).locations) == [["hf3fs://3fs/3fs/kv/i1/tp0/3?size=1024"]]
    use(CachePreferStrategy.CPS_ALWAYS_3FS, ("nfs_01", "mc"))
    with pytest.raises(CacheError) as err:
        start(mgr, [4])
    assert err.value.message == "instance group 'default': CPS_ALWAYS_3FS but no available ST_3FS storage"
    mgr.disable_storage("nfs_01")
    use(CachePreferStrategy.CPS_PREFER_3FS, ("nfs_01", "mc"))
    assert start(mgr, [5]).locations[0].type == StorageType.ST_MOONCAKE


def test_no_storage_available(mgr: CacheManager) -> None:
    mgr.add_storage(StorageConfig("other", NfsStorageSpec("/o/", 1)))
    mgr.disable_storage("nfs_01")
    # `other` is available but not a candidate of the group.
    with pytest.raises(CacheError) as err:
        start(mgr, [1])
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    mgr.disable_storage("other")
    with pytest.raises(CacheError, match="all storages of instance group 'default' are unavailable"):
        start(mgr, [1])


def test_negative_timeout_is_invalid(mgr: CacheManager) -> None:
    with pytest.raises(CacheError) as err:
        start(mgr, [1], timeout=-1)
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "write_timeout_seconds: must be >= 0, got -1",
    )
    assert mgr.num_open_sessions() == 0
