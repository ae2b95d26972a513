"""RemoveCache and TrimCache (all three strategies), access statistics and deletion through poll."""

from __future__ import annotations

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    ErrorCode,
    GetCacheMetaRequest,
    RemoveCacheRequest,
    TrimCacheRequest,
    TrimStrategy,
)
from kvsim.core import ManualClock

from .conftest import T0, finish, prefix, start, write


def statuses(mgr: CacheManager, keys: list[int]) -> list[str]:
    metas = mgr.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=keys)).metas
    return [m.split('"status":"')[1].rstrip('"}') for m in metas]


def trim(mgr: CacheManager, strategy: TrimStrategy, begin: int = 0, end: int = 0) -> tuple[int, int]:
    res = mgr.trim_cache(
        TrimCacheRequest(instance_id="i1", strategy=strategy, begin_timestamp=begin, end_timestamp=end)
    )
    return res.num_keys, res.num_locations


def test_remove_cache_marks_deleting_then_poll_deletes(mgr: CacheManager) -> None:
    write(mgr, [1, 2, 3])
    res = mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2, 3, 99]))
    assert (res.num_keys, res.num_locations) == (2, 2)
    assert statuses(mgr, [1, 2, 3]) == ["CLS_SERVING", "CLS_DELETING", "CLS_DELETING"]
    assert prefix(mgr, [1, 2, 3]) != () and len(prefix(mgr, [1, 2, 3])) == 1
    # Removing again finds nothing new to mark.
    again = mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2, 3]))
    assert (again.num_keys, again.num_locations) == (2, 0)
    poll = mgr.poll()
    assert (poll.deleted_locations, poll.deleted_keys) == (2, 2)
    assert statuses(mgr, [1, 2, 3]) == ["CLS_SERVING", "CLS_NOT_FOUND", "CLS_NOT_FOUND"]
    assert mgr.backend("nfs_01").used_bytes == 1024  # type: ignore[attr-defined]


def test_remove_cache_of_a_writing_block_wins_over_finish(mgr: CacheManager) -> None:
    res = start(mgr, [5, 6])
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[5]))
    out = finish(mgr, res.write_session_id, BlockMask(offset=2))
    assert (out.num_serving, out.num_failed) == (1, 1)  # type: ignore[attr-defined]
    assert statuses(mgr, [5, 6]) == ["CLS_DELETING", "CLS_SERVING"]
    mgr.poll()
    assert statuses(mgr, [5, 6]) == ["CLS_NOT_FOUND", "CLS_SERVING"]


def test_remove_cache_ignores_the_mask_and_accepts_tokens(mgr: CacheManager) -> None:
    write(mgr, [1])
    res = mgr.remove_cache(
        RemoveCacheRequest(instance_id="i1", block_keys=[1], block_mask=BlockMask(offset=1))
    )
    assert res.num_locations == 1
    tokens = list(range(256))  # block size 128: 2 keys, none cached
    assert mgr.remove_cache(RemoveCacheRequest(instance_id="i1", token_ids=tokens)).num_keys == 0


def test_trim_remove_all_cache(mgr: CacheManager) -> None:
    write(mgr, [1, 2])
    start(mgr, [3])
    assert trim(mgr, TrimStrategy.TS_REMOVE_ALL_CACHE) == (3, 3)
    assert mgr.poll().deleted_keys == 3
    assert statuses(mgr, [1, 2, 3]) == ["CLS_NOT_FOUND"] * 3
    assert mgr.backend("nfs_01").used_bytes == 0  # type: ignore[attr-defined]


def test_trim_remove_all_meta_keeps_storage(mgr: CacheManager) -> None:
    write(mgr, [1, 2])
    session = start(mgr, [3])
    assert trim(mgr, TrimStrategy.TS_REMOVE_ALL_META) == (3, 3)
    assert statuses(mgr, [1, 2, 3]) == ["CLS_NOT_FOUND"] * 3
    # Storage is not deleted; the open session finishes with every block failed.
    assert mgr.backend("nfs_01").used_bytes == 3 * 1024  # type: ignore[attr-defined]
    out = finish(mgr, session.write_session_id, BlockMask(offset=1))
    assert (out.num_serving, out.num_failed) == (0, 1)  # type: ignore[attr-defined]
    assert start(mgr, [1]).block_mask == BlockMask(offset=0)


def test_trim_by_last_access_time(mgr: CacheManager, clock: ManualClock) -> None:
    write(mgr, [1])  # written at T0
    clock.set(T0 + 10)
    write(mgr, [2])  # written at T0 + 10
    clock.set(T0 + 20)
    write(mgr, [3])
    clock.set(T0 + 30)
    prefix(mgr, [1])  # a read hit moves key 1 to T0 + 30
    t = int(T0)
    assert trim(mgr, TrimStrategy.TS_TIMESTAMP, t, t + 20) == (1, 1)  # only key 2
    assert statuses(mgr, [1, 2, 3]) == ["CLS_SERVING", "CLS_DELETING", "CLS_SERVING"]
    mgr.poll()  # also flushes the buffered access time to the store
    assert trim(mgr, TrimStrategy.TS_TIMESTAMP, t + 30, t + 31) == (1, 1)  # key 1
    assert trim(mgr, TrimStrategy.TS_TIMESTAMP, t, t) == (0, 0)  # empty range
    with pytest.raises(CacheError) as err:
        trim(mgr, TrimStrategy.TS_TIMESTAMP, t + 5, t)
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        f"begin_timestamp: {t + 5} is after end_timestamp {t}",
    )


def test_trim_needs_a_strategy(mgr: CacheManager) -> None:
    with pytest.raises(CacheError) as err:
        trim(mgr, TrimStrategy.TS_UNSPECIFIED)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith("strategy: is required")


def test_access_statistics_are_flushed_lazily(mgr: CacheManager, clock: ManualClock) -> None:
    write(mgr, [1, 2])
    clock.set(T0 + 5)
    prefix(mgr, [1, 2])
    prefix(mgr, [1])
    (r1, r2) = mgr.store.meta_get("i1", [1, 2])
    assert (r1.last_access, r1.access_count) == (T0, 0)  # type: ignore[union-attr]
    mgr.poll()
    (r1, r2) = mgr.store.meta_get("i1", [1, 2])
    assert (r1.last_access, r1.access_count, r2.access_count) == (T0 + 5, 2, 1)  # type: ignore[union-attr]
