"""Bad input: every public operation refuses it with "<field>: <why>" and changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    QueryType,
    RemoveCacheRequest,
    StartWriteCacheRequest,
)
from kvsim.core import ManualClock

from .conftest import make_manager, register, start, write


def state(mgr: CacheManager) -> tuple:
    """Everything observable: registry, meta records, sessions, pending deletions, storage use."""
    keys = sorted(k for batch in mgr._index("i1").scan() for k in batch)
    return (
        mgr.store.registry_load(),
        keys,
        mgr.store.meta_get("i1", keys),
        mgr.num_open_sessions(),
        mgr.num_pending_deletions(),
        mgr.backend("nfs_01").used_bytes,  # type: ignore[attr-defined]
    )


@pytest.fixture
def busy(clock: ManualClock) -> CacheManager:
    """An instance with SERVING, WRITING and DELETING blocks and a per-request limit of 4 keys."""
    mgr = make_manager(clock, max_keys_per_request=4)
    register(mgr)
    write(mgr, [1, 2])
    start(mgr, [3])
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2]))
    return mgr


PM = QueryType.QT_PREFIX_MATCH
CASES: list[tuple[str, Callable[[CacheManager], object], str]] = [
    (
        "too many keys",
        lambda m: m.get_cache_location(
            GetCacheLocationRequest(instance_id="i1", query_type=PM, block_keys=[1] * 5)
        ),
        "block_keys: 5 keys exceed the per-request limit of 4",
    ),
    (
        "too many token blocks",
        lambda m: m.start_write_cache(
            StartWriteCacheRequest(instance_id="i1", token_ids=list(range(128 * 5)))
        ),
        "token_ids: 5 blocks exceed the per-request limit of 4",
    ),
    (
        "float keys",
        lambda m: m.start_write_cache(StartWriteCacheRequest(instance_id="i1", block_keys=[1, 2.5])),
        "block_keys: values must be integers, got float",
    ),
    (
        "key out of int64",
        lambda m: m.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2**63])),
        "block_keys: values must fit in a signed 64-bit integer",
    ),
    (
        "float numpy keys",
        lambda m: m.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=np.array([1.0]))),
        "block_keys: must be a 1-D integer array, got dtype float64 ndim 1",
    ),
    (
        "no keys",
        lambda m: m.remove_cache(RemoveCacheRequest(instance_id="i1")),
        "block_keys: block_keys or token_ids must be non-empty",
    ),
    (
        "negative offset",
        lambda m: m.get_cache_location(
            GetCacheLocationRequest(
                instance_id="i1", query_type=PM, block_keys=[1], block_mask=BlockMask(offset=-1)
            )
        ),
        "block_mask.offset: must be >= 0, got -1",
    ),
    (
        "empty spec group name",
        lambda m: m.start_write_cache(
            StartWriteCacheRequest(instance_id="i1", block_keys=[5], location_spec_group_names=("",))
        ),
        "location_spec_group_names[0]: is required",
    ),
    (
        "unknown spec group",
        lambda m: m.start_write_cache(
            StartWriteCacheRequest(instance_id="i1", block_keys=[5], location_spec_group_names=("g",))
        ),
        "location_spec_group_names: unknown spec group 'g'",
    ),
    (
        "negative timeout",
        lambda m: m.start_write_cache(
            StartWriteCacheRequest(instance_id="i1", block_keys=[5], write_timeout_seconds=-3)
        ),
        "write_timeout_seconds: must be >= 0, got -3",
    ),
    (
        "finish without a session id",
        lambda m: m.finish_write_cache(
            FinishWriteCacheRequest(instance_id="i1", success_blocks=BlockMask(offset=0))
        ),
        "write_session_id: is required",
    ),
    (
        "spec names as a string",
        lambda m: m.get_cache_location(
            GetCacheLocationRequest(
                instance_id="i1", query_type=PM, block_keys=[1], location_spec_names="tp0"
            )  # type: ignore[arg-type]
        ),
        "location_spec_names: must be a list of names, not a string",
    ),
    ("empty storage name", lambda m: m.remove_storage(""), "storage_unique_name: is required"),
    ("empty group name", lambda m: m.get_instance_group(""), "name: is required"),
    ("empty instance id", lambda m: m.remove_instance(""), "instance_id: is required"),
    ("group name not a string", lambda m: m.list_instance_info(3), "instance_group_name: must be a string"),  # type: ignore[arg-type]
    (
        "snapshot not a string",
        lambda m: m.load_config_snapshot(b"{}"),
        "config_snapshot: must be a JSON string",
    ),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("name", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_nothing_changes(
    busy: CacheManager, name: str, call: Callable[[CacheManager], object], message: str
) -> None:
    before = state(busy)
    with pytest.raises(CacheError) as err:
        call(busy)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT, name
    assert err.value.message == message
    assert state(busy) == before


def test_limit_allows_exactly_the_limit(busy: CacheManager) -> None:
    res = busy.get_cache_location(
        GetCacheLocationRequest(instance_id="i1", query_type=PM, block_keys=[1, 2, 3, 4])
    )
    assert len(res.locations) == 1


def test_manager_rejects_a_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_keys_per_request"):
        make_manager(ManualClock(0.0), max_keys_per_request=0)
