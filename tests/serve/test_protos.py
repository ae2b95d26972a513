"""The protos: committed stubs current, the reference's names and field numbers (the kv_meta package's too),
one handler per RPC."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kvsim.serve import catalog
from kvsim.serve.handlers import routes
from kvsim.serve.proto import admin_service_pb2, debug_service_pb2, kv_meta_service_pb2, meta_service_pb2

ROOT = Path(__file__).resolve().parents[2]


def _gen_protos():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_modules_match_the_protos() -> None:
    """Fails when a .proto changed without ``python scripts/gen_protos.py``."""
    pytest.importorskip("grpc_tools")
    assert _gen_protos().stale_files() == []


def fields(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_reference_field_numbers() -> None:
    m = meta_service_pb2
    assert fields(m.RegisterInstanceRequest) == {
        "trace_id": 1,
        "instance_group": 2,
        "instance_id": 3,
        "block_size": 4,
        "location_spec_infos": 5,
        "model_deployment": 6,
        "location_spec_groups": 7,
    }
    assert fields(m.GetCacheLocationRequest) == {
        "trace_id": 1,
        "instance_id": 2,
        "query_type": 3,
        "block_keys": 4,
        "token_ids": 5,
        "block_mask": 6,
        "sw_size": 7,
        "location_spec_names": 8,
    }
    assert fields(m.CommonResponseHeader) == {"status": 1, "request_id": 2, "tracer_result": 3}
    assert fields(m.CommonResponse) == {"header": 1, "kvsim_counts": 100}  # 100: kvsim extension
    assert [o.name for o in m.BlockMask.DESCRIPTOR.oneofs] == ["info"]
    assert fields(m.BlockMask) == {"offset": 1, "bool_masks": 2}
    assert m.StorageConfig.DESCRIPTOR.fields_by_name["vcnsthreefs"].message_type.name == "ThreeFSStorageSpec"
    a = admin_service_pb2
    assert fields(a.CommonResponseHeader) == {"status": 1, "request_id": 2}
    assert (
        a.StorageConfig.DESCRIPTOR.fields_by_name["vcnsthreefs"].message_type.name == "VcnsThreeFSStorageSpec"
    )
    assert fields(a.InstanceGroup) == {
        "name": 1,
        "storage_candidates": 2,
        "global_quota_group_name": 3,
        "max_instance_count": 4,
        "quota": 5,
        "cache_config": 6,
        "user_data": 7,
        "version": 8,
    }
    assert fields(a.GetInstanceInfoResponse) == {"header": 1, "instance_info": 2}
    assert (m.OK, m.INVALID_ARGUMENT, m.INSTANCE_NOT_EXIST, m.ERROR_MAX) == (1, 5, 8, 65535)
    assert [v.name for v in debug_service_pb2.ErrorCode.DESCRIPTOR.values] == [
        "UNSPECIFIED",
        "OK",
        "UNSUPPORTED",
        "INTERNAL_ERROR",
        "SERVICE_NOT_READY",
        "INVALID_ARGUMENT",
        "IO_ERROR",
        "UNKNOWN_ERROR",
        "ERROR_MAX",
    ]


def enum_values(enum: object) -> dict[str, int]:
    return {v.name: v.number for v in enum.DESCRIPTOR.values}  # type: ignore[attr-defined]


def test_kv_meta_field_numbers() -> None:
    """The reference's kv_meta package, plus kvsim's two extension fields (number 100)."""
    k = kv_meta_service_pb2
    assert k.DESCRIPTOR.package == "kv_cache_manager.proto.kv_meta"
    assert enum_values(k.ErrorCode) == {
        "UNSPECIFIED": 0,
        "OK": 1,
        "UNSUPPORTED": 2,
        "INTERNAL_ERROR": 3,
        "SERVICE_NOT_READY": 4,
        "INVALID_ARGUMENT": 5,
        "REACH_MAX_ENTITY_CAPACITY": 7,
        "INSTANCE_NOT_EXIST": 8,
        "IO_ERROR": 20,
        "UNKNOWN_ERROR": 100,
        "ERROR_MAX": 65535,
    }
    assert enum_values(k.StorageType) == {
        "ST_UNSPECIFIED": 0,
        "ST_3FS": 1,
        "ST_MOONCAKE": 2,
        "ST_TAIRMEMPOOL": 3,
        "ST_NFS": 4,
        "ST_VCNS_3FS": 5,
        "ST_DUMMY": 6,
        "ST_EVENT_REPORT": 7,
    }
    assert enum_values(k.QueryType) == {"QT_UNSPECIFIED": 0, "QT_BATCH_GET": 1}
    assert enum_values(k.TrimStrategy) == {
        "TS_UNSPECIFIED": 0,
        "TS_REMOVE_ALL_CACHE": 1,
        "TS_REMOVE_ALL_META": 2,
        "TS_TIMESTAMP": 3,
    }
    assert fields(k.Status) == {"code": 1, "message": 2}
    assert fields(k.CommonResponseHeader) == {"status": 1, "request_id": 2, "tracer_result": 3}
    assert fields(k.CommonResponse) == {"header": 1, "kvsim_counts": 100}  # 100: kvsim extension
    assert fields(k.LocationSpec) == {"name": 1, "uri": 2}
    assert fields(k.ValueLocation) == {"type": 1, "spec_size": 2, "location_specs": 3}
    assert fields(k.InstanceInfo) == {"quota_group_name": 1, "instance_group_name": 2, "instance_id": 3}
    assert fields(k.LocalStorageSpec) == {}
    assert fields(k.DummyStorageSpec) == {"root_path": 1, "key_count_per_file": 2}
    threefs = {
        "cluster_name": 1,
        "mountpoint": 2,
        "root_dir": 3,
        "key_count_per_file": 4,
        "touch_file_when_create": 5,
    }
    assert fields(k.ThreeFSStorageSpec) == threefs
    assert fields(k.VcnsThreeFSStorageSpec) == {
        **threefs,
        "remote_host": 6,
        "remote_port": 7,
        "meta_storage_uri": 8,
    }
    assert fields(k.MooncakeStorageSpec) == {
        "local_hostname": 1,
        "metadata_connstring": 2,
        "protocol": 3,
        "rdma_device": 4,
        "master_service_entry": 5,
    }
    assert fields(k.TairMemPoolStorageSpec) == {"domain": 1, "timeout": 2}
    assert fields(k.NfsStorageSpec) == {"root_path": 1, "key_count_per_file": 2}
    assert fields(k.StorageConfig) == {
        "global_unique_name": 1,
        "local": 2,
        "threefs": 3,
        "mooncake": 4,
        "tair_mem_pool": 5,
        "nfs": 6,
        "vcnsthreefs": 7,
        "check_storage_available_when_open": 8,
        "dummy": 9,
    }
    assert [f.name for f in k.StorageConfig.DESCRIPTOR.oneofs_by_name["storage_spec"].fields] == [
        "local",
        "threefs",
        "mooncake",
        "tair_mem_pool",
        "nfs",
        "vcnsthreefs",
        "dummy",
    ]
    assert k.StorageConfig.DESCRIPTOR.fields_by_name["vcnsthreefs"].message_type.name == "ThreeFSStorageSpec"
    assert fields(k.RegisterInstanceRequest) == {
        "trace_id": 1,
        "instance_group": 2,
        "instance_id": 3,
        "user_data": 4,
    }
    assert fields(k.RegisterInstanceResponse) == {"header": 1, "storage_configs": 2}
    assert fields(k.GetInstanceInfoRequest) == {"trace_id": 1, "instance_id": 2}
    assert fields(k.GetInstanceInfoResponse) == {"header": 1, "instance_group": 2, "instance_info": 3}
    assert fields(k.KeyMask) == {"values": 1}
    assert fields(k.Meta) == {"key": 1, "value": 2}
    assert fields(k.GetRequest) == {"trace_id": 1, "instance_id": 2, "query_type": 3, "keys": 4, "metas": 5}
    assert fields(k.GetResponse) == {"header": 1, "locations": 2}
    assert fields(k.PutStartRequest) == {
        "trace_id": 1,
        "instance_id": 2,
        "keys": 3,
        "write_timeout_seconds": 4,
    }
    assert fields(k.PutStartResponse) == {"header": 1, "write_session_id": 2, "key_mask": 3, "locations": 4}
    assert fields(k.PutFinishRequest) == {
        "trace_id": 1,
        "instance_id": 2,
        "write_session_id": 3,
        "locations": 4,
        "success_mask": 100,  # kvsim extension
    }
    assert fields(k.RemoveRequest) == {"trace_id": 1, "instance_id": 2, "keys": 3}
    assert fields(k.TrimRequest) == {
        "trace_id": 1,
        "instance_id": 2,
        "strategy": 3,
        "begin_timestamp": 4,
        "end_timestamp": 5,
    }
    service = k.DESCRIPTOR.services_by_name["MetaService"]
    assert [(m.name, m.input_type.name, m.output_type.name) for m in service.methods] == [
        ("RegisterInstance", "RegisterInstanceRequest", "RegisterInstanceResponse"),
        ("GetInstanceInfo", "GetInstanceInfoRequest", "GetInstanceInfoResponse"),
        ("Get", "GetRequest", "GetResponse"),
        ("PutStart", "PutStartRequest", "PutStartResponse"),
        ("PutFinish", "PutFinishRequest", "CommonResponse"),
        ("Remove", "RemoveRequest", "CommonResponse"),
        ("Trim", "TrimRequest", "CommonResponse"),
    ]


def test_catalog_and_paths() -> None:
    assert [len(catalog.rpcs(k)) for k in catalog.ALL_SERVICE_KINDS] == [8, 28, 3, 7]
    info = catalog.rpc("meta", "RegisterInstance")
    assert info.grpc_path == "/kv_cache_manager.proto.meta.MetaService/RegisterInstance"
    assert info.http_name == "registerInstance"
    assert catalog.rpc("admin", "GenConfigSnapshot").response_type is admin_service_pb2.ConfigSnapShotResponse
    assert (
        catalog.rpc("debug", "InjectFault").grpc_path
        == "/kv_cache_manager.proto.debug.DebugService/InjectFault"
    )
    assert catalog.rpc("meta", "GetCacheLocation").idempotent
    assert not catalog.rpc("meta", "StartWriteCache").idempotent
    put = catalog.rpc("kv_meta", "PutStart")
    assert (put.grpc_path, put.http_name) == (
        "/kv_cache_manager.proto.kv_meta.MetaService/PutStart",
        "putStart",
    )
    assert (put.api_name, catalog.rpc("meta", "RegisterInstance").api_name) == (
        "kv_meta.PutStart",
        "RegisterInstance",
    )
    idempotent = {name for name, info in catalog.rpcs("kv_meta").items() if info.idempotent}
    assert idempotent == {"RegisterInstance", "GetInstanceInfo", "Get", "Remove"}


def test_every_rpc_has_exactly_one_handler() -> None:
    table = routes()
    assert {k: sorted(v) for k, v in table.items()} == {
        k: sorted(catalog.rpcs(k)) for k in catalog.ALL_SERVICE_KINDS
    }
    faultable = sorted(n for n, r in table["meta"].items() if r.faultable)
    assert faultable == ["FinishWriteCache", "GetCacheLocation", "StartWriteCache"]
