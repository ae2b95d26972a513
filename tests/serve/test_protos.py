"""The protos: committed stubs current, the reference's names and field numbers, one handler per RPC."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kvsim.serve import catalog
from kvsim.serve.handlers import routes
from kvsim.serve.proto import admin_service_pb2, debug_service_pb2, meta_service_pb2

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


def test_catalog_and_paths() -> None:
    assert [len(catalog.rpcs(k)) for k in catalog.SERVICE_KINDS] == [8, 28, 3]
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


def test_every_rpc_has_exactly_one_handler() -> None:
    table = routes()
    assert {k: sorted(v) for k, v in table.items()} == {
        k: sorted(catalog.rpcs(k)) for k in catalog.SERVICE_KINDS
    }
    faultable = sorted(n for n, r in table["meta"].items() if r.faultable)
    assert faultable == ["FinishWriteCache", "GetCacheLocation", "StartWriteCache"]
