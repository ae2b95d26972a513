"""The string-key KV meta service on the wire: a contract suite run through the gRPC and the HTTP client
against one real server with the KV ports on, raw JSON and raw stub checks of the wire format, error
codes, and the ports being off unless set."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import grpc
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
    KvPutFinishRequest,
    KvPutStartRequest,
    KvQueryType,
    KvRegisterInstanceRequest,
    KvRemoveRequest,
    KvTrimRequest,
    LocationSpec,
    RemoveCacheResult,
    StorageType,
    TrimCacheResult,
    TrimStrategy,
)
from kvsim.core import ManualClock
from kvsim.serve.catalog import ALL_SERVICE_KINDS, SERVICE_KINDS, rpcs
from kvsim.serve.client import CacheClient, connect
from kvsim.serve.leader import leader_only
from kvsim.serve.proto import kv_meta_service_pb2, kv_meta_service_pb2_grpc
from kvsim.serve.server import ServerThread
from kvsim.serve.service import KvcmService, wire_code

from .conftest import T0, Served, make_settings, new_manager

KV_VALUE_BYTES = 2048  # the server's kvsim.kv_value_size_bytes
MAX_KEYS = 64  # the server's kvsim.max_keys_per_request
NFS = "file://nfs_01/tmp/nfs"
EMPTY = CacheLocation()
BATCH = KvQueryType.QT_BATCH_GET
pb = kv_meta_service_pb2


@pytest.fixture(scope="module")
def kv_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    mgr = new_manager()
    service = KvcmService(mgr, clock=mgr.clock)
    settings = make_settings(
        tmp_path_factory.mktemp("kv"),
        kv_rpc_port=0,
        kv_http_port=0,
        kv_value_size_bytes=KV_VALUE_BYTES,
        max_keys_per_request=MAX_KEYS,
    )
    thread = ServerThread(service, settings, background_poll=False)
    endpoints = thread.start()
    try:
        yield Served(thread, service, endpoints)
    finally:
        thread.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def kv_clients(kv_served: Served) -> Iterator[dict[str, CacheClient]]:
    ep = kv_served.endpoints
    with (
        CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, kv_rpc_port=ep.kv_rpc_port, retries=1) as g,
        CacheClient.http(
            ep.host, ep.http_port, ep.admin_http_port, kv_http_port=ep.kv_http_port, retries=1
        ) as h,
    ):
        yield {"grpc": g, "http": h}


class Kv:
    """One contract test's access: ``api`` is the client's KV API over a fresh manager the server serves."""

    def __init__(self, served: Served, client: CacheClient) -> None:
        self.clock = ManualClock(T0)
        self.mgr = new_manager(self.clock)
        served.install(self.mgr)
        self._served = served
        self.api = client.kv

    def poll(self) -> Any:
        """The cache's poll, on the server's thread."""
        return self._served.thread.call(self.mgr.poll)

    def register(self, instance_id: str = "kv1", user_data: str = "") -> str:
        request = KvRegisterInstanceRequest(
            trace_id="t", instance_group="default", instance_id=instance_id, user_data=user_data
        )
        return self.api.register_instance(request).storage_configs  # type: ignore[no-any-return]

    def get(self, *keys: str) -> tuple[CacheLocation, ...]:
        return self.api.get(KvGetRequest(instance_id="kv1", query_type=BATCH, keys=keys)).locations  # type: ignore[no-any-return]

    def put_start(self, *keys: str, timeout: int = 30) -> Any:
        return self.api.put_start(
            KvPutStartRequest(instance_id="kv1", keys=keys, write_timeout_seconds=timeout)
        )

    def put_finish(self, session: str, mask: tuple[bool, ...] | None = None) -> FinishWriteCacheResult:
        success = KeyMask(mask) if mask is not None else None
        request = KvPutFinishRequest(instance_id="kv1", write_session_id=session, success_mask=success)
        return self.api.put_finish(request)  # type: ignore[no-any-return]


@pytest.fixture(params=["grpc", "http"])
def kv(request: pytest.FixtureRequest, kv_served: Served, kv_clients: dict[str, CacheClient]) -> Kv:
    return Kv(kv_served, kv_clients[request.param])


def value_at(file: str, blkid: int, size: int = KV_VALUE_BYTES) -> CacheLocation:
    uri = f"{NFS}/kv1/value/{file}?blkid={blkid}&size={size}"
    return CacheLocation(StorageType.ST_NFS, 1, (LocationSpec("value", uri),))


def error(fn: Any, *args: Any) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(*args)
    return err.value.code, err.value.message


# ---------------------------------------------------------------------------------------------- contract


def test_register_and_instance_info(kv: Kv) -> None:
    assert kv.register() == (
        '[{"type":"file","is_available":true,"global_unique_name":"nfs_01",'
        '"storage_spec":{"root_path":"/tmp/nfs/","key_count_per_file":8}}]'
    )
    kv.register()  # the same again: fine
    kv.register("kv2", '{"value_size_bytes": 100}')
    sizes = [
        kv.mgr.get_instance_info(GetInstanceInfoRequest(instance_id=i))
        .instance_info.location_spec_infos[0]
        .size
        for i in ("kv1", "kv2")
    ]
    assert sizes == [KV_VALUE_BYTES, 100]  # the server's default, then the user_data's
    assert kv.api.get_instance_info(KvGetInstanceInfoRequest(instance_id="kv2")) == KvGetInstanceInfoResult(
        "default", KvInstanceInfo("default_quota_group", "default", "kv2")
    )


def test_two_phase_write_with_masks_and_batch_get(kv: Kv) -> None:
    kv.register()
    first = kv.put_start("k1", "k2")
    file_12 = "6ab9f1eb8f7d3388_f4d769bd12a6f1ad"
    assert (first.key_mask, first.locations) == (
        KeyMask((False, False)),
        (value_at(file_12, 0), value_at(file_12, 1)),
    )
    # k2 is being written by the first session, k1 too: only k3 and k4 get locations.
    second = kv.put_start("k2", "k3", "k1", "k4")
    file_34 = "2f5052c9fd15b19a_4460affb55af08c8"
    assert (second.key_mask, second.locations) == (
        KeyMask((True, False, True, False)),
        (value_at(file_34, 0), value_at(file_34, 1)),
    )
    assert kv.get("k1", "k3") == (EMPTY, EMPTY)  # nothing readable before PutFinish
    assert kv.put_finish(first.write_session_id, (True, False)) == FinishWriteCacheResult(1, 1)
    assert kv.put_finish(second.write_session_id) == FinishWriteCacheResult(2, 0)  # no mask: all written
    assert kv.get("k4", "k2", "k1", "missing", "k3", "k1") == (
        value_at(file_34, 1),
        EMPTY,
        value_at(file_12, 0),
        EMPTY,
        value_at(file_34, 0),
        value_at(file_12, 0),
    )
    assert kv.put_start("k2").key_mask == KeyMask((True,))  # its failed location awaits deletion
    assert kv.poll().deleted_keys == 1
    assert kv.put_start("k2").key_mask == KeyMask((False,))


def test_remove_and_trim(kv: Kv) -> None:
    kv.register()
    kv.put_finish(kv.put_start("a", "b", "c").write_session_id)
    removed = kv.api.remove(KvRemoveRequest(instance_id="kv1", keys=("a", "never")))
    assert removed == RemoveCacheResult(num_keys=1, num_locations=1)
    assert [bool(loc.location_specs) for loc in kv.get("a", "b", "c")] == [False, True, True]
    trimmed = kv.api.trim(KvTrimRequest(instance_id="kv1", strategy=TrimStrategy.TS_REMOVE_ALL_CACHE))
    assert trimmed == TrimCacheResult(num_keys=3, num_locations=2)
    assert kv.get("a", "b", "c") == (EMPTY, EMPTY, EMPTY)
    assert kv.poll().deleted_locations == 3


def test_error_codes(kv: Kv) -> None:
    kv.register()
    assert error(kv.get) == (ErrorCode.INVALID_ARGUMENT, "keys: needs at least one key")
    keys = tuple(f"k{i}" for i in range(MAX_KEYS + 1))
    assert error(kv.get, *keys) == (
        ErrorCode.INVALID_ARGUMENT,
        f"keys: {MAX_KEYS + 1} items exceed the per-request limit of {MAX_KEYS} (kvsim.max_keys_per_request)",
    )
    assert error(kv.put_start, "a", "a") == (
        ErrorCode.INVALID_ARGUMENT,
        "keys[1]: 'a' repeats keys[0]: a PutStart names each key once",
    )
    unspecified = KvGetRequest(instance_id="kv1", keys=("a",))
    assert error(kv.api.get, unspecified) == (
        ErrorCode.INVALID_ARGUMENT,
        "query_type: must be QT_BATCH_GET (the only KV query), got QT_UNSPECIFIED",
    )
    assert error(kv.api.get, KvGetRequest(instance_id="ghost", query_type=BATCH, keys=("a",))) == (
        ErrorCode.INSTANCE_NOT_EXIST,
        "instance_id: instance 'ghost' does not exist",
    )
    # DUPLICATE_ENTITY is not in the kv_meta enum: the service reports INVALID_ARGUMENT.
    assert error(kv.register, "kv1", '{"value_size_bytes": 1}') == (
        ErrorCode.INVALID_ARGUMENT,
        "instance_id: 'kv1' is already registered with other parameters",
    )
    assert error(kv.register, "kv3", '{"value_size_bytes": 0}') == (
        ErrorCode.INVALID_ARGUMENT,
        "user_data.value_size_bytes: must be an integer in [1, 2**63 - 1], got 0",
    )
    session = kv.put_start("a", "b").write_session_id
    assert error(kv.put_finish, session, (True,)) == (
        ErrorCode.INVALID_ARGUMENT,
        "success_mask.values: has 1 values, PutStart returned 2 locations",
    )
    assert kv.put_finish(session) == FinishWriteCacheResult(2, 0)
    assert error(kv.put_finish, session) == (
        ErrorCode.INTERNAL_ERROR,
        f"write_session_id: session {session!r} does not exist (unknown, finished or expired)",
    )
    assert error(kv.api.trim, KvTrimRequest(instance_id="kv1")) == (
        ErrorCode.INVALID_ARGUMENT,
        "strategy: is required: TS_REMOVE_ALL_CACHE, TS_REMOVE_ALL_META or TS_TIMESTAMP",
    )


# ---------------------------------------------------------------------------------------------- the wire


def post(port: int, path: str, document: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(document), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def test_raw_json_put_start_and_get(kv_served: Served) -> None:
    """The KV service speaks JSON as the meta service does: snake_case, defaults, enum names, request ids."""
    kv_served.install(new_manager())
    port = kv_served.endpoints.kv_http_port
    assert port is not None
    status, body = post(
        port, "/api/registerInstance", {"traceId": "t", "instance_group": "default", "instance_id": "kv1"}
    )
    assert status == 200 and body["header"]["status"] == {
        "code": "OK",
        "message": "Instance registered successfully",
    }
    status, body = post(
        port,
        "/api/putStart",
        {"trace_id": "t2", "instance_id": "kv1", "keys": ["k1"], "write_timeout_seconds": 9},
    )
    assert status == 200
    session = body.pop("write_session_id")
    assert body == {
        "header": {
            "status": {"code": "OK", "message": "Put session started successfully"},
            "request_id": "t2_1700000000000000",
            "tracer_result": "",
        },
        "key_mask": {"values": [False]},
        "locations": [
            {
                "type": "ST_NFS",
                "spec_size": 1,
                "location_specs": [
                    {"name": "value", "uri": f"{NFS}/kv1/value/6ab9f1eb8f7d3388?blkid=0&size=2048"}
                ],
            }
        ],
    }
    status, body = post(port, "/api/putFinish", {"instance_id": "kv1", "write_session_id": session})
    assert (status, body["kvsim_counts"]) == (
        200,
        {"num_serving": "1", "num_failed": "0", "num_keys": "0", "num_locations": "0"},
    )
    status, body = post(
        port, "/api/get", {"instance_id": "kv1", "query_type": "QT_BATCH_GET", "keys": ["x", "k1"]}
    )
    assert status == 200
    assert body["locations"] == [
        {"type": "ST_UNSPECIFIED", "spec_size": 0, "location_specs": []},
        {
            "type": "ST_NFS",
            "spec_size": 1,
            "location_specs": [
                {"name": "value", "uri": f"{NFS}/kv1/value/6ab9f1eb8f7d3388?blkid=0&size=2048"}
            ],
        },
    ]
    assert post(port, "/api/getCacheLocation", {})[0] == 404  # the block-key RPCs are not on the KV port


def test_raw_stub_success_mask_extension(kv_served: Served) -> None:
    """A client generated from kvsim's proto sends PutFinish.success_mask (field 100); one built from the
    reference's proto leaves it out and means "all written"."""
    kv_served.install(new_manager())
    with grpc.insecure_channel(f"127.0.0.1:{kv_served.endpoints.kv_rpc_port}") as channel:
        stub = kv_meta_service_pb2_grpc.MetaServiceStub(channel)
        reply = stub.RegisterInstance(
            pb.RegisterInstanceRequest(instance_group="default", instance_id="kv1"), timeout=10
        )
        assert (reply.header.status.code, reply.header.request_id) == (pb.OK, "_1700000000000000")
        started = stub.PutStart(
            pb.PutStartRequest(instance_id="kv1", keys=["a", "b"], write_timeout_seconds=9), timeout=10
        )
        assert list(started.key_mask.values) == [False, False]
        done = stub.PutFinish(
            pb.PutFinishRequest(
                instance_id="kv1",
                write_session_id=started.write_session_id,
                locations=started.locations,  # accepted and ignored
                success_mask=pb.KeyMask(values=[False, True]),
            ),
            timeout=10,
        )
        assert (done.header.status.code, done.kvsim_counts.num_serving, done.kvsim_counts.num_failed) == (
            pb.OK,
            1,
            1,
        )
        found = stub.Get(
            pb.GetRequest(instance_id="kv1", query_type=pb.QT_BATCH_GET, keys=["a", "b"]), timeout=10
        )
        assert [len(loc.location_specs) for loc in found.locations] == [0, 1]
        wrong = stub.Get(pb.GetRequest(instance_id="kv1", keys=["a"]), timeout=10)
        assert wrong.header.status.code == pb.INVALID_ARGUMENT and not wrong.locations


def test_metrics_count_kv_calls_apart(kv_served: Served, kv_clients: dict[str, CacheClient]) -> None:
    kv_served.install(new_manager())
    before = kv_served.thread.call(kv_served.service.metrics.snapshot)
    kv_clients["grpc"].kv.register_instance(
        KvRegisterInstanceRequest(instance_group="default", instance_id="kv1")
    )
    after = kv_served.thread.call(kv_served.service.metrics.snapshot)
    calls = {api: stats.calls - (before[api].calls if api in before else 0) for api, stats in after.items()}
    assert {api: n for api, n in calls.items() if n} == {"kv_meta.RegisterInstance": 1}


def test_codes_the_kv_enum_lacks_and_leader_gating() -> None:
    assert wire_code("kv_meta", ErrorCode.DUPLICATE_ENTITY) == ErrorCode.INVALID_ARGUMENT
    assert wire_code("kv_meta", ErrorCode.SERVER_NOT_LEADER) == ErrorCode.SERVICE_NOT_READY
    assert wire_code("kv_meta", ErrorCode.INSTANCE_NOT_EXIST) == ErrorCode.INSTANCE_NOT_EXIST
    kv_codes = {v.number for v in pb.ErrorCode.DESCRIPTOR.values}
    assert {int(wire_code("kv_meta", code)) for code in ErrorCode} <= kv_codes
    assert all(leader_only("kv_meta", name) for name in rpcs("kv_meta"))
    assert (*SERVICE_KINDS, "kv_meta") == ALL_SERVICE_KINDS


# ---------------------------------------------------------------------------------------------- ports


def test_kv_ports_are_off_by_default(served: Served) -> None:
    ep = served.endpoints
    assert (ep.kv_rpc_port, ep.kv_http_port) == (None, None)
    assert ep.as_dict()["kv_rpc_port"] is None
    with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, retries=0) as client:
        request = KvGetInstanceInfoRequest(instance_id="kv1")
        assert error(client.kv.get_instance_info, request) == (
            ErrorCode.UNSUPPORTED,
            "no kv_meta service address configured",
        )
    assert post(ep.http_port, "/api/putStart", {})[0] == 404  # the meta HTTP port does not serve it


def test_connect_reads_the_kv_ports(kv_served: Served) -> None:
    kv_served.install(new_manager())
    ports = kv_served.endpoints.as_dict()
    assert isinstance(ports["kv_rpc_port"], int) and isinstance(ports["kv_http_port"], int)
    for transport in ("grpc", "http"):
        with connect(transport, "127.0.0.1", ports, retries=0) as client:
            assert client.kv.register_instance(
                KvRegisterInstanceRequest(instance_group="default", instance_id=f"kv-{transport}")
            ).storage_configs.startswith('[{"type":"file"')
