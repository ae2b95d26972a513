"""The HTTP API driven with raw JSON, as the reference's documentation shows it (study §1.1, §1.8).

Requests send int64 values as strings and as numbers, enums by name and by number, unknown fields and
lowerCamel names; responses must print snake_case keys, defaults, enum names and int64 as strings. Bad
input gets 400 / 413 / 404 and never crashes or hangs the server.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest

from .conftest import Served, new_manager


def post(port: int, path: str, body: bytes | str, timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        raw = reply.read()
        return reply.status, json.loads(raw) if raw.startswith(b"{") else raw
    finally:
        conn.close()


@pytest.fixture
def meta(served: Served) -> int:
    served.install(new_manager())
    return served.endpoints.http_port


def test_reference_lifecycle_with_raw_json(meta: int) -> None:
    """The study's §1.8 request sequence, byte for byte as a documentation-only client sends it."""
    status, body = post(
        meta,
        "/api/registerInstance",
        '{"trace_id":"t","instance_group":"default","instance_id":"i1","block_size":16,'
        '"model_deployment":{"model_name":"m","dtype":"bfloat16","tp_size":2},'
        '"location_spec_infos":[{"name":"tp0","size":1048576},{"name":"tp1","size":"1048576"}]}',
    )
    assert status == 200
    assert body["header"]["status"] == {"code": "OK", "message": "Instance registered successfully"}
    assert body["header"]["request_id"] == "t_1700000000000000"
    assert body["header"]["tracer_result"] == ""
    assert json.loads(body["storage_configs"])[0]["global_unique_name"] == "nfs_01"

    # int64 keys as strings and as numbers in one list; an unknown field is ignored.
    status, body = post(
        meta,
        "/api/startWriteCache",
        '{"trace_id":"t","instance_id":"i1","block_keys":["1",2,"3"],"write_timeout_seconds":30,"future":1}',
    )
    assert status == 200 and body["header"]["status"]["code"] == "OK"
    assert body["block_mask"] == {"offset": 0}
    assert len(body["write_session_id"]) == 32
    assert [loc["type"] for loc in body["locations"]] == ["ST_NFS"] * 3
    assert body["locations"][0]["spec_size"] == 2
    session = body["write_session_id"]

    # lowerCamel field names are accepted too (protobuf's JSON rules).
    status, body = post(
        meta,
        "/api/finishWriteCache",
        json.dumps(
            {
                "traceId": "t",
                "instanceId": "i1",
                "writeSessionId": session,
                "successBlocks": {"bool_masks": {"values": [True, True, False]}},
            }
        ),
    )
    assert status == 200 and body["header"]["status"]["code"] == "OK"
    assert body["kvsim_counts"] == {
        "num_serving": "2",
        "num_failed": "1",
        "num_keys": "0",
        "num_locations": "0",
    }

    # Enum by number; the block mask by offset.
    status, body = post(
        meta,
        "/api/getCacheLocation",
        '{"trace_id":"t","instance_id":"i1","query_type":2,"block_keys":[1,"2",3],"block_mask":{"offset":1}}',
    )
    assert status == 200 and body["header"]["status"]["code"] == "OK"
    assert len(body["locations"]) == 1
    assert body["locations"][0]["location_specs"][0]["name"] == "tp0"


def test_defaults_are_printed_and_errors_are_in_the_header(meta: int) -> None:
    status, body = post(
        meta, "/api/getCacheLocation", '{"instance_id":"ghost","query_type":"QT_PREFIX_MATCH"}'
    )
    assert status == 200
    assert body == {
        "header": {
            "status": {
                "code": "INSTANCE_NOT_EXIST",
                "message": "instance_id: instance 'ghost' does not exist",
            },
            "request_id": "_1700000000000000",
            "tracer_result": "",
        },
        "locations": [],
    }


def test_missing_fields_are_invalid_argument_naming_them(meta: int) -> None:
    status, body = post(meta, "/api/registerInstance", "{}")
    assert status == 200
    assert body["header"]["status"] == {"code": "INVALID_ARGUMENT", "message": "instance_group: is required"}
    assert body["storage_configs"] == ""
    status, body = post(
        meta, "/api/registerInstance", '{"instance_group":"default","instance_id":"i","block_size":4}'
    )
    assert body["header"]["status"] == {
        "code": "INVALID_ARGUMENT",
        "message": "model_deployment: is required",
    }


def test_admin_enums_by_name_and_int64_as_strings(served: Served) -> None:
    served.install(new_manager())
    admin = served.endpoints.admin_http_port
    status, body = post(admin, "/api/getInstanceGroup", '{"name":"default"}')
    assert status == 200
    group = body["instance_group"]
    assert group["cache_config"]["data_storage_strategy"] == "CPS_PREFER_3FS"
    assert group["quota"]["capacity"] == "30000000000"
    assert group["quota"]["quota_config"][0] == {"storage_type": "ST_NFS", "capacity": "10000000000"}
    assert "tracer_result" not in body["header"]  # the admin header has fields 1-2 only
    status, body = post(admin, "/api/getInstanceInfo", '{"instance_id":"nope"}')
    assert body["header"]["status"]["code"] == "INTERNAL_ERROR"  # admin folds INSTANCE_NOT_EXIST
    status, body = post(
        admin, "/api/addStorage", '{"storage":{"global_unique_name":"s2","nfs":{"root_path":"/tmp/s2/"}}}'
    )
    assert body["header"]["status"] == {"code": "OK", "message": "Storage added successfully"}
    status, body = post(admin, "/api/listStorage", "{}")
    assert [s["global_unique_name"] for s in body["storage"]] == ["nfs_01", "s2"]
    assert body["storage"][1] == {
        "global_unique_name": "s2",
        "nfs": {"root_path": "/tmp/s2/", "key_count_per_file": 0},  # unset on the wire: 0, as sent
        "check_storage_available_when_open": False,
        "is_available": True,
    }


def test_debug_service_accepts_the_reference_tests_fault_type(served: Served) -> None:
    """§1.6: the integration test sends "INTERNAL_ERROR", not a FaultType name; it is skipped as unknown,
    leaving FT_INTERNAL_ERROR, so the injection still works."""
    served.install(new_manager())
    debug = served.endpoints.debug_http_port
    assert debug is not None
    status, body = post(
        debug,
        "/api/injectFault",
        '{"api_name":"StartWriteCache","fault_type":"INTERNAL_ERROR","fault_trigger_strategy":"ONCE",'
        '"trigger_at_call":3}',
    )
    assert status == 200
    assert body == {
        "header": {
            "status": {
                "code": "OK",
                "message": "Inject fault successfully, api_name: StartWriteCache, "
                "fault_type: internal_error, "
                "fault_trigger_strategy: once",
            },
            "request_id": "",
        }
    }
    assert (
        post(debug, "/api/removeFault", '{"api_name":"StartWriteCache"}')[1]["header"]["status"]["code"]
        == "OK"
    )
    assert post(debug, "/api/removeFault", '{"api_name":"StartWriteCache"}')[1]["header"]["status"] == {
        "code": "INVALID_ARGUMENT",
        "message": "api_name: no fault is injected for 'StartWriteCache'",
    }
    assert post(debug, "/api/injectFault", "{}")[1]["header"]["status"]["code"] == "INVALID_ARGUMENT"
    assert post(debug, "/api/clearFaults", "{}")[1]["header"]["status"]["code"] == "OK"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"[]",
        b'"text"',
        b"\xff\xfe",
        b'{"block_keys":["x"]}',
        b'{"block_keys":["99999999999999999999999"]}',
        b'{"query_type":{}}',
        b'{"instance_id":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "empty",
        "truncated",
        "text",
        "array",
        "string",
        "bad-utf8",
        "bad-int",
        "int-overflow",
        "bad-enum",
        "deep",
    ],
)
def test_malformed_json_is_400_and_the_server_lives_on(meta: int, body: bytes) -> None:
    assert post(meta, "/api/getCacheLocation", body) == (400, {})
    status, reply = post(meta, "/api/getCacheLocation", '{"instance_id":"i","query_type":"QT_BATCH_GET"}')
    assert status == 200 and reply["header"]["status"]["code"] == "INSTANCE_NOT_EXIST"


def test_oversized_body_is_413(served: Served, meta: int) -> None:
    limit = served.thread.settings.max_body_bytes
    body = b'{"trace_id":"' + b"x" * limit + b'"}'
    assert post(meta, "/api/getCacheLocation", body) == (413, {})
    assert post(meta, "/api/getCacheLocation", "{}")[0] == 200


def test_unknown_path_and_method(meta: int) -> None:
    status, _ = post(meta, "/api/noSuchMethod", "{}")
    assert status == 404
    status, _ = post(meta, "/api/addStorage", "{}")  # an admin method is not on the meta port
    assert status == 404
    conn = http.client.HTTPConnection("127.0.0.1", meta, timeout=10)
    conn.request("GET", "/api/getCacheLocation")
    assert conn.getresponse().status == 405
    conn.close()


def test_a_client_that_stops_mid_body_does_not_hang_the_server(meta: int) -> None:
    with socket.create_connection(("127.0.0.1", meta), timeout=10) as sock:
        sock.sendall(b"POST /api/getCacheLocation HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    status, reply = post(meta, "/api/getCacheLocation", '{"instance_id":"i","query_type":1}')
    assert status == 200 and reply["header"]["status"]["code"] == "INSTANCE_NOT_EXIST"
