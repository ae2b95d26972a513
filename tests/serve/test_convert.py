"""Wire message <-> dataclass conversion: round trips, presence, oneofs and open enums."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from kvsim.cache import (
    BlockMask,
    CacheLocation,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpec,
    MooncakeStorageSpec,
    NfsStorageSpec,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheResult,
    StorageConfig,
    StorageType,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
    default_instance_group,
)
from kvsim.cache.types import LocalStorageSpec
from kvsim.serve.convert import from_message, to_message
from kvsim.serve.proto import admin_service_pb2 as admin
from kvsim.serve.proto import meta_service_pb2 as meta

INT64 = st.integers(-(2**63), 2**63 - 1)
masks = st.one_of(
    st.builds(BlockMask, offset=st.integers(0, 2**31 - 1)),
    st.builds(BlockMask, bool_masks=st.lists(st.booleans(), max_size=8).map(tuple)),
)
locations = st.builds(
    CacheLocation,
    type=st.sampled_from(list(StorageType)),
    spec_size=st.integers(0, 8),
    location_specs=st.lists(
        st.builds(LocationSpec, name=st.text(max_size=5), uri=st.text(max_size=20)), max_size=3
    ).map(tuple),
)


@given(keys=st.lists(INT64, max_size=20), mask=st.one_of(st.none(), masks), sw=st.integers(0, 100))
def test_get_cache_location_request_round_trip(keys: list[int], mask: BlockMask | None, sw: int) -> None:
    request = GetCacheLocationRequest(
        trace_id="t",
        instance_id="i",
        query_type=QueryType.QT_BATCH_GET,
        block_keys=tuple(keys),
        block_mask=mask,
        sw_size=sw,
    )
    message = to_message(request, meta.GetCacheLocationRequest)
    wire = meta.GetCacheLocationRequest.FromString(message.SerializeToString())
    assert from_message(wire, GetCacheLocationRequest) == request


@given(mask=masks, locs=st.lists(locations, max_size=4))
def test_start_write_result_round_trip(mask: BlockMask, locs: list[CacheLocation]) -> None:
    result = StartWriteCacheResult("s" * 32, mask, tuple(locs))
    wire = meta.StartWriteCacheResponse.FromString(
        to_message(result, meta.StartWriteCacheResponse).SerializeToString()
    )
    assert from_message(wire, StartWriteCacheResult) == result


def test_presence_matters_for_optional_sub_messages() -> None:
    assert from_message(meta.RegisterInstanceRequest(), RegisterInstanceRequest).model_deployment is None
    assert from_message(meta.FinishWriteCacheRequest(), FinishWriteCacheRequest).success_blocks is None
    # A present mask with neither member set is an empty bool list (the reference's model).
    present = meta.FinishWriteCacheRequest(success_blocks=meta.BlockMask())
    assert from_message(present, FinishWriteCacheRequest).success_blocks == BlockMask(bool_masks=())
    empty_bools = to_message(BlockMask(bool_masks=()), meta.BlockMask)
    assert empty_bools.WhichOneof("info") == "bool_masks"


def test_unknown_enum_numbers_stay_ints_for_the_cache_to_refuse() -> None:
    request = from_message(meta.GetCacheLocationRequest(query_type=77), GetCacheLocationRequest)
    assert request.query_type == 77 and not isinstance(request.query_type, QueryType)
    assert from_message(meta.GetCacheLocationRequest(query_type=2), GetCacheLocationRequest).query_type is (
        QueryType.QT_PREFIX_MATCH
    )


def test_numpy_keys_are_accepted() -> None:
    request = GetCacheLocationRequest(instance_id="i", block_keys=np.array([1, -2], dtype=np.int64))
    assert list(to_message(request, meta.GetCacheLocationRequest).block_keys) == [1, -2]


def test_every_storage_spec_round_trips_through_the_admin_oneof() -> None:
    specs = [
        NfsStorageSpec("/r/", 8),
        ThreeFSStorageSpec("c", "/m", "d", 4, True),
        VcnsThreeFSStorageSpec("c", "/m", "d", 4, False, "h", 80, "uri"),
        MooncakeStorageSpec("h", "c", "rdma", "mlx5", "m:1"),
        TairMemPoolStorageSpec("dom", 3, True),
        LocalStorageSpec(),
    ]
    for spec in specs:
        config = StorageConfig("s", spec, check_storage_available_when_open=True, is_available=False)
        wire = admin.StorageConfig.FromString(to_message(config, admin.StorageConfig).SerializeToString())
        assert wire.WhichOneof("storage_spec") == spec.ONEOF
        assert from_message(wire, StorageConfig) == config
    assert from_message(admin.StorageConfig(global_unique_name="x"), StorageConfig) == StorageConfig("x")


def test_instance_group_round_trip_and_proto_zeros() -> None:
    group = dataclasses.replace(default_instance_group(), user_data="u", version=3)
    reclaim = group.cache_config.reclaim_strategy  # type: ignore[union-attr]
    if "ttl_seconds" in {f.name for f in dataclasses.fields(reclaim)}:  # kvsim extension, field 100
        reclaim = dataclasses.replace(reclaim, ttl_seconds=77)  # type: ignore[call-arg]
        group = dataclasses.replace(
            group, cache_config=dataclasses.replace(group.cache_config, reclaim_strategy=reclaim)
        )  # type: ignore[arg-type]
    wire = admin.InstanceGroup.FromString(to_message(group, admin.InstanceGroup).SerializeToString())
    assert from_message(wire, type(group)) == group
    # As the reference's proto -> model conversion: an absent indexer config arrives as zeros.
    bare = from_message(admin.InstanceGroup(cache_config=admin.CacheConfig()), type(group))
    assert bare.cache_config is not None
    assert bare.cache_config.meta_indexer_config.max_key_count == 0
    assert bare.cache_config.meta_indexer_config.meta_storage_backend_config.storage_type == ""
