"""The string-key KV meta API over the cache manager: key hashing, registration, the two-phase write with
its masks, reads, removal, trims and bad input."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from kvsim.cache import (
    CacheError,
    CacheLocation,
    ErrorCode,
    FinishWriteCacheResult,
    GetInstanceInfoRequest,
    KeyMask,
    KvGetInstanceInfoRequest,
    KvGetInstanceInfoResult,
    KvGetRequest,
    KvInstanceInfo,
    KvMetaManager,
    KvPutFinishRequest,
    KvPutStartRequest,
    KvQueryType,
    KvRegisterInstanceRequest,
    KvRemoveRequest,
    KvTrimRequest,
    LocationSpec,
    LocationSpecInfo,
    ModelDeployment,
    RemoveCacheResult,
    StorageType,
    TrimCacheResult,
    TrimStrategy,
    string_key,
)
from kvsim.cache.kv_meta import DEFAULT_VALUE_SIZE_BYTES
from kvsim.connectors.config import page_key
from kvsim.core import ManualClock

from .conftest import T0, make_manager, start

NFS = "file://nfs_01/tmp/nfs"
EMPTY = CacheLocation()
BATCH = KvQueryType.QT_BATCH_GET


def kv_uri(file: str, blkid: int, size: int = 4096) -> str:
    return f"{NFS}/kv1/value/{file}?blkid={blkid}&size={size}"


def value_at(uri: str) -> CacheLocation:
    return CacheLocation(StorageType.ST_NFS, 1, (LocationSpec("value", uri),))


@pytest.fixture
def kv(clock: ManualClock) -> KvMetaManager:
    """A KV layer over a fresh manager with instance ``kv1`` (4096-byte values)."""
    layer = KvMetaManager(make_manager(clock))
    layer.register_instance(
        KvRegisterInstanceRequest(
            instance_group="default", instance_id="kv1", user_data='{"value_size_bytes": 4096}'
        )
    )
    return layer


def get(kv: KvMetaManager, *keys: str) -> tuple[CacheLocation, ...]:
    return kv.get(KvGetRequest(instance_id="kv1", query_type=BATCH, keys=keys)).locations


def put_start(kv: KvMetaManager, *keys: str, timeout: int = 30) -> Any:
    return kv.put_start(KvPutStartRequest(instance_id="kv1", keys=keys, write_timeout_seconds=timeout))


def put_finish(
    kv: KvMetaManager, session: str, mask: tuple[bool, ...] | None = None
) -> FinishWriteCacheResult:
    success = KeyMask(mask) if mask is not None else None
    return kv.put_finish(
        KvPutFinishRequest(instance_id="kv1", write_session_id=session, success_mask=success)
    )


def error(fn: Any, *args: Any) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(*args)
    return err.value.code, err.value.message


# ---------------------------------------------------------------------------------------------- keys


def test_string_key_is_the_sglang_connectors_page_key() -> None:
    """First 8 bytes of SHA-256, big-endian, signed: sha256("hello") starts 2cf24dba5fb0a30e."""
    assert string_key("hello") == 0x2CF24DBA5FB0A30E == 3238736544897475342
    assert string_key("a") == -3848465438864589366  # ca978112ca1bbdca: the sign bit set
    assert string_key("é") == int.from_bytes(hashlib.sha256("é".encode()).digest()[:8], "big", signed=True)
    for key in ("hello", "a", "é", "page/0001"):
        assert string_key(key) == page_key(key)


# ---------------------------------------------------------------------------------------------- instances


def test_register_makes_a_block_size_1_instance_with_one_value_spec(kv: KvMetaManager) -> None:
    info = kv.cache.get_instance_info(GetInstanceInfoRequest(instance_id="kv1")).instance_info
    assert (info.block_size, info.location_spec_infos) == (1, (LocationSpecInfo("value", 4096),))
    assert info.model_deployment == ModelDeployment(
        model_name="kv_meta", dtype="bytes", user_data='{"value_size_bytes": 4096}'
    )
    assert kv.get_instance_info(KvGetInstanceInfoRequest(instance_id="kv1")) == KvGetInstanceInfoResult(
        "default", KvInstanceInfo("default_quota_group", "default", "kv1")
    )


def test_register_value_size_from_user_data_or_the_default(clock: ManualClock) -> None:
    kv = KvMetaManager(make_manager(clock), default_value_size_bytes=512)
    configs = kv.register_instance(KvRegisterInstanceRequest(instance_group="default", instance_id="a"))
    assert configs.storage_configs == (
        '[{"type":"file","is_available":true,"global_unique_name":"nfs_01",'
        '"storage_spec":{"root_path":"/tmp/nfs/","key_count_per_file":8}}]'
    )
    cases = {
        "a": "",
        "b": "just some text",  # not JSON: kept as opaque text
        "c": "[1, 2]",  # JSON, but not an object
        "d": '{"owner": "x"}',  # an object without the size
        "e": '{"value_size_bytes": 100, "owner": "x"}',
    }
    for instance_id, user_data in cases.items():
        kv.register_instance(
            KvRegisterInstanceRequest(instance_group="default", instance_id=instance_id, user_data=user_data)
        )
    infos = {
        i: kv.cache.get_instance_info(GetInstanceInfoRequest(instance_id=i)).instance_info for i in cases
    }
    assert {i: info.location_spec_infos[0].size for i, info in infos.items()} == {
        "a": 512,
        "b": 512,
        "c": 512,
        "d": 512,
        "e": 100,
    }
    assert infos["b"].model_deployment.user_data == "just some text"
    assert KvMetaManager(kv.cache).default_value_size_bytes == DEFAULT_VALUE_SIZE_BYTES == 1 << 20


def test_register_again(kv: KvMetaManager) -> None:
    """The same size again is fine (other user_data too); another size is a duplicate."""
    again = KvRegisterInstanceRequest(
        instance_group="default", instance_id="kv1", user_data='{"value_size_bytes": 4096, "note": 1}'
    )
    assert kv.register_instance(again).storage_configs.startswith('[{"type":"file"')
    other = KvRegisterInstanceRequest(
        instance_group="default", instance_id="kv1", user_data='{"value_size_bytes": 8192}'
    )
    assert error(kv.register_instance, other) == (
        ErrorCode.DUPLICATE_ENTITY,
        "instance_id: 'kv1' is already registered with other parameters",
    )


@pytest.mark.parametrize(
    ("user_data", "shown"),
    [
        ('{"value_size_bytes": 0}', "0"),
        ('{"value_size_bytes": -5}', "-5"),
        ('{"value_size_bytes": "1MiB"}', "'1MiB'"),
        ('{"value_size_bytes": true}', "True"),
        ('{"value_size_bytes": 1.5}', "1.5"),
        ('{"value_size_bytes": 9223372036854775808}', "9223372036854775808"),
    ],
)
def test_register_refuses_a_bad_value_size(kv: KvMetaManager, user_data: str, shown: str) -> None:
    request = KvRegisterInstanceRequest(instance_group="default", instance_id="kv2", user_data=user_data)
    assert error(kv.register_instance, request) == (
        ErrorCode.INVALID_ARGUMENT,
        f"user_data.value_size_bytes: must be an integer in [1, 2**63 - 1], got {shown}",
    )


def test_register_and_lookup_errors(kv: KvMetaManager) -> None:
    assert error(kv.register_instance, KvRegisterInstanceRequest(instance_id="kv2")) == (
        ErrorCode.INVALID_ARGUMENT,
        "instance_group: is required",
    )
    assert error(kv.register_instance, KvRegisterInstanceRequest(instance_group="nope", instance_id="x")) == (
        ErrorCode.INTERNAL_ERROR,
        "instance_group: group 'nope' does not exist",
    )
    assert error(kv.get_instance_info, KvGetInstanceInfoRequest(instance_id="ghost")) == (
        ErrorCode.INSTANCE_NOT_EXIST,
        "instance_id: instance 'ghost' does not exist",
    )


def test_constructor_checks(kv: KvMetaManager) -> None:
    with pytest.raises(ValueError, match="default_value_size_bytes: must be > 0, got 0"):
        KvMetaManager(kv.cache, default_value_size_bytes=0)
    with pytest.raises(ValueError, match="max_keys_per_request: must be > 0, got 0"):
        KvMetaManager(kv.cache, max_keys_per_request=0)


# ---------------------------------------------------------------------------------------------- reads, writes


def test_two_phase_write_then_get(kv: KvMetaManager) -> None:
    assert get(kv, "k1", "k2") == (EMPTY, EMPTY)
    started = put_start(kv, "k1", "k2")
    file = "6ab9f1eb8f7d3388_f4d769bd12a6f1ad"  # k1's storage key first (6ab9f1eb8f7d3388 = string_key("k1"))
    assert started.key_mask == KeyMask((False, False))
    assert started.locations == (value_at(kv_uri(file, 0)), value_at(kv_uri(file, 1)))
    assert get(kv, "k1", "k2") == (EMPTY, EMPTY)  # not readable while being written
    assert put_finish(kv, started.write_session_id) == FinishWriteCacheResult(2, 0)  # no mask: all written
    assert get(kv, "k2", "nope", "k1", "k2") == (
        value_at(kv_uri(file, 1)),
        EMPTY,
        value_at(kv_uri(file, 0)),
        value_at(kv_uri(file, 1)),
    )
    assert kv.num_tracked_sessions == 0


def test_put_start_masks_keys_stored_or_being_written(kv: KvMetaManager) -> None:
    put_finish(kv, put_start(kv, "k1").write_session_id)
    writing = put_start(kv, "k2")  # another session, still open
    started = put_start(kv, "k1", "k3", "k2", "k4")
    assert started.key_mask == KeyMask((True, False, True, False))
    assert [loc.location_specs[0].uri for loc in started.locations] == [
        kv_uri("2f5052c9fd15b19a_4460affb55af08c8", 0),
        kv_uri("2f5052c9fd15b19a_4460affb55af08c8", 1),
    ]
    everything = put_start(kv, "k4", "k1")
    assert (everything.key_mask, everything.locations) == (KeyMask((True, True)), ())
    assert put_finish(kv, everything.write_session_id) == FinishWriteCacheResult(0, 0)
    assert put_finish(kv, writing.write_session_id) == FinishWriteCacheResult(1, 0)


def test_put_finish_with_a_partial_success_mask(kv: KvMetaManager) -> None:
    started = put_start(kv, "a", "b", "c")
    assert put_finish(kv, started.write_session_id, (True, False, True)) == FinishWriteCacheResult(2, 1)
    found = get(kv, "a", "b", "c")
    assert [bool(loc.location_specs) for loc in found] == [True, False, True]
    assert found[0] == started.locations[0] and found[2] == started.locations[2]
    # "b" failed: its location is deleted at the next poll; until then it still masks a new write.
    assert put_start(kv, "b").key_mask == KeyMask((True,))
    assert kv.cache.poll().deleted_keys == 1
    assert put_start(kv, "b").key_mask == KeyMask((False,))


def test_put_finish_errors_leave_the_session_open(kv: KvMetaManager, clock: ManualClock) -> None:
    started = put_start(kv, "a", "b")
    assert error(put_finish, kv, started.write_session_id, (True,)) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_mask.values: has 1 values, PutStart returned 2 locations",
    )
    assert put_finish(kv, started.write_session_id, (False, True)) == FinishWriteCacheResult(1, 1)
    gone = "does not exist (unknown, finished or expired)"
    assert error(put_finish, kv, started.write_session_id) == (
        ErrorCode.INTERNAL_ERROR,
        f"write_session_id: session {started.write_session_id!r} {gone}",
    )
    late = put_start(kv, "c", timeout=5)
    assert kv.num_tracked_sessions == 1
    clock.advance(6)
    assert error(put_finish, kv, late.write_session_id) == (
        ErrorCode.INTERNAL_ERROR,
        f"write_session_id: session {late.write_session_id!r} {gone}",
    )
    assert kv.num_tracked_sessions == 0  # forgotten once past its deadline
    assert error(put_finish, kv, "") == (ErrorCode.INVALID_ARGUMENT, "write_session_id: is required")
    wrong = KvPutFinishRequest(instance_id="ghost", write_session_id="s")
    assert error(kv.put_finish, wrong) == (
        ErrorCode.INSTANCE_NOT_EXIST,
        "instance_id: instance 'ghost' does not exist",
    )


def test_put_finish_of_a_block_key_session(kv: KvMetaManager) -> None:
    """A StartWriteCache session finished through the KV API needs its mask: its length is unknown here."""
    session = start(kv.cache, [1, 2], instance_id="kv1").write_session_id
    assert error(put_finish, kv, session) == (
        ErrorCode.INVALID_ARGUMENT,
        f"success_mask: is required for session {session!r}, which PutStart did not open",
    )
    assert error(put_finish, kv, session, (True,)) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_mask.values: has 1 values, the session has 2 blocks",
    )
    assert put_finish(kv, session, (True, True)) == FinishWriteCacheResult(2, 0)


def test_get_requires_batch_get(kv: KvMetaManager) -> None:
    for query_type, shown in ((KvQueryType.QT_UNSPECIFIED, "QT_UNSPECIFIED"), (2, "2")):
        request = KvGetRequest(instance_id="kv1", query_type=query_type, keys=("a",))  # type: ignore[arg-type]
        assert error(kv.get, request) == (
            ErrorCode.INVALID_ARGUMENT,
            f"query_type: must be QT_BATCH_GET (the only KV query), got {shown}",
        )


# ---------------------------------------------------------------------------------------------- removal


def test_remove(kv: KvMetaManager) -> None:
    put_finish(kv, put_start(kv, "a", "b", "c").write_session_id)
    removed = kv.remove(KvRemoveRequest(instance_id="kv1", keys=("a", "c", "a", "never")))
    assert removed == RemoveCacheResult(num_keys=2, num_locations=2)
    assert [bool(loc.location_specs) for loc in get(kv, "a", "b", "c")] == [False, True, False]
    assert kv.cache.poll().deleted_locations == 2


def test_trim(kv: KvMetaManager, clock: ManualClock) -> None:
    put_finish(kv, put_start(kv, "old").write_session_id)
    clock.advance(100)
    put_finish(kv, put_start(kv, "new1", "new2").write_session_id)
    by_time = KvTrimRequest(
        instance_id="kv1",
        strategy=TrimStrategy.TS_TIMESTAMP,
        begin_timestamp=int(T0),
        end_timestamp=int(T0) + 50,
    )
    assert kv.trim(by_time) == TrimCacheResult(1, 1)
    assert kv.trim(KvTrimRequest(instance_id="kv1", strategy=TrimStrategy.TS_REMOVE_ALL_CACHE)) == (
        TrimCacheResult(3, 2)  # "old" is already being deleted: it counts as a key, not as a location
    )
    assert get(kv, "old", "new1", "new2") == (EMPTY, EMPTY, EMPTY)
    assert error(kv.trim, KvTrimRequest(instance_id="kv1")) == (
        ErrorCode.INVALID_ARGUMENT,
        "strategy: is required: TS_REMOVE_ALL_CACHE, TS_REMOVE_ALL_META or TS_TIMESTAMP",
    )


# ---------------------------------------------------------------------------------------------- bad keys


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ((), "keys: needs at least one key"),
        ("abc", "keys: must be a list of keys, not a string"),
        (("a", "b", "c", "d"), "keys: 4 keys exceed the per-request limit of 3"),
        (("a", ""), "keys[1]: is required"),
        (("a", 7), "keys[1]: must be a string, got int"),
        (("\ud800",), "keys[0]: is not valid Unicode text (it has a lone surrogate)"),
    ],
)
def test_bad_keys_everywhere(clock: ManualClock, keys: Any, message: str) -> None:
    kv = KvMetaManager(make_manager(clock), max_keys_per_request=3)
    kv.register_instance(KvRegisterInstanceRequest(instance_group="default", instance_id="kv1"))
    calls = [
        lambda: kv.get(KvGetRequest(instance_id="kv1", query_type=BATCH, keys=keys)),
        lambda: kv.put_start(KvPutStartRequest(instance_id="kv1", keys=keys, write_timeout_seconds=5)),
        lambda: kv.remove(KvRemoveRequest(instance_id="kv1", keys=keys)),
    ]
    for call in calls:
        assert error(call) == (ErrorCode.INVALID_ARGUMENT, message)


def test_repeated_and_colliding_keys(clock: ManualClock) -> None:
    """A key twice is refused by PutStart only; two keys with one block key are refused everywhere."""
    kv = KvMetaManager(make_manager(clock), key_hash=len)  # a hash that collides on purpose
    kv.register_instance(KvRegisterInstanceRequest(instance_group="default", instance_id="kv1"))
    assert error(put_start, kv, "ab", "x", "ab") == (
        ErrorCode.INVALID_ARGUMENT,
        "keys[2]: 'ab' repeats keys[0]: a PutStart names each key once",
    )
    assert get(kv, "ab", "ab") == (EMPTY, EMPTY)
    collide = "keys[1]: 'cd' and keys[0] 'ab' map to the same block key 2"
    assert error(get, kv, "ab", "cd") == (ErrorCode.INVALID_ARGUMENT, collide)
    assert error(put_start, kv, "ab", "cd") == (ErrorCode.INVALID_ARGUMENT, collide)
    removing = KvRemoveRequest(instance_id="kv1", keys=("ab", "cd"))
    assert error(kv.remove, removing) == (ErrorCode.INVALID_ARGUMENT, collide)


def test_unknown_instance(kv: KvMetaManager) -> None:
    missing = (ErrorCode.INSTANCE_NOT_EXIST, "instance_id: instance 'ghost' does not exist")
    assert error(kv.get, KvGetRequest(instance_id="ghost", query_type=BATCH, keys=("a",))) == missing
    start_ghost = KvPutStartRequest(instance_id="ghost", keys=("a",), write_timeout_seconds=5)
    assert error(kv.put_start, start_ghost) == missing
    assert error(kv.remove, KvRemoveRequest(instance_id="ghost", keys=("a",))) == missing
    trim_ghost = KvTrimRequest(instance_id="ghost", strategy=TrimStrategy.TS_REMOVE_ALL_CACHE)
    assert error(kv.trim, trim_ghost) == missing
