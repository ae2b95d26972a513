"""RegisterInstance, GetInstanceInfo, ListInstanceInfo and RemoveInstance (§1.4, §7 meta/admin cases)."""

from __future__ import annotations

import json

import pytest

from kvsim.cache import (
    CacheError,
    CacheManager,
    ErrorCode,
    GetInstanceInfoRequest,
    InstanceInfo,
    LocationSpecGroup,
    LocationSpecInfo,
    ModelDeployment,
    RegisterInstanceRequest,
    default_instance_group,
)
from kvsim.core import ManualClock

from .conftest import make_manager, register, start

NFS_JSON = (
    '[{"type":"file","is_available":true,"global_unique_name":"nfs_01",'
    '"storage_spec":{"root_path":"/tmp/nfs/","key_count_per_file":8}}]'
)


def code_of(fn: object, *args: object) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.code, err.value.message


def test_register_returns_the_groups_storage_configs(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    configs = register(mgr, "i1", specs=[("tp0", 1024)], block_size=128)
    assert configs == NFS_JSON
    assert json.loads(configs)[0]["global_unique_name"] == "nfs_01"


def test_register_identical_again_is_ok_and_other_params_are_duplicate(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr, "i1", model=ModelDeployment("m", "bf16", tp_size=2, user_data="a"))
    # user_data and the requested group name are not compared
    assert register(mgr, "i1", model=ModelDeployment("m", "bf16", tp_size=2, user_data="b")) == NFS_JSON
    code, message = code_of(register, mgr, "i1", *())
    assert code == ErrorCode.DUPLICATE_ENTITY
    assert message == "instance_id: 'i1' is already registered with other parameters"
    with pytest.raises(CacheError) as err:
        register(mgr, "i1", model=ModelDeployment("other", "bf16", tp_size=2))
    assert err.value.code == ErrorCode.DUPLICATE_ENTITY


def test_register_in_unknown_group_is_internal_error(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    with pytest.raises(CacheError) as err:
        register(mgr, "i1", group="nope")
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "instance_group: group 'nope' does not exist",
    )
    assert mgr.list_instance_info() == ()


def request(**overrides: object) -> RegisterInstanceRequest:
    base: dict[str, object] = {
        "instance_group": "default",
        "instance_id": "i1",
        "block_size": 16,
        "location_spec_infos": (LocationSpecInfo("tp0", 64),),
        "model_deployment": ModelDeployment("m", "bf16"),
    }
    base.update(overrides)
    return RegisterInstanceRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"instance_group": ""}, "instance_group: is required"),
        ({"instance_id": ""}, "instance_id: is required"),
        ({"model_deployment": None}, "model_deployment: is required"),
        ({"model_deployment": ModelDeployment("", "bf16")}, "model_deployment.model_name: is required"),
        ({"model_deployment": ModelDeployment("m", "")}, "model_deployment.dtype: is required"),
        ({"location_spec_infos": ()}, "location_spec_infos: needs at least one spec"),
        ({"location_spec_infos": (LocationSpecInfo("", 1),)}, "location_spec_infos[0].name: is required"),
        (
            {"location_spec_infos": (LocationSpecInfo("a", 1), LocationSpecInfo("a", 1))},
            "location_spec_infos[1].name: duplicate spec name 'a'",
        ),
        (
            {"location_spec_infos": (LocationSpecInfo("a", 0),)},
            "location_spec_infos[0].size: must be >= 1, got 0",
        ),
        ({"block_size": 0}, "block_size: must be >= 1, got 0"),
        ({"block_size": -4}, "block_size: must be >= 1, got -4"),
        (
            {"location_spec_groups": (LocationSpecGroup("g", ("tp9",)),)},
            "location_spec_groups[0].spec_names: unknown spec 'tp9'",
        ),
        (
            {"location_spec_groups": (LocationSpecGroup("g", ()),)},
            "location_spec_groups[0].spec_names: needs",
        ),
    ],
)
def test_register_validation(clock: ManualClock, overrides: dict, message: str) -> None:
    mgr = make_manager(clock)
    with pytest.raises(CacheError) as err:
        mgr.register_instance(request(**overrides))
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith(message)
    assert mgr.list_instance_info() == ()


def test_get_instance_info(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    code, _ = code_of(mgr.get_instance_info, GetInstanceInfoRequest(instance_id="i1"))
    assert code == ErrorCode.INSTANCE_NOT_EXIST
    code, message = code_of(mgr.get_instance_info, GetInstanceInfoRequest(instance_id=""))
    assert (code, message) == (ErrorCode.INVALID_ARGUMENT, "instance_id: is required")
    mgr.register_instance(
        request(
            block_size=64,
            location_spec_infos=(LocationSpecInfo("tp0", 8), LocationSpecInfo("tp1", 8)),
            model_deployment=ModelDeployment("qwen", "fp8", use_mla=True, tp_size=2, dp_size=1, pp_size=1),
            location_spec_groups=(LocationSpecGroup("z", ("tp1", "tp0")), LocationSpecGroup("a", ("tp0",))),
        )
    )
    res = mgr.get_instance_info(GetInstanceInfoRequest(instance_id="i1"))
    assert res.instance_group == "default"
    assert res.instance_info == InstanceInfo(
        quota_group_name="default_quota_group",
        instance_group_name="default",
        instance_id="i1",
        block_size=64,
        location_spec_infos=(LocationSpecInfo("tp0", 8), LocationSpecInfo("tp1", 8)),
        model_deployment=ModelDeployment("qwen", "fp8", use_mla=True, tp_size=2, dp_size=1, pp_size=1),
        location_spec_groups=(LocationSpecGroup("a", ("tp0",)), LocationSpecGroup("z", ("tp0", "tp1"))),
    )


def test_list_and_remove_instances_admin_case(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    group = default_instance_group()
    mgr.create_instance_group(
        type(group)(**{**{f: getattr(group, f) for f in group.__dataclass_fields__}, "name": "g2"})
    )
    register(mgr, "instance_123", specs=[("tp0", 2048)], group="g2")
    register(mgr, "i0", group="default")
    assert [i.instance_id for i in mgr.list_instance_info("g2")] == ["instance_123"]
    assert [i.instance_id for i in mgr.list_instance_info("unknown")] == []
    assert [i.instance_id for i in mgr.list_instance_info("")] == ["i0", "instance_123"]
    assert mgr.remove_instance("instance_123", "g2").num_keys == 0
    assert [i.instance_id for i in mgr.list_instance_info("g2")] == []
    mgr.remove_instance_group("g2")
    code, message = code_of(mgr.remove_instance, "instance_123")
    assert (code, message) == (
        ErrorCode.INTERNAL_ERROR,
        "instance_id: instance 'instance_123' does not exist",
    )
    code, _ = code_of(mgr.remove_instance, "i0", "g2")
    assert code == ErrorCode.INTERNAL_ERROR


def test_remove_instance_deletes_its_cache_and_sessions(mgr: CacheManager, clock: ManualClock) -> None:
    start(mgr, [1, 2, 3])
    assert mgr.backend("nfs_01").used_bytes == 3 * 1024  # type: ignore[attr-defined]
    res = mgr.remove_instance("i1")
    assert (res.num_keys, res.num_locations) == (3, 3)
    assert mgr.num_open_sessions() == 0
    assert mgr.poll().deleted_locations == 3
    assert mgr.backend("nfs_01").used_bytes == 0  # type: ignore[attr-defined]
    # Re-registering starts from an empty index.
    register(mgr, "i1")
    assert start(mgr, [1, 2, 3]).block_mask.offset == 0
