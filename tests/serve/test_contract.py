"""The contract suite: every test runs three ways, on the in-process ``CacheManager``, through the gRPC
client and through the HTTP client against a real server (the ``harness`` fixture).

It covers the examples of the reference study's §2 (matching, masks, two-phase write, spec groups, block
keys) and §7 (the integration and client test cases), and the COMPAT.md rows that the wire API carries.
Later issues extend it (leader election: serve II; admin token: serve III; probes and kv_meta: storage
status). Results are compared exactly: the client must return what the manager returns.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from kvsim.cache import (
    Account,
    AccountRole,
    BlockMask,
    CacheConfig,
    CacheError,
    CacheLocation,
    CachePreferStrategy,
    CacheReclaimStrategy,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    GetInstanceInfoRequest,
    InstanceGroup,
    InstanceInfo,
    LocationSpec,
    LocationSpecGroup,
    LocationSpecInfo,
    ModelDeployment,
    NfsStorageSpec,
    QueryType,
    RegisterInstanceRequest,
    RemoveCacheRequest,
    StartWriteCacheRequest,
    StorageConfig,
    StorageType,
    TrimCacheRequest,
    TrimStrategy,
    block_keys,
    default_instance_group,
    default_storage_config,
    simulated_backend_factory,
)

from .conftest import T0, Harness

PM, BG, SW = QueryType.QT_PREFIX_MATCH, QueryType.QT_BATCH_GET, QueryType.QT_REVERSE_ROLL_SW_MATCH
NFS_JSON = (
    '[{"type":"file","is_available":true,"global_unique_name":"nfs_01",'
    '"storage_spec":{"root_path":"/tmp/nfs/","key_count_per_file":8}}]'
)


# ---------------------------------------------------------------------------------------------- helpers


def register(api: Any, instance_id: str = "i1", **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "instance_group": "default",
        "instance_id": instance_id,
        "block_size": 128,
        "location_spec_infos": (LocationSpecInfo("tp0", 1024),),
        "model_deployment": ModelDeployment(model_name="m", dtype="bfloat16", tp_size=1),
    }
    fields.update(overrides)
    return api.register_instance(RegisterInstanceRequest(**fields)).storage_configs  # type: ignore[no-any-return]


def start(api: Any, keys: list[int], timeout: int = 30, instance_id: str = "i1", **kwargs: Any) -> Any:
    return api.start_write_cache(
        StartWriteCacheRequest(
            instance_id=instance_id, block_keys=keys, write_timeout_seconds=timeout, **kwargs
        )
    )


def finish(api: Any, session: str, mask: BlockMask | None, instance_id: str = "i1") -> Any:
    return api.finish_write_cache(
        FinishWriteCacheRequest(instance_id=instance_id, write_session_id=session, success_blocks=mask)
    )


def write(api: Any, keys: list[int], instance_id: str = "i1") -> Any:
    res = start(api, keys, instance_id=instance_id)
    finish(api, res.write_session_id, BlockMask(offset=len(res.locations)), instance_id=instance_id)
    return res


def get(api: Any, keys: list[int], qt: QueryType = PM, **kwargs: Any) -> tuple[CacheLocation, ...]:
    request = GetCacheLocationRequest(instance_id="i1", query_type=qt, block_keys=keys, **kwargs)
    return api.get_cache_location(request).locations  # type: ignore[no-any-return]


def error(fn: Any, *args: Any, **kwargs: Any) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(*args, **kwargs)
    return err.value.code, err.value.message


def statuses(api: Any, keys: list[int]) -> list[str]:
    metas = api.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=keys)).metas
    return [json.loads(m)["status"] for m in metas]


def uris(locations: Any) -> list[list[str]]:
    return [[s.uri for s in loc.location_specs] for loc in locations]


# ---------------------------------------------------------------------------------------------- §7 meta cases


def test_basic_smoke(api: Any) -> None:
    """§7 meta test_basic_smoke: block keys win over token ids; the match equals what was written."""
    register(api)
    res = api.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", block_keys=[123], token_ids=[456], write_timeout_seconds=30)
    )
    assert res.block_mask == BlockMask(offset=0)
    assert uris(res.locations) == [["file://nfs_01/tmp/nfs/i1/tp0/7b?blkid=0&size=1024"]]
    assert (res.locations[0].type, res.locations[0].spec_size) == (StorageType.ST_NFS, 1)
    out = finish(api, res.write_session_id, BlockMask(bool_masks=(True,)))
    assert (out.num_serving, out.num_failed) == (1, 0)
    assert get(api, [123], block_mask=BlockMask(offset=0)) == res.locations


def test_register_instance(api: Any) -> None:
    """§7 meta test_register_instance."""
    assert register(api) == NFS_JSON
    assert json.loads(NFS_JSON)[0]["global_unique_name"] == "nfs_01"
    assert register(api) == NFS_JSON  # identical again: OK
    code, message = error(
        register, api, "i1", model_deployment=ModelDeployment("other", "bfloat16", tp_size=1)
    )
    assert (code, message) == (
        ErrorCode.DUPLICATE_ENTITY,
        "instance_id: 'i1' is already registered with other parameters",
    )
    assert error(register, api, "i2", instance_group="nope") == (
        ErrorCode.INTERNAL_ERROR,
        "instance_group: group 'nope' does not exist",
    )
    assert error(register, api, "i2", location_spec_infos=()) == (
        ErrorCode.INVALID_ARGUMENT,
        "location_spec_infos: needs at least one spec",
    )


def test_get_instance_info(api: Any) -> None:
    """§7 meta test_get_instance_info, and the stored info echoed field by field."""
    assert (
        error(api.get_instance_info, GetInstanceInfoRequest(instance_id="i1"))[0]
        == ErrorCode.INSTANCE_NOT_EXIST
    )
    assert error(api.get_instance_info, GetInstanceInfoRequest(instance_id="")) == (
        ErrorCode.INVALID_ARGUMENT,
        "instance_id: is required",
    )
    model = ModelDeployment(
        "qwen", "fp8", use_mla=True, tp_size=2, dp_size=1, lora_name="l", pp_size=1, extra="x"
    )
    register(
        api,
        block_size=64,
        location_spec_infos=(LocationSpecInfo("tp0", 8), LocationSpecInfo("tp1", 8)),
        model_deployment=dataclasses.replace(model, user_data="u"),
        location_spec_groups=(LocationSpecGroup("z", ("tp1", "tp0")), LocationSpecGroup("a", ("tp0",))),
    )
    res = api.get_instance_info(GetInstanceInfoRequest(trace_id="t", instance_id="i1"))
    assert res.instance_group == "default"
    assert res.instance_info == InstanceInfo(
        quota_group_name="default_quota_group",
        instance_group_name="default",
        instance_id="i1",
        block_size=64,
        location_spec_infos=(LocationSpecInfo("tp0", 8), LocationSpecInfo("tp1", 8)),
        model_deployment=dataclasses.replace(model, user_data="u"),
        location_spec_groups=(LocationSpecGroup("a", ("tp0",)), LocationSpecGroup("z", ("tp0", "tp1"))),
    )


def test_get_cache_location_cases(api: Any) -> None:
    """§7 meta test_get_cache_location."""
    register(api)
    code, _ = error(
        api.get_cache_location, GetCacheLocationRequest(instance_id="nope", query_type=PM, block_keys=[1])
    )
    assert code == ErrorCode.INSTANCE_NOT_EXIST
    assert get(api, [424242]) == ()
    write(api, [100, 101, 102])
    assert len(get(api, [100, 101, 102])) == 3
    assert get(api, [100, 101, 102], block_mask=BlockMask(bool_masks=(True, True, True))) == ()


# ---------------------------------------------------------------------------------------------- §2.3 matching


def test_prefix_match_examples(api: Any) -> None:
    register(api)
    write(api, [1, 2])
    key1, key2 = get(api, [1]), get(api, [2])
    assert get(api, [1, 2, 3, 4], block_mask=BlockMask(offset=0)) == key1 + key2
    assert get(api, [1, 2, 3], block_mask=BlockMask(offset=1)) == key2
    assert get(api, [1, 2, 3], block_mask=BlockMask(offset=6)) == ()
    assert get(api, [1, 2, 3], block_mask=BlockMask(bool_masks=(True, False, False, False))) == key2
    assert get(api, [1, 2, 3], block_mask=BlockMask(bool_masks=(True, True, True))) == ()
    assert get(api, [1, 3, 2]) == key1
    assert get(api, [3, 1, 2]) == ()


def test_writing_blocks_are_not_matched(api: Any) -> None:
    register(api)
    res = start(api, [5, 6])
    assert get(api, [5, 6]) == ()
    finish(api, res.write_session_id, BlockMask(bool_masks=(True, False)))
    assert get(api, [5, 6]) == res.locations[:1]


def test_batch_get_and_sliding_window(api: Any) -> None:
    register(api)
    write(api, [1, 2, 3, 4, 5])
    hole = CacheLocation(StorageType.ST_UNSPECIFIED, 1, (LocationSpec("tp0", ""),))
    by_key = {k: get(api, [k])[0] for k in range(1, 6)}
    assert get(api, [9, 1, 8, 2], BG) == (hole, by_key[1], hole, by_key[2])
    assert get(api, [9, 1], BG, block_mask=BlockMask(offset=2)) == (hole, by_key[1])  # mask ignored
    assert get(api, [1, 2, 3, 4, 5, 6, 7], SW, sw_size=2) == (
        hole,
        hole,
        hole,
        by_key[4],
        by_key[5],
        hole,
        hole,
    )
    assert get(api, [1, 2, 3, 10, 5, 6, 7], SW, sw_size=2) == (
        hole,
        by_key[2],
        by_key[3],
        hole,
        hole,
        hole,
        hole,
    )
    assert get(api, [1, 9, 2, 9], SW, sw_size=2) == (hole,) * 4


def test_location_spec_names(api: Any) -> None:
    """§2.4: a worker asks only for its own spec; spec_size is not recomputed."""
    register(api, location_spec_infos=(LocationSpecInfo("tp0", 512), LocationSpecInfo("tp1", 512)))
    res = write(api, [7, 8])
    assert get(api, [7, 8, 9], BG, location_spec_names=("tp1",)) == (
        CacheLocation(StorageType.ST_NFS, 2, (res.locations[0].location_specs[1],)),
        CacheLocation(StorageType.ST_NFS, 2, (res.locations[1].location_specs[1],)),
        CacheLocation(StorageType.ST_UNSPECIFIED, 2, (LocationSpec("tp1", ""),)),
    )
    assert error(get, api, [7], PM, location_spec_names=("tp7",)) == (
        ErrorCode.INVALID_ARGUMENT,
        "location_spec_names: unknown spec 'tp7' of instance 'i1'",
    )


def test_token_ids_use_the_reference_block_keys(api: Any) -> None:
    """§2.1: keys derived from token ids with the instance's block size (the study's test vector)."""
    register(api, block_size=4)
    tokens = list(range(100, 118))
    res = api.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", token_ids=tokens, write_timeout_seconds=5)
    )
    assert len(res.locations) == 4
    finish(api, res.write_session_id, BlockMask(offset=4))
    keys = [455133539818735372, -2006179887927315835, 792400745231118672, 6878879441880428884]
    assert block_keys(tokens, 4) == keys
    assert get(api, keys) == res.locations
    by_tokens = api.get_cache_location(
        GetCacheLocationRequest(
            instance_id="i1", query_type=PM, token_ids=tokens[:9], block_mask=BlockMask(offset=1)
        )
    )
    assert by_tokens.locations == res.locations[1:2]


def test_get_cache_meta(api: Any) -> None:
    register(api)
    res = start(api, [1, 2])
    finish(api, res.write_session_id, BlockMask(bool_masks=(True, False)))
    meta = api.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=[1, 2, 3]))
    assert meta.locations == (res.locations[0], res.locations[1], CacheLocation())
    assert re.fullmatch(r'\{"id":"[a-z0-9]{8}","status":"CLS_SERVING"\}', meta.metas[0])
    assert re.fullmatch(r'\{"id":"[a-z0-9]{8}","status":"CLS_DELETING"\}', meta.metas[1])
    assert meta.metas[2] == '{"status":"CLS_NOT_FOUND"}'
    masked = api.get_cache_meta(
        GetCacheMetaRequest(
            instance_id="i1", block_keys=[1, 2, 3], block_mask=BlockMask(bool_masks=(True, False))
        )
    )
    assert masked.metas == meta.metas[1:]


# ---------------------------------------------------------------------------------------------- §2.5 writes


def test_start_write_cache_mask_sequence(api: Any) -> None:
    """§2.5 / client TestStartWriteCache: earlier writes are still WRITING and count as cached."""
    register(api)
    first = start(api, [1, 2, 3, 4])
    assert re.fullmatch(r"[a-z0-9]{32}", first.write_session_id)
    assert (first.block_mask, len(first.locations)) == (BlockMask(offset=0), 4)
    again = start(api, [1, 2, 3, 4])
    assert (again.block_mask, again.locations) == (BlockMask(offset=4), ())
    assert start(api, [1, 2, 3, 4, 5, 6]).block_mask == BlockMask(offset=4)
    shifted = start(api, [5, 6, 7, 8])
    assert (shifted.block_mask, len(shifted.locations)) == (BlockMask(offset=2), 2)
    holes = start(api, [5, 55, 66, 6])
    assert holes.block_mask == BlockMask(bool_masks=(True, False, False, True))
    assert [u[0].split("?")[1] for u in uris(holes.locations)] == ["blkid=0&size=1024", "blkid=1&size=1024"]


def test_finish_success_and_failures(api: Any, harness: Harness) -> None:
    """Client TestFinishWriteCacheSuccess / Fail, with kvsim's fix: a bad mask leaves the session open."""
    register(api)
    res = start(api, [1, 2, 3, 4])
    assert statuses(api, [1, 2, 3, 4]) == ["CLS_WRITING"] * 4
    assert error(finish, api, "no-such-session", BlockMask(offset=4)) == (
        ErrorCode.INTERNAL_ERROR,
        "write_session_id: session 'no-such-session' does not exist (unknown, finished or expired)",
    )
    assert error(finish, api, res.write_session_id, BlockMask(bool_masks=(True, True))) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_blocks.bool_masks: has 2 values, the session has 4 blocks",
    )
    assert error(finish, api, res.write_session_id, BlockMask(offset=6)) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_blocks.offset: 6 is past the 4 blocks of the session",
    )
    assert error(finish, api, res.write_session_id, None) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_blocks: is required",
    )
    out = finish(api, res.write_session_id, BlockMask(bool_masks=(True, False, True, False)))
    assert (out.num_serving, out.num_failed) == (2, 2)
    assert statuses(api, [1, 2, 3, 4]) == ["CLS_SERVING", "CLS_DELETING", "CLS_SERVING", "CLS_DELETING"]
    assert error(finish, api, res.write_session_id, BlockMask(offset=4))[0] == ErrorCode.INTERNAL_ERROR
    harness.poll()
    assert statuses(api, [1, 2, 3, 4]) == ["CLS_SERVING", "CLS_NOT_FOUND", "CLS_SERVING", "CLS_NOT_FOUND"]


def test_spec_groups(api: Any) -> None:
    """§2.4: blocks written with the specs of their group, in registration order."""
    specs = tuple(LocationSpecInfo(n, 64) for n in ("tp0_F0", "tp1_F0", "tp0_L1", "tp1_L1"))
    register(
        api,
        location_spec_infos=specs,
        location_spec_groups=(
            LocationSpecGroup("F0", ("tp0_F0", "tp1_F0")),
            LocationSpecGroup("F0L1", tuple(s.name for s in specs)),
        ),
    )
    res = start(api, [11, 12, 13], location_spec_group_names=("F0", "F0", "F0L1"))
    assert [loc.spec_size for loc in res.locations] == [2, 2, 4]
    assert [s.name for s in res.locations[2].location_specs] == ["tp0_F0", "tp1_F0", "tp0_L1", "tp1_L1"]


def test_write_session_expires_with_time(api: Any, harness: Harness) -> None:
    register(api)
    res = start(api, [1, 2], timeout=5)
    harness.clock.advance(5)
    assert harness.poll().expired_sessions == 0  # the deadline is inclusive
    harness.clock.advance(1)
    assert harness.poll().expired_sessions == 1
    assert error(finish, api, res.write_session_id, BlockMask(offset=2))[0] == ErrorCode.INTERNAL_ERROR
    harness.poll()
    assert statuses(api, [1, 2]) == ["CLS_NOT_FOUND", "CLS_NOT_FOUND"]


# ---------------------------------------------------------------------------------------------- remove, trim


def test_remove_cache_then_poll(api: Any, harness: Harness) -> None:
    register(api)
    write(api, [1, 2, 3])
    res = api.remove_cache(
        RemoveCacheRequest(instance_id="i1", block_keys=[2, 3, 99], block_mask=BlockMask(offset=3))
    )
    assert (res.num_keys, res.num_locations) == (2, 2)
    assert statuses(api, [1, 2, 3]) == ["CLS_SERVING", "CLS_DELETING", "CLS_DELETING"]
    harness.poll()
    assert statuses(api, [1, 2, 3]) == ["CLS_SERVING", "CLS_NOT_FOUND", "CLS_NOT_FOUND"]


def test_trim_strategies(api: Any, harness: Harness) -> None:
    """COMPAT extend: TS_TIMESTAMP over [begin, end) epoch seconds, TS_REMOVE_ALL_META keeps storage,
    TS_REMOVE_ALL_CACHE deletes everything; TS_UNSPECIFIED is refused."""
    register(api)
    write(api, [1, 2])
    harness.clock.advance(100)
    write(api, [3])
    t = int(T0)
    res = api.trim_cache(
        TrimCacheRequest(
            instance_id="i1", strategy=TrimStrategy.TS_TIMESTAMP, begin_timestamp=t, end_timestamp=t + 1
        )
    )
    assert (res.num_keys, res.num_locations) == (2, 2)
    harness.poll()
    res = api.trim_cache(TrimCacheRequest(instance_id="i1", strategy=TrimStrategy.TS_REMOVE_ALL_META))
    assert (res.num_keys, res.num_locations) == (1, 1)
    assert harness.inspect(lambda m: m.backend("nfs_01").used_bytes) == 1024  # storage kept
    write(api, [4])
    res = api.trim_cache(TrimCacheRequest(instance_id="i1", strategy=TrimStrategy.TS_REMOVE_ALL_CACHE))
    assert (res.num_keys, res.num_locations) == (1, 1)
    code, message = error(api.trim_cache, TrimCacheRequest(instance_id="i1"))
    assert code == ErrorCode.INVALID_ARGUMENT and message.startswith("strategy: is required")


# ---------------------------------------------------------------------------------------------- COMPAT rows


@pytest.mark.parametrize("instance_id", ["", "ghost"])
def test_keep_unknown_or_empty_instance_is_instance_not_exist(api: Any, instance_id: str) -> None:
    register(api)
    calls = [
        (api.get_cache_meta, GetCacheMetaRequest(instance_id=instance_id, block_keys=[1])),
        (api.get_cache_location, GetCacheLocationRequest(instance_id=instance_id)),
        (api.start_write_cache, StartWriteCacheRequest(instance_id=instance_id, block_keys=[1])),
        (api.finish_write_cache, FinishWriteCacheRequest(instance_id=instance_id)),
        (api.remove_cache, RemoveCacheRequest(instance_id=instance_id, block_keys=[1])),
        (api.trim_cache, TrimCacheRequest(instance_id=instance_id)),
    ]
    assert [error(fn, req)[0] for fn, req in calls] == [ErrorCode.INSTANCE_NOT_EXIST] * 6


def test_fix_query_type_is_required(api: Any) -> None:
    register(api)
    assert error(api.get_cache_location, GetCacheLocationRequest(instance_id="i1", block_keys=[1])) == (
        ErrorCode.INVALID_ARGUMENT,
        "query_type: is required: QT_PREFIX_MATCH, QT_BATCH_GET or QT_REVERSE_ROLL_SW_MATCH",
    )


@pytest.mark.parametrize("sw_size", [0, 4])
def test_fix_sw_size_out_of_range(api: Any, sw_size: int) -> None:
    register(api)
    assert error(get, api, [1, 2, 3], SW, sw_size=sw_size) == (
        ErrorCode.INVALID_ARGUMENT,
        f"sw_size: must be in [1, 3] for 3 keys, got {sw_size}",
    )


@pytest.mark.parametrize("block_size", [0, -1])
def test_fix_block_size_must_be_positive(api: Any, block_size: int) -> None:
    assert error(register, api, "i1", block_size=block_size) == (
        ErrorCode.INVALID_ARGUMENT,
        f"block_size: must be >= 1, got {block_size}",
    )


def test_fix_wrong_length_mask_leaves_the_session_intact(api: Any) -> None:
    register(api)
    res = start(api, [1, 2, 3, 4])
    assert (
        error(finish, api, res.write_session_id, BlockMask(bool_masks=(True, True)))[0]
        == ErrorCode.INVALID_ARGUMENT
    )
    assert finish(api, res.write_session_id, BlockMask(offset=4)).num_serving == 4


def test_fix_success_on_a_deleting_location_stays_deleting(api: Any) -> None:
    register(api)
    res = start(api, [1])
    api.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    out = finish(api, res.write_session_id, BlockMask(offset=1))
    assert (out.num_serving, out.num_failed) == (0, 1)
    assert statuses(api, [1]) == ["CLS_DELETING"]
    assert get(api, [1]) == ()


def test_fix_allocation_failure_releases_everything(harness: Harness) -> None:
    # tp0 (100 B) and tp1 (200 B) need two create calls; 250 B fit the first call only.
    api = harness.reset(backend_factory=simulated_backend_factory(default_capacity=250))
    register(api, location_spec_infos=(LocationSpecInfo("tp0", 100), LocationSpecInfo("tp1", 200)))
    code, message = error(start, api, [1, 2])
    assert code == ErrorCode.INTERNAL_ERROR
    assert message.startswith("storage 'nfs_01': allocation failed: storage 'nfs_01' is full")
    assert harness.inspect(lambda m: (m.backend("nfs_01").used_bytes, m.num_open_sessions())) == (0, 0)


def test_fix_spec_group_length_is_checked_against_derived_keys(api: Any) -> None:
    register(
        api,
        block_size=2,
        location_spec_infos=(LocationSpecInfo("a", 8), LocationSpecInfo("b", 8)),
        location_spec_groups=(LocationSpecGroup("A", ("a",)), LocationSpecGroup("AB", ("a", "b"))),
    )
    tokens = [1, 2, 3, 4, 5]  # two full blocks
    res = api.start_write_cache(
        StartWriteCacheRequest(instance_id="i1", token_ids=tokens, location_spec_group_names=("A", "AB"))
    )
    assert [loc.spec_size for loc in res.locations] == [1, 2]
    request = StartWriteCacheRequest(instance_id="i1", token_ids=tokens, location_spec_group_names=("A",))
    assert error(api.start_write_cache, request) == (
        ErrorCode.INVALID_ARGUMENT,
        "location_spec_group_names: has 1 names for 2 keys",
    )


def test_extend_list_instance_info_with_empty_group_lists_all(api: Any) -> None:
    register(api, "i1")
    register(api, "i0")
    assert [i.instance_id for i in api.list_instance_info("")] == ["i0", "i1"]
    assert [i.instance_id for i in api.list_instance_info()] == ["i0", "i1"]


def test_extend_config_snapshots_and_fix_salted_accounts(api: Any, harness: Harness) -> None:
    register(api)
    api.add_account("admin", "secret-pw", AccountRole.ROLE_ADMIN)
    snapshot = api.gen_config_snapshot()
    doc = json.loads(snapshot)
    assert (doc["format"], doc["version"]) == ("kvsim-config-snapshot", 1)
    assert doc["accounts"][0]["password_hash"].startswith("pbkdf2_sha256$1000$")
    assert "secret-pw" not in snapshot
    api.remove_instance("i1")
    api.delete_account("admin")
    api.load_config_snapshot(snapshot)
    assert api.gen_config_snapshot() == snapshot
    assert harness.inspect(lambda m: m.verify_account("admin", "secret-pw")) == AccountRole.ROLE_ADMIN
    assert error(api.load_config_snapshot, "not json")[0] == ErrorCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------------------ §7 admin cases


def test_add_and_list_storage(api: Any) -> None:
    """§7 admin test_add_and_list_storage, plus enable/disable/update/remove."""
    api.add_storage(StorageConfig("test_storage_01", NfsStorageSpec("/tmp/1")))
    assert api.list_storage() == (
        default_storage_config(),
        StorageConfig("test_storage_01", NfsStorageSpec("/tmp/1", 1)),
    )
    assert error(api.add_storage, StorageConfig("nfs_01", NfsStorageSpec("/other/"))) == (
        ErrorCode.INTERNAL_ERROR,
        "storage: 'nfs_01' already exists",
    )
    assert error(api.add_storage, StorageConfig("x", NfsStorageSpec(""))) == (
        ErrorCode.INVALID_ARGUMENT,
        "storage.nfs.root_path: is required",
    )
    api.disable_storage("test_storage_01")
    assert api.list_storage()[1].is_available is False
    api.enable_storage("test_storage_01")
    api.update_storage(StorageConfig("test_storage_01", NfsStorageSpec("/new/", 2)))
    assert api.list_storage()[1] == StorageConfig("test_storage_01", NfsStorageSpec("/new/", 2))
    api.remove_storage("test_storage_01")
    assert api.list_storage() == (default_storage_config(),)
    assert error(api.enable_storage, "nope") == (
        ErrorCode.INTERNAL_ERROR,
        "storage_unique_name: storage 'nope' does not exist",
    )


def test_create_update_get_remove_instance_group(api: Any) -> None:
    """§7 admin test_create_update_get_remove_instance_group."""
    group = dataclasses.replace(default_instance_group(), name="g", version=1)
    api.create_instance_group(group)
    assert api.get_instance_group("g") == group
    api.update_instance_group(dataclasses.replace(group, user_data="hello", version=2), 1)
    assert api.get_instance_group("g") == dataclasses.replace(group, user_data="hello", version=2)
    assert error(api.update_instance_group, dataclasses.replace(group, version=3), 1) == (
        ErrorCode.INTERNAL_ERROR,
        "current_version: 1 is not the stored version 2",
    )
    api.remove_instance_group("g")
    assert error(api.get_instance_group, "g") == (ErrorCode.INTERNAL_ERROR, "name: group 'g' does not exist")
    bare = InstanceGroup(
        name="g2",
        storage_candidates=("nfs_01",),
        global_quota_group_name="q",
        cache_config=CacheConfig(
            reclaim_strategy=CacheReclaimStrategy(storage_unique_name="nfs_01"),
            data_storage_strategy=CachePreferStrategy.CPS_UNSPECIFIED,
        ),
    )
    code, message = error(api.create_instance_group, bare)
    assert code == ErrorCode.INVALID_ARGUMENT
    assert message.startswith("instance_group.cache_config.data_storage_strategy: must not be")
    code, message = error(api.create_instance_group, dataclasses.replace(bare, cache_config=None))
    assert (code, message) == (ErrorCode.INVALID_ARGUMENT, "instance_group.cache_config: is required")


def test_register_get_list_remove_instance(api: Any) -> None:
    """§7 admin test_register_get_list_remove_instance."""
    api.create_instance_group(dataclasses.replace(default_instance_group(), name="g2"))
    register(api, "instance_123", instance_group="g2", location_spec_infos=(LocationSpecInfo("tp0", 2048),))
    assert api.get_instance_info(GetInstanceInfoRequest(instance_id="instance_123")).instance_group == "g2"
    assert [i.instance_id for i in api.list_instance_info("g2")] == ["instance_123"]
    assert api.list_instance_info("unknown") == ()
    write(api, [1, 2], instance_id="instance_123")
    res = api.remove_instance("instance_123", "g2")
    assert (res.num_keys, res.num_locations) == (2, 2)
    assert api.list_instance_info("g2") == ()
    api.remove_instance_group("g2")
    assert error(api.remove_instance, "instance_123") == (
        ErrorCode.INTERNAL_ERROR,
        "instance_id: instance 'instance_123' does not exist",
    )


def test_add_delete_list_account(api: Any) -> None:
    """§7 admin test_add_delete_list_account."""
    api.add_account("new_user", "secret", AccountRole.ROLE_USER)
    api.add_account("boss", "pw", 1)
    api.add_account("odd", "pw", 7)  # unknown role -> ROLE_USER, as the reference
    assert api.list_account() == (
        Account("boss", AccountRole.ROLE_ADMIN),
        Account("new_user", AccountRole.ROLE_USER),
        Account("odd", AccountRole.ROLE_USER),
    )
    assert error(api.add_account, "new_user", "x") == (
        ErrorCode.INTERNAL_ERROR,
        "user_name: account 'new_user' already exists",
    )
    assert error(api.add_account, "", "x") == (ErrorCode.INVALID_ARGUMENT, "user_name: is required")
    api.delete_account("new_user")
    assert [a.user_name for a in api.list_account()] == ["boss", "odd"]
    assert error(api.delete_account, "new_user")[0] == ErrorCode.INTERNAL_ERROR
