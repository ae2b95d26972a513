"""One test per row of ../shared/COMPAT.md that this layer owns: what kvsim keeps and what it fixes."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    GetInstanceInfoRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    RemoveCacheRequest,
    StartWriteCacheRequest,
    TrimCacheRequest,
    TrimStrategy,
    simulated_backend_factory,
)
from kvsim.cache.store import KeyRecord, MemoryStore, StoreError
from kvsim.core import ManualClock, make_rng

from .conftest import T0, finish, make_manager, prefix, register, start, write


def error(fn: object, request: object) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(request)  # type: ignore[operator]
    return err.value.code, err.value.message


def meta_status(mgr: CacheManager, key: int) -> str:
    meta = mgr.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=[key])).metas[0]
    return meta.split('"status":"')[1].rstrip('"}')


def test_error_codes_keep_wire_numbers() -> None:
    assert (ErrorCode.OK, ErrorCode.INTERNAL_ERROR, ErrorCode.INVALID_ARGUMENT) == (1, 3, 5)
    assert (ErrorCode.DUPLICATE_ENTITY, ErrorCode.INSTANCE_NOT_EXIST, ErrorCode.SERVER_NOT_LEADER) == (
        6,
        8,
        9,
    )
    assert ErrorCode.UNSUPPORTED == 2


@pytest.mark.parametrize("instance_id", ["", "ghost"])
def test_keep_unknown_or_empty_instance_is_instance_not_exist(mgr: CacheManager, instance_id: str) -> None:
    requests = [
        (mgr.get_cache_meta, GetCacheMetaRequest(instance_id=instance_id, block_keys=[1])),
        (mgr.get_cache_location, GetCacheLocationRequest(instance_id=instance_id)),  # before any validation
        (mgr.start_write_cache, StartWriteCacheRequest(instance_id=instance_id, block_keys=[1])),
        (mgr.finish_write_cache, FinishWriteCacheRequest(instance_id=instance_id)),
        (mgr.remove_cache, RemoveCacheRequest(instance_id=instance_id, block_keys=[1])),
        (mgr.trim_cache, TrimCacheRequest(instance_id=instance_id)),
    ]
    for fn, req in requests:
        assert error(fn, req)[0] == ErrorCode.INSTANCE_NOT_EXIST


def test_keep_get_instance_info_unknown_is_instance_not_exist(mgr: CacheManager) -> None:
    assert error(mgr.get_instance_info, GetInstanceInfoRequest(instance_id="ghost")) == (
        ErrorCode.INSTANCE_NOT_EXIST,
        "instance_id: instance 'ghost' does not exist",
    )


def test_keep_duplicate_register_is_duplicate_entity(mgr: CacheManager) -> None:
    with pytest.raises(CacheError) as err:
        register(mgr, "i1", block_size=64)
    assert err.value.code == ErrorCode.DUPLICATE_ENTITY


def test_keep_validation_is_invalid_argument_naming_the_field(mgr: CacheManager) -> None:
    code, message = error(
        mgr.get_cache_location, GetCacheLocationRequest(instance_id="i1", query_type=QueryType.QT_BATCH_GET)
    )
    assert (code, message) == (
        ErrorCode.INVALID_ARGUMENT,
        "block_keys: block_keys or token_ids must be non-empty",
    )


def test_fix_query_type_is_required(mgr: CacheManager) -> None:
    code, message = error(mgr.get_cache_location, GetCacheLocationRequest(instance_id="i1", block_keys=[1]))
    assert code == ErrorCode.INVALID_ARGUMENT
    assert message == "query_type: is required: QT_PREFIX_MATCH, QT_BATCH_GET or QT_REVERSE_ROLL_SW_MATCH"


@pytest.mark.parametrize("sw_size", [0, -1, 4])
def test_fix_sw_size_out_of_range(mgr: CacheManager, sw_size: int) -> None:
    req = GetCacheLocationRequest(
        instance_id="i1", query_type=QueryType.QT_REVERSE_ROLL_SW_MATCH, block_keys=[1, 2, 3], sw_size=sw_size
    )
    assert error(mgr.get_cache_location, req) == (
        ErrorCode.INVALID_ARGUMENT,
        f"sw_size: must be in [1, 3] for 3 keys, got {sw_size}",
    )


@pytest.mark.parametrize("block_size", [0, -1])
def test_fix_block_size_must_be_positive(clock: ManualClock, block_size: int) -> None:
    mgr = make_manager(clock)
    req = RegisterInstanceRequest(
        instance_group="default",
        instance_id="i1",
        block_size=block_size,
        location_spec_infos=(LocationSpecInfo("tp0", 8),),
        model_deployment=ModelDeployment("m", "bf16"),
    )
    assert error(mgr.register_instance, req) == (
        ErrorCode.INVALID_ARGUMENT,
        f"block_size: must be >= 1, got {block_size}",
    )


def test_fix_wrong_length_mask_leaves_the_session_intact(mgr: CacheManager) -> None:
    res = start(mgr, [1, 2, 3, 4])
    with pytest.raises(CacheError) as err:
        finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, True)))
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert mgr.num_open_sessions() == 1
    out = finish(mgr, res.write_session_id, BlockMask(offset=4))
    assert out.num_serving == 4  # type: ignore[attr-defined]


def test_fix_success_on_a_deleting_location_stays_deleting(mgr: CacheManager) -> None:
    res = start(mgr, [1])
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    out = finish(mgr, res.write_session_id, BlockMask(offset=1))
    assert (out.num_serving, out.num_failed) == (0, 1)  # type: ignore[attr-defined]
    assert meta_status(mgr, 1) == "CLS_DELETING"
    assert prefix(mgr, [1]) == ()


def test_fix_allocation_failure_releases_everything(clock: ManualClock) -> None:
    # tp0 (100 B) and tp1 (200 B) need two create calls; 250 B fit the first call only.
    mgr = make_manager(clock, backend_factory=simulated_backend_factory(default_capacity=250))
    register(mgr, specs=[("tp0", 100), ("tp1", 200)])
    with pytest.raises(CacheError) as err:
        start(mgr, [1, 2])
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert err.value.message.startswith("storage 'nfs_01': allocation failed: storage 'nfs_01' is full")
    assert mgr.backend("nfs_01").used_bytes == 0  # type: ignore[attr-defined]
    assert mgr.num_open_sessions() == 0 and meta_status(mgr, 1) == "CLS_NOT_FOUND"


class FlakyStore(MemoryStore):
    """A memory store whose next meta write (or, with ``fail_reads``, every meta read) fails."""

    fail_next = False
    fail_reads = False

    def meta_get(self, instance_id: str, keys: Sequence[int]) -> list[KeyRecord | None]:
        if self.fail_reads:
            raise StoreError("connection lost")
        return super().meta_get(instance_id, keys)

    def meta_write(
        self, instance_id: str, upserts: Mapping[int, KeyRecord], deletes: Collection[int] = ()
    ) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StoreError("disk full")
        super().meta_write(instance_id, upserts, deletes)


def test_fix_store_failure_after_allocation_releases_storage(clock: ManualClock) -> None:
    store = FlakyStore()
    mgr = make_manager(clock, store=store)
    register(mgr)
    store.fail_next = True
    with pytest.raises(CacheError) as err:
        start(mgr, [1, 2])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "start_write_cache: meta store failed: disk full",
    )
    assert mgr.backend("nfs_01").used_bytes == 0  # type: ignore[attr-defined]
    assert mgr.num_open_sessions() == 0


def test_fix_finish_store_failure_keeps_the_session(clock: ManualClock) -> None:
    store = FlakyStore()
    mgr = make_manager(clock, store=store)
    register(mgr)
    res = start(mgr, [1])
    store.fail_next = True
    with pytest.raises(CacheError):
        finish(mgr, res.write_session_id, BlockMask(offset=1))
    assert mgr.num_open_sessions() == 1 and meta_status(mgr, 1) == "CLS_WRITING"
    finish(mgr, res.write_session_id, BlockMask(offset=1))
    assert meta_status(mgr, 1) == "CLS_SERVING"


def test_store_read_failures_are_internal_errors_and_poll_retries(clock: ManualClock) -> None:
    store = FlakyStore()
    mgr = make_manager(clock, store=store)
    register(mgr)
    res = start(mgr, [1, 2], timeout=1)
    store.fail_reads = True
    with pytest.raises(CacheError) as err:
        prefix(mgr, [1])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "get_cache_location: meta store failed: connection lost",
    )
    clock.advance(2)
    assert mgr.poll().expired_sessions == 0  # the store failed: kept for a retry
    assert mgr.num_open_sessions() == 1
    store.fail_reads = False
    poll = mgr.poll()
    assert (poll.expired_sessions, poll.deleted_keys) == (1, 2)
    with pytest.raises(CacheError):
        finish(mgr, res.write_session_id, BlockMask(offset=2))


def test_fix_spec_group_length_is_checked_against_derived_keys(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr, block_size=2, specs=[("a", 8), ("b", 8)], spec_groups=[("A", ["a"]), ("AB", ["a", "b"])])
    tokens = [1, 2, 3, 4, 5]  # two full blocks
    res = mgr.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", token_ids=tokens, location_spec_group_names=("A", "AB"))
    )
    assert [loc.spec_size for loc in res.locations] == [1, 2]
    with pytest.raises(CacheError) as err:
        mgr.start_write_cache(
            StartWriteCacheRequest(instance_id="i1", token_ids=tokens, location_spec_group_names=("A",))
        )
    assert err.value.message == "location_spec_group_names: has 1 names for 2 keys"


def test_extend_list_instance_info_with_empty_group_lists_all(mgr: CacheManager) -> None:
    register(mgr, "i0")
    assert [i.instance_id for i in mgr.list_instance_info("")] == ["i0", "i1"]


def test_extend_trim_strategies(mgr: CacheManager, clock: ManualClock) -> None:
    write(mgr, [1, 2])
    clock.advance(100)
    write(mgr, [3])
    t = int(T0)
    res = mgr.trim_cache(
        TrimCacheRequest(
            instance_id="i1", strategy=TrimStrategy.TS_TIMESTAMP, begin_timestamp=t, end_timestamp=t + 1
        )
    )
    assert (res.num_keys, res.num_locations) == (2, 2)
    mgr.poll()
    res = mgr.trim_cache(TrimCacheRequest(instance_id="i1", strategy=TrimStrategy.TS_REMOVE_ALL_META))
    assert (res.num_keys, res.num_locations) == (1, 1)
    assert mgr.backend("nfs_01").used_bytes == 1024  # type: ignore[attr-defined]  # storage kept


def test_extend_config_snapshots(mgr: CacheManager, clock: ManualClock) -> None:
    snapshot = mgr.gen_config_snapshot()
    other = make_manager(ManualClock(0.0), defaults=False)
    other.load_config_snapshot(snapshot)
    assert other.gen_config_snapshot() == snapshot


def test_fix_accounts_store_salted_hashes() -> None:
    calls: list[int] = []

    def salts(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    mgr = CacheManager(ManualClock(0.0), make_rng(0), salt_source=salts, password_iterations=10)
    mgr.add_account("a", "same-password")
    mgr.add_account("b", "same-password")
    assert calls == [16, 16]
    records = mgr.store.registry_load()["account"]
    assert "same-password" not in records["a"] + records["b"]
    hash_a = mgr._registry.accounts["a"].password_hash
    hash_b = mgr._registry.accounts["b"].password_hash
    assert hash_a.startswith("pbkdf2_sha256$10$" + "01" * 16 + "$")
    assert hash_b.startswith("pbkdf2_sha256$10$" + "02" * 16 + "$")
    assert hash_a.split("$")[3] != hash_b.split("$")[3]  # different salts, different hashes
    assert mgr.verify_account("a", "same-password") is not None


def test_fix_restart_turns_writing_into_deleting(clock: ManualClock) -> None:
    store = MemoryStore()
    first = make_manager(clock, store=store)
    register(first)
    write(first, [5])
    start(first, [6, 7])
    first.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[6]))  # DELETING, never polled
    restarted = CacheManager(clock, make_rng(0), store=store)
    assert [meta_status(restarted, k) for k in (5, 6, 7)] == ["CLS_SERVING", "CLS_DELETING", "CLS_DELETING"]
    assert restarted.num_pending_deletions() == 2
    assert restarted.poll().deleted_keys == 2
    assert [meta_status(restarted, k) for k in (5, 6, 7)] == ["CLS_SERVING", "CLS_NOT_FOUND", "CLS_NOT_FOUND"]


def test_fix_reads_count_as_access_and_are_persisted_lazily(mgr: CacheManager, clock: ManualClock) -> None:
    write(mgr, [1])
    clock.advance(50)
    prefix(mgr, [1])
    assert mgr.store.meta_get("i1", [1])[0].last_access == T0  # type: ignore[union-attr]
    mgr.poll()
    assert mgr.store.meta_get("i1", [1])[0].last_access == T0 + 50  # type: ignore[union-attr]
