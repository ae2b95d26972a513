"""GetCacheLocation and GetCacheMeta: the reference's matching examples (§2.3, §7) with exact results."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheLocation,
    CacheManager,
    ErrorCode,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    LocationSpec,
    NfsStorageSpec,
    QueryType,
    StartWriteCacheRequest,
    StorageConfig,
    StorageType,
    default_instance_group,
)
from kvsim.cache.keys import block_keys
from kvsim.core import ManualClock

from .conftest import finish, make_manager, prefix, register, start, uris, write

PM, BG, SW = QueryType.QT_PREFIX_MATCH, QueryType.QT_BATCH_GET, QueryType.QT_REVERSE_ROLL_SW_MATCH


def get(
    mgr: CacheManager, keys: list[int], qt: QueryType = PM, **kwargs: object
) -> tuple[CacheLocation, ...]:
    req = GetCacheLocationRequest(instance_id="i1", query_type=qt, block_keys=keys, **kwargs)  # type: ignore[arg-type]
    return mgr.get_cache_location(req).locations


def test_basic_smoke(mgr: CacheManager) -> None:
    """§7 meta test_basic_smoke: token ids are ignored when block keys are given."""
    res = mgr.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", block_keys=[123], token_ids=[456], write_timeout_seconds=30)
    )
    assert res.block_mask == BlockMask(offset=0)
    assert uris(res.locations) == [["file://nfs_01/tmp/nfs/i1/tp0/7b?blkid=0&size=1024"]]
    assert res.locations[0].type == StorageType.ST_NFS and res.locations[0].spec_size == 1
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True,)))
    assert prefix(mgr, [123], BlockMask(offset=0)) == res.locations


def test_get_cache_location_meta_cases(mgr: CacheManager) -> None:
    """§7 meta test_get_cache_location."""
    with pytest.raises(CacheError) as err:
        mgr.get_cache_location(GetCacheLocationRequest(instance_id="nope", query_type=PM, block_keys=[1]))
    assert err.value.code == ErrorCode.INSTANCE_NOT_EXIST
    assert prefix(mgr, [424242]) == ()
    write(mgr, [100, 101, 102])
    assert len(prefix(mgr, [100, 101, 102])) == 3
    assert prefix(mgr, [100, 101, 102], BlockMask(bool_masks=(True, True, True))) == ()


@pytest.fixture
def two_serving(mgr: CacheManager) -> CacheManager:
    """Keys 1 and 2 SERVING; 3 and 4 not cached (the client test's setup)."""
    write(mgr, [1, 2])
    return mgr


def test_prefix_match_examples(two_serving: CacheManager) -> None:
    mgr = two_serving
    key1, key2 = get(mgr, [1]), get(mgr, [2])
    assert get(mgr, [1, 2, 3, 4], block_mask=BlockMask(offset=0)) == key1 + key2
    assert get(mgr, [1, 2, 3], block_mask=BlockMask(offset=1)) == key2
    assert get(mgr, [1, 2, 3], block_mask=BlockMask(offset=6)) == ()
    assert get(mgr, [1, 2, 3], block_mask=BlockMask(bool_masks=(True, False, False, False))) == key2
    assert get(mgr, [1, 2, 3], block_mask=BlockMask(bool_masks=(True, True, True))) == ()
    # The match stops at the first miss, even when later keys are cached.
    assert get(mgr, [1, 3, 2]) == key1
    assert get(mgr, [3, 1, 2]) == ()


def test_prefix_match_ignores_writing_blocks(mgr: CacheManager) -> None:
    res = start(mgr, [5, 6])
    assert get(mgr, [5, 6]) == ()
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, False)))
    assert get(mgr, [5, 6]) == res.locations[:1]


def test_batch_get_fills_misses_with_empty_uris_and_ignores_the_mask(two_serving: CacheManager) -> None:
    mgr = two_serving
    hole = CacheLocation(StorageType.ST_UNSPECIFIED, 1, (LocationSpec("tp0", ""),))
    key1, key2 = get(mgr, [1]), get(mgr, [2])
    assert get(mgr, [3, 1, 9, 2], BG) == (hole, *key1, hole, *key2)
    assert get(mgr, [3, 1], BG, block_mask=BlockMask(offset=2)) == (hole, *key1)


def test_reverse_roll_sliding_window_examples(mgr: CacheManager) -> None:
    write(mgr, [1, 2, 3, 4, 5])
    hole = CacheLocation(StorageType.ST_UNSPECIFIED, 1, (LocationSpec("tp0", ""),))
    by_key = {k: get(mgr, [k])[0] for k in range(1, 6)}
    got = get(mgr, [1, 2, 3, 4, 5, 6, 7], SW, sw_size=2)
    assert got == (hole, hole, hole, by_key[4], by_key[5], hole, hole)
    got = get(mgr, [1, 2, 3, 10, 5, 6, 7], SW, sw_size=2)
    assert got == (hole, by_key[2], by_key[3], hole, hole, hole, hole)
    # The whole query as one window, and no window at all.
    assert get(mgr, [1, 2, 3], SW, sw_size=3) == (by_key[1], by_key[2], by_key[3])
    assert get(mgr, [1, 9, 2, 9], SW, sw_size=2) == (hole,) * 4
    # The mask is ignored by this query type, as in the reference.
    assert get(mgr, [4, 5], SW, sw_size=1, block_mask=BlockMask(offset=2)) == (hole, by_key[5])


def test_location_spec_names_keeps_only_named_specs(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr, specs=[("tp0", 512), ("tp1", 512)])
    res = write(mgr, [7, 8])
    loc7 = res.locations[0]
    assert [s.name for s in loc7.location_specs] == ["tp0", "tp1"]
    got = get(mgr, [7, 8, 9], BG, location_spec_names=("tp1",))
    assert got == (
        CacheLocation(StorageType.ST_NFS, 2, (loc7.location_specs[1],)),
        CacheLocation(StorageType.ST_NFS, 2, (res.locations[1].location_specs[1],)),
        CacheLocation(StorageType.ST_UNSPECIFIED, 2, (LocationSpec("tp1", ""),)),
    )
    with pytest.raises(CacheError) as err:
        get(mgr, [7], location_spec_names=("tp7",))
    assert err.value.message == "location_spec_names: unknown spec 'tp7' of instance 'i1'"


def test_token_ids_are_hashed_with_the_instance_block_size(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr, block_size=4)
    tokens = list(range(100, 118))  # 4 full blocks and 2 leftover tokens
    res = mgr.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", token_ids=tokens, write_timeout_seconds=5)
    )
    assert len(res.locations) == 4
    finish(mgr, res.write_session_id, BlockMask(offset=4))
    keys = block_keys(tokens, 4)
    assert keys == [455133539818735372, -2006179887927315835, 792400745231118672, 6878879441880428884]
    assert get(mgr, keys) == res.locations
    by_tokens = mgr.get_cache_location(
        GetCacheLocationRequest(
            instance_id="i1", query_type=PM, token_ids=tokens[:9], block_mask=BlockMask(offset=1)
        )
    )
    assert by_tokens.locations == res.locations[1:2]


def test_weighted_choice_is_drawn_from_the_seeded_rng(clock: ManualClock) -> None:
    def draws(seed: int) -> list[str]:
        mgr = make_manager(ManualClock(0.0), seed)
        register(mgr)
        res = start(mgr, [5, 5])  # a key repeated in one request gets two locations
        finish(mgr, res.write_session_id, BlockMask(offset=2))
        return [get(mgr, [5])[0].location_specs[0].uri for _ in range(400)]

    first = draws(0)
    assert draws(0) == first
    assert draws(1) != first
    counts = Counter(first)
    assert len(counts) == 2 and min(counts.values()) > 150  # both NFS: weight 5 each, about half


def add_second_nfs(mgr: CacheManager) -> None:
    mgr.add_storage(StorageConfig("nfs_02", NfsStorageSpec("/tmp/nfs2/", 1)))
    group = default_instance_group()
    mgr.update_instance_group(
        dataclasses.replace(group, storage_candidates=("nfs_01", "nfs_02"), version=1), current_version=0
    )


def test_disabled_storage_locations_are_not_read(mgr: CacheManager) -> None:
    write(mgr, [1])
    mgr.disable_storage("nfs_01")
    with pytest.raises(CacheError) as err:
        get(mgr, [1])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "all storages of instance group 'default' are unavailable",
    )
    add_second_nfs(mgr)
    # Two NFS storages in the group, one available: by name, so nfs_01's location has weight 0.
    assert get(mgr, [1]) == ()
    res = write(mgr, [2])
    assert uris(res.locations) == [["file://nfs_02/tmp/nfs2/i1/tp0/2?size=1024"]]
    assert get(mgr, [2]) == res.locations
    mgr.enable_storage("nfs_01")
    assert len(get(mgr, [1, 2])) == 2


def test_get_cache_meta(mgr: CacheManager) -> None:
    res = start(mgr, [1, 2])
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, False)))
    meta = mgr.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=[1, 2, 3, 4]))
    assert meta.locations == (res.locations[0], res.locations[1], CacheLocation(), CacheLocation())
    (m1, m2, m3, m4) = meta.metas
    assert re.fullmatch(r'\{"id":"[a-z0-9]{8}","status":"CLS_SERVING"\}', m1)
    assert re.fullmatch(r'\{"id":"[a-z0-9]{8}","status":"CLS_DELETING"\}', m2)
    assert m3 == m4 == '{"status":"CLS_NOT_FOUND"}'  # no stale id
    masked = mgr.get_cache_meta(
        GetCacheMetaRequest(
            instance_id="i1", block_keys=[1, 2, 3], block_mask=BlockMask(bool_masks=(True, False))
        )
    )
    assert masked.metas == (m2, m3)
    assert (
        mgr.get_cache_meta(
            GetCacheMetaRequest(instance_id="i1", block_keys=[1], block_mask=BlockMask(offset=5))
        ).metas
        == ()
    )
