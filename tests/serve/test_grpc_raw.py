"""The gRPC API driven as a client written from the reference's documentation: the generated stubs,
the reference's service names, and every outcome in ``header.status`` with gRPC status OK."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from kvsim.serve.proto import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    debug_service_pb2,
    debug_service_pb2_grpc,
    meta_service_pb2,
    meta_service_pb2_grpc,
)

from .conftest import Served, new_manager

meta_pb = meta_service_pb2
OK = meta_pb.OK


@pytest.fixture
def channel(served: Served) -> Iterator[grpc.Channel]:
    served.install(new_manager())
    with grpc.insecure_channel(f"127.0.0.1:{served.endpoints.rpc_port}") as ch:
        yield ch


def test_reference_stub_round_trip(channel: grpc.Channel) -> None:
    meta = meta_service_pb2_grpc.MetaServiceStub(channel)
    reply = meta.RegisterInstance(
        meta_pb.RegisterInstanceRequest(
            trace_id="t",
            instance_group="default",
            instance_id="i1",
            block_size=128,
            location_spec_infos=[meta_pb.LocationSpecInfo(name="tp0", size=1024)],
            model_deployment=meta_pb.ModelDeployment(model_name="m", dtype="bfloat16"),
        ),
        timeout=10,
    )
    assert (reply.header.status.code, reply.header.status.message) == (OK, "Instance registered successfully")
    assert reply.header.request_id == "t_1700000000000000"
    start = meta.StartWriteCache(
        meta_pb.StartWriteCacheRequest(
            instance_id="i1", block_keys=[123], token_ids=[456], write_timeout_seconds=30
        ),
        timeout=10,
    )
    assert start.header.status.code == OK
    assert start.block_mask.WhichOneof("info") == "offset" and start.block_mask.offset == 0
    assert [s.uri for s in start.locations[0].location_specs] == [
        "file://nfs_01/tmp/nfs/i1/tp0/7b?blkid=0&size=1024"
    ]
    done = meta.FinishWriteCache(
        meta_pb.FinishWriteCacheRequest(
            instance_id="i1",
            write_session_id=start.write_session_id,
            success_blocks=meta_pb.BlockMask(bool_masks=meta_pb.BoolMasksType(values=[True])),
        ),
        timeout=10,
    )
    assert done.header.status.code == OK
    found = meta.GetCacheLocation(
        meta_pb.GetCacheLocationRequest(
            instance_id="i1", query_type=meta_pb.QT_PREFIX_MATCH, block_keys=[123]
        ),
        timeout=10,
    )
    assert list(found.locations) == list(start.locations)


def test_errors_are_in_the_header_with_grpc_ok(channel: grpc.Channel) -> None:
    meta = meta_service_pb2_grpc.MetaServiceStub(channel)
    reply = meta.GetCacheLocation(meta_pb.GetCacheLocationRequest(instance_id="ghost"), timeout=10)
    assert reply.header.status.code == meta_pb.INSTANCE_NOT_EXIST
    admin = admin_service_pb2_grpc.AdminServiceStub(
        channel
    )  # shares the meta port, as the reference's harness
    reply = admin.GetInstanceInfo(admin_service_pb2.GetInstanceInfoRequest(instance_id="ghost"), timeout=10)
    assert reply.header.status.code == admin_service_pb2.INTERNAL_ERROR
    reply = admin.ListInstanceInfo(admin_service_pb2.ListInstanceInfoRequest(), timeout=10)
    assert (reply.header.status.code, list(reply.instance_info)) == (admin_service_pb2.OK, [])
    health = admin.CheckHealth(admin_service_pb2.CheckHealthRequest(), timeout=10)
    assert (health.is_leader, health.is_health, health.elector_last_loop_time_ms) == (
        True,
        True,
        1_700_000_000_000,
    )
    debug = debug_service_pb2_grpc.DebugServiceStub(channel)
    reply = debug.ClearFaults(debug_service_pb2.ClearFaultsRequest(), timeout=10)
    assert (reply.header.status.code, reply.header.request_id) == (debug_service_pb2.OK, "")


def test_undecodable_request_is_invalid_argument_and_the_server_lives_on(channel: grpc.Channel) -> None:
    raw = channel.unary_unary("/kv_cache_manager.proto.meta.MetaService/GetCacheLocation")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/kv_cache_manager.proto.meta.MetaService/NoSuchMethod")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    meta = meta_service_pb2_grpc.MetaServiceStub(channel)
    assert (
        meta.TrimCache(meta_pb.TrimCacheRequest(), timeout=10).header.status.code
        == meta_pb.INSTANCE_NOT_EXIST
    )


def test_oversized_message_is_refused(channel: grpc.Channel, served: Served) -> None:
    meta = meta_service_pb2_grpc.MetaServiceStub(channel)
    big = meta_pb.GetCacheMetaRequest(trace_id="x" * (served.thread.settings.max_body_bytes + 1))
    with pytest.raises(grpc.RpcError) as err:
        meta.GetCacheMeta(big, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        meta.GetCacheMeta(meta_pb.GetCacheMetaRequest(), timeout=10).header.status.code
        == meta_pb.INSTANCE_NOT_EXIST
    )
