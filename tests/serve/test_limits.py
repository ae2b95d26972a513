"""Request limits: items per list field (``kvsim.max_keys_per_request``), body and message size
(``kvsim.max_body_bytes``), and requests in flight per listener (``kvsim.max_in_flight``)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kvsim.cache import CacheError, ErrorCode, GetCacheLocationRequest, QueryType
from kvsim.core import ManualClock
from kvsim.serve.catalog import rpc
from kvsim.serve.client import CacheClient
from kvsim.serve.limits import RequestLimits, grpc_server_options, list_fields
from kvsim.serve.proto import meta_service_pb2 as meta
from kvsim.serve.server import Endpoints, ServerThread
from kvsim.serve.service import KvcmService

from .conftest import T0, make_settings, new_manager

LIMIT = 8


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """A server allowing 8 items per list field, 4 KiB bodies and 2 requests in flight per listener."""
    mgr = new_manager()
    settings = make_settings(
        tmp_path_factory.mktemp("limits"), max_keys_per_request=LIMIT, max_body_bytes=4096, max_in_flight=2
    )
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings, background_poll=False) as thread:
        assert thread.endpoints is not None
        yield thread.endpoints


def over(n: int) -> str:
    return f"{n} items exceed the per-request limit of {LIMIT} (kvsim.max_keys_per_request)"


def test_list_fields_reach_nested_lists() -> None:
    assert list_fields(meta.GetCacheLocationRequest.DESCRIPTOR) == (
        ("block_keys",),
        ("token_ids",),
        ("block_mask", "bool_masks", "values"),
        ("location_spec_names",),
    )
    assert list_fields(meta.FinishWriteCacheRequest.DESCRIPTOR) == (
        ("success_blocks", "bool_masks", "values"),
        ("locations",),
    )


def test_request_limits_name_the_first_field_over() -> None:
    limits = RequestLimits(LIMIT)
    ok = meta.GetCacheLocationRequest(block_keys=range(LIMIT), token_ids=range(LIMIT))
    limits.check(ok)
    nested = meta.GetCacheLocationRequest(block_keys=range(3))
    nested.block_mask.bool_masks.values.extend([True] * (LIMIT + 1))
    with pytest.raises(CacheError) as err:
        limits.check(nested)
    assert (err.value.code, err.value.message) == (
        ErrorCode.INVALID_ARGUMENT,
        f"block_mask.bool_masks.values: {over(9)}",
    )
    with pytest.raises(ValueError, match="max_items"):
        RequestLimits(0)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_list_limit_over_the_wire(limited: Endpoints, transport: str) -> None:
    ep = limited
    if transport == "grpc":
        client = CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, retries=0)
    else:
        client = CacheClient.http(ep.host, ep.http_port, ep.admin_http_port, retries=0)
    with client:
        with pytest.raises(CacheError) as err:
            client.get_cache_location(
                GetCacheLocationRequest(
                    instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=tuple(range(LIMIT + 1))
                )
            )
        assert (err.value.code, err.value.message) == (ErrorCode.INVALID_ARGUMENT, f"block_keys: {over(9)}")
        # At the limit the request reaches the cache (which knows no instance i1).
        with pytest.raises(CacheError) as err:
            client.get_cache_location(
                GetCacheLocationRequest(
                    instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=tuple(range(LIMIT))
                )
            )
        assert err.value.code == ErrorCode.INSTANCE_NOT_EXIST
        # Admin requests are limited too (the admin service keeps INVALID_ARGUMENT).
        request = rpc("admin", "CreateInstanceGroup").request_type()
        request.instance_group.storage_candidates.extend(f"s{i}" for i in range(LIMIT + 3))  # type: ignore[attr-defined]
        with pytest.raises(CacheError) as err:
            client.call("admin", "CreateInstanceGroup", request)
        assert err.value.message == f"instance_group.storage_candidates: {over(11)}"


def test_default_limit_matches_the_cache() -> None:
    service = KvcmService(None, clock=ManualClock(T0))
    assert service.limits.max_items == 1_000_000


# ---------------------------------------------------------------------------------------------- size


def test_bodies_and_messages_over_the_size_limit(limited: Endpoints) -> None:
    big = json.dumps({"instance_id": "x" * 5000}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", limited.http_port, timeout=10)
    try:
        conn.request("POST", "/api/getCacheLocation", body=big)
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (413, b"{}")
    finally:
        conn.close()
    info = rpc("meta", "GetCacheLocation")
    with grpc.insecure_channel(f"127.0.0.1:{limited.rpc_port}") as channel:
        call = channel.unary_unary(info.grpc_path)
        with pytest.raises(grpc.RpcError) as err:
            call(info.request_type(instance_id="x" * 5000).SerializeToString(), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- in flight


def _stall(port: int) -> socket.socket:
    """Open a request whose body never finishes arriving (a slow or stalled client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /api/getCacheLocation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    return sock


def _post_status(port: int) -> tuple[int, str | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/api/getCacheLocation", body=b'{"instance_id":"x"}')
        reply = conn.getresponse()
        return reply.status, reply.getheader("Retry-After"), reply.read()
    finally:
        conn.close()


def test_http_in_flight_limit(limited: Endpoints) -> None:
    stalled = [_stall(limited.http_port) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while (answer := _post_status(limited.http_port))[0] != 503:  # the stalls need a moment to arrive
            assert time.monotonic() < deadline, f"never refused: {answer}"
            time.sleep(0.02)
        assert answer == (503, "1", b"{}")
        # Another listener has its own budget.
        conn = http.client.HTTPConnection("127.0.0.1", limited.admin_http_port, timeout=10)
        conn.request("POST", "/api/listStorage", body=b"{}")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        for sock in stalled:
            sock.close()
    deadline = time.monotonic() + 5
    while (answer := _post_status(limited.http_port))[0] != 200:  # closed stalls free their slots
        assert time.monotonic() < deadline, f"slots not freed: {answer}"
        time.sleep(0.02)


def test_grpc_limits_are_server_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP/2 stream limit and the in-flight limit reach every grpc.aio server the server builds."""
    assert grpc_server_options(7) == [("grpc.max_concurrent_streams", 7)]
    built: list[dict[str, object]] = []
    real = grpc.aio.server

    def spy(*args: object, **kwargs: object) -> grpc.aio.Server:
        built.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(grpc.aio, "server", spy)
    mgr = new_manager()
    settings = make_settings(tmp_path, max_concurrent_streams=7, max_in_flight=33, admin_rpc_port=0)
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings):
        pass
    assert len(built) == 1  # the admin service shares the meta server here
    assert built[0]["maximum_concurrent_rpcs"] == 33
    assert ("grpc.max_concurrent_streams", 7) in built[0]["options"]  # type: ignore[operator]
