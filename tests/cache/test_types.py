"""Domain model: masks, duplicate-detection rules, storage-config model JSON and the JSON codec."""

from __future__ import annotations

import json

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    ErrorCode,
    InstanceInfo,
    LocationSpecGroup,
    LocationSpecInfo,
    ModelDeployment,
    MooncakeStorageSpec,
    StorageConfig,
    StorageType,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
    codec,
    default_instance_group,
    default_storage_config,
)
from kvsim.cache.accounts import AccountRecord
from kvsim.cache.store import KeyRecord, StoredLocation
from kvsim.cache.types import CacheLocation, LocationSpec, LocationStatus


def test_block_mask_offset_and_bools() -> None:
    off = BlockMask.of_offset(2)
    assert off.to_bools(4) == [True, True, False, False]
    bools = BlockMask.of_bools([True, False, True])
    assert bools.bool_masks == (True, False, True)
    assert bools.to_bools(5) == [True, False, True, False, False]
    assert BlockMask(bool_masks=[1, 0]).bool_masks == (True, False)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{}, {"offset": 1, "bool_masks": (True,)}])
def test_block_mask_needs_exactly_one_form(kwargs: dict) -> None:
    with pytest.raises(CacheError) as err:
        BlockMask(**kwargs)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message == "block_mask: set exactly one of offset and bool_masks"


def test_model_equality_ignores_user_data_only() -> None:
    a = ModelDeployment("m", "bf16", tp_size=2, user_data="x")
    assert a.same_model(ModelDeployment("m", "bf16", tp_size=2, user_data="y"))
    assert not a.same_model(ModelDeployment("m", "bf16", tp_size=4))
    assert not a.same_model(ModelDeployment("m2", "bf16", tp_size=2))


def test_registration_equality_rules() -> None:
    base = InstanceInfo(
        instance_group_name="g1",
        instance_id="i",
        block_size=16,
        location_spec_infos=(LocationSpecInfo("tp0", 1), LocationSpecInfo("tp1", 1)),
        model_deployment=ModelDeployment("m", "bf16"),
        location_spec_groups=(LocationSpecGroup("b", ("tp1", "tp0")), LocationSpecGroup("a", ("tp0",))),
    )
    same = InstanceInfo(
        instance_group_name="another group",  # not compared
        instance_id="i",
        block_size=16,
        location_spec_infos=(LocationSpecInfo("tp0", 1), LocationSpecInfo("tp1", 1)),
        model_deployment=ModelDeployment("m", "bf16", user_data="u"),
        location_spec_groups=(LocationSpecGroup("a", ("tp0",)), LocationSpecGroup("b", ("tp0", "tp1"))),
    )
    assert base.same_registration(same)
    reordered = InstanceInfo(
        block_size=16,
        location_spec_infos=(LocationSpecInfo("tp1", 1), LocationSpecInfo("tp0", 1)),  # order matters
        model_deployment=ModelDeployment("m", "bf16"),
        location_spec_groups=base.location_spec_groups,
    )
    assert not base.same_registration(reordered)


def test_storage_config_model_json_matches_the_reference() -> None:
    cfg = default_storage_config()
    assert json.dumps([cfg.to_model_dict()], separators=(",", ":")) == (
        '[{"type":"file","is_available":true,"global_unique_name":"nfs_01",'
        '"storage_spec":{"root_path":"/tmp/nfs/","key_count_per_file":8}}]'
    )
    mc = StorageConfig("mc", MooncakeStorageSpec("h", "http://m", "tcp", "", "m:50051"))
    assert mc.type == StorageType.ST_MOONCAKE
    assert mc.to_model_dict()["storage_spec"] == {
        "local_hostname": "h",
        "metadata_connstring": "http://m",
        "protocol": "tcp",
        "rdma_device": "",
        "master_server_entry": "m:50051",
    }
    three = StorageConfig("3fs", ThreeFSStorageSpec("c", "/mnt", "kv", 4, True))
    assert three.to_model_dict()["storage_spec"] == {
        "cluster_name": "c",
        "mountpoint": "/mnt",
        "root_dir": "kv",
        "key_count_per_file": 4,
    }
    vcns = StorageConfig("v", VcnsThreeFSStorageSpec("c", "/m", "r", 1, False, "host", 9, "uri"))
    assert list(vcns.to_model_dict()["storage_spec"]) == [  # type: ignore[call-overload]
        "cluster_name",
        "mountpoint",
        "root_dir",
        "key_count_per_file",
        "remote_host",
        "remote_port",
        "meta_storage_uri",
    ]
    assert (vcns.type_name, vcns.type) == ("vcns_hf3fs", StorageType.ST_VCNS_3FS)
    pace = StorageConfig("p", TairMemPoolStorageSpec("d", 5, True))
    assert pace.to_model_dict()["storage_spec"] == {"enable_vipserver": True, "domain": "d", "timeout": 5}
    assert StorageConfig("x").to_model_dict() == {
        "type": "unknown",
        "is_available": True,
        "global_unique_name": "x",
        "storage_spec": {},
    }


@pytest.mark.parametrize(
    "obj",
    [
        default_storage_config(),
        default_instance_group(),
        StorageConfig("mc", MooncakeStorageSpec("h", "c", "rdma", "mlx5", "m"), is_available=False),
        InstanceInfo("q", "g", "i", 16, (LocationSpecInfo("tp0", 2),), ModelDeployment("m", "d", True, 2, 1)),
        AccountRecord("u", 1, "pbkdf2_sha256$1$00$00"),  # type: ignore[arg-type]
        KeyRecord(
            (
                StoredLocation(
                    "abcdefgh",
                    LocationStatus.CLS_WRITING,
                    CacheLocation(StorageType.ST_NFS, 1, (LocationSpec("tp0", "file://n/x?size=1"),)),
                    "n",
                    1,
                ),
            ),
            1.0,
            2.5,
            3,
        ),
    ],
)
def test_codec_round_trip(obj: object) -> None:
    assert codec.loads(type(obj), codec.dumps(obj)) == obj


def test_codec_encodes_enums_by_name_and_tags_specs() -> None:
    doc = codec.to_jsonable(default_instance_group())
    assert doc["cache_config"]["data_storage_strategy"] == "CPS_PREFER_3FS"
    assert doc["quota"]["quota_config"][0] == {"storage_type": "ST_NFS", "capacity": 10_000_000_000}
    assert codec.to_jsonable(default_storage_config())["spec"] == {
        "type": "file",
        "root_path": "/tmp/nfs/",
        "key_count_per_file": 8,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": 5}', "InstanceGroup.name: expected a string, got 5"),
        ('{"bogus": 1}', "InstanceGroup: unknown field(s) ['bogus']"),
        ('{"quota": {"capacity": "3"}}', "InstanceGroup.quota.capacity: expected an integer, got '3'"),
        ('{"quota": {"quota_config": [{"storage_type": "ST_X"}]}}', "unknown StorageType 'ST_X'"),
        ('{"storage_candidates": "a"}', "InstanceGroup.storage_candidates: expected a list, got str"),
        ('{"max_instance_count": true}', "expected an integer, got True"),
    ],
)
def test_codec_is_strict(text: str, message: str) -> None:
    from kvsim.cache.types import InstanceGroup

    with pytest.raises(ValueError, match=None) as err:
        codec.loads(InstanceGroup, text)
    assert message in str(err.value)


def test_codec_rejects_unknown_storage_types() -> None:
    with pytest.raises(ValueError, match="unknown storage type 'tape'"):
        codec.from_jsonable(StorageConfig, {"global_unique_name": "x", "spec": {"type": "tape"}})
