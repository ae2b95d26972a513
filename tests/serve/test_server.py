"""The service and server around the cache: error mapping, faults, metrics, the background poll,
graceful shutdown, restart recovery, the access log and the real file backend."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    LocationSpecInfo,
    MemoryStore,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
)
from kvsim.core import ConfigError, ManualClock, WallClock
from kvsim.serve.accesslog import AccessLog
from kvsim.serve.client import CacheClient, ServiceUnavailable
from kvsim.serve.server import ServerThread, build_cache, open_store
from kvsim.serve.service import Fault, FaultInjector, KvcmService, wire_code

from .conftest import Served, make_settings, new_manager

ACCESS_FIELDS = {
    "ts",
    "transport",
    "service",
    "api",
    "status",
    "latency_ms",
    "request_bytes",
    "response_bytes",
    "trace_id",
    "peer",
}


def metric_values(client: CacheClient) -> dict[tuple[str, str | None], Any]:
    """GetMetrics as ``(name, api_name) -> MetricValue``."""
    return {
        (m.metric_name, dict((t.tag_key, t.tag_value) for t in m.metric_tags).get("api_name")): m.metric_value
        for m in client.get_metrics().metrics  # type: ignore[attr-defined]
    }


def register(client: Any, instance_id: str = "i1") -> None:
    client.register_instance(
        RegisterInstanceRequest(
            instance_group="default",
            instance_id=instance_id,
            block_size=4,
            location_spec_infos=(LocationSpecInfo("tp0", 64),),
            model_deployment=ModelDeployment("m", "bf16"),
        )
    )


# ---------------------------------------------------------------------------------------------- service


def test_wire_code_is_the_one_error_mapping() -> None:
    assert wire_code("meta", ErrorCode.DUPLICATE_ENTITY) == ErrorCode.DUPLICATE_ENTITY
    assert wire_code("admin", ErrorCode.DUPLICATE_ENTITY) == ErrorCode.INTERNAL_ERROR
    assert wire_code("admin", ErrorCode.INSTANCE_NOT_EXIST) == ErrorCode.INTERNAL_ERROR
    assert wire_code("admin", ErrorCode.INVALID_ARGUMENT) == ErrorCode.INVALID_ARGUMENT
    assert wire_code("debug", ErrorCode.INSTANCE_NOT_EXIST) == ErrorCode.INTERNAL_ERROR


def test_fault_injector_once_fires_on_the_trace_id_suffix() -> None:
    faults = FaultInjector()
    faults.inject("StartWriteCache", Fault(once=True, at_call=3))
    for trace_id in ("t_2", "t", "t_x", "3"):
        faults.check("StartWriteCache", trace_id)  # no fault
    for _ in range(2):  # not consumed, as the reference
        with pytest.raises(CacheError) as err:
            faults.check("StartWriteCache", "req_3")
        assert (err.value.code, err.value.message) == (
            ErrorCode.INTERNAL_ERROR,
            "StartWriteCache fail due to fault injection",
        )
    faults.check("GetCacheLocation", "req_3")


def test_a_bug_in_a_handler_is_internal_error_not_a_crash(served: Served, grpc_client: CacheClient) -> None:
    class Broken:
        clock = ManualClock(0)

        def list_account(self) -> None:
            raise RuntimeError("boom")

    served.thread.call(setattr, served.service, "cache", Broken())
    try:
        with pytest.raises(CacheError) as err:
            grpc_client.list_account()
        assert (err.value.code, err.value.message) == (
            ErrorCode.INTERNAL_ERROR,
            "internal error: RuntimeError: boom",
        )
    finally:
        served.install(new_manager())
    assert grpc_client.list_account() == ()


def test_injected_faults_reach_clients(served: Served, http_client: CacheClient) -> None:
    served.install(new_manager())
    register(http_client)
    http_client.inject_fault("GetCacheLocation", once=True, trigger_at_call=2)
    request = GetCacheLocationRequest(instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=[1])
    assert http_client.get_cache_location(request).locations == ()
    with pytest.raises(CacheError) as err:
        http_client.get_cache_location(dataclasses.replace(request, trace_id="c_2"))
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    http_client.remove_fault("GetCacheLocation")
    assert http_client.get_cache_location(request).locations == ()


def test_service_rpcs(served: Served, grpc_client: CacheClient, http_client: CacheClient) -> None:
    """§7 admin test_check_health, test_get_manager_cluster_info, test_get_leader_elector_config,
    test_update_leader_elector_config, test_get_metrics; UpdateLogger; LeaderDemote waits for serve II."""
    served.install(new_manager())
    before = metric_values(grpc_client).get(("service.query_counter", "CheckHealth"))
    checks = before.int_value if before is not None else 0
    for client in (grpc_client, http_client):
        health = client.check_health()
        assert (health.is_leader, health.is_health) == (True, True)  # type: ignore[attr-defined]
        info = client.get_manager_cluster_info()
        assert info.self_node_id == info.leader_node_id == "kvsim"  # type: ignore[attr-defined]
        assert info.self_leader_expiration_time == 1_700_000_010_000_000  # type: ignore[attr-defined]
        old = client.get_leader_elector_config()
        client.update_leader_elector_config(old + 1000)
        assert client.get_leader_elector_config() == old + 1000
        client.update_logger("debug")
        client.update_logger("INFO")
        with pytest.raises(CacheError) as err:
            client.update_logger("loud")
        assert err.value.code == ErrorCode.INVALID_ARGUMENT
        with pytest.raises(CacheError) as err:
            client.call("admin", "LeaderDemote")
        assert err.value.code == ErrorCode.UNSUPPORTED
    grpc_client.list_storage()
    values = metric_values(grpc_client)
    assert values[("service.query_counter", "ListStorage")].int_value >= 1
    assert values[("service.query_rt_us", "ListStorage")].float_value > 0
    assert values[("service.query_counter", "CheckHealth")].int_value == checks + 2
    assert grpc_client.get_metrics().timestamp == 1_700_000_000_000  # type: ignore[attr-defined]


def test_admin_service_folds_meta_codes(served: Served, grpc_client: CacheClient) -> None:
    served.install(new_manager())
    register(grpc_client)
    from kvsim.serve.proto import admin_service_pb2 as admin

    request = admin.RegisterInstanceRequest(instance_group="default", instance_id="i1", block_size=8)
    request.location_spec_infos.add(name="tp0", size=64)
    request.model_deployment.model_name, request.model_deployment.dtype = "m", "bf16"
    with pytest.raises(CacheError) as err:
        grpc_client.call("admin", "RegisterInstance", request)  # a duplicate with other parameters
    assert err.value.code == ErrorCode.INTERNAL_ERROR  # meta says DUPLICATE_ENTITY


# ---------------------------------------------------------------------------------------------- server


def test_background_poll_expires_sessions_on_the_wall_clock(tmp_path: Path) -> None:
    mgr = new_manager(WallClock())  # type: ignore[arg-type]
    service = KvcmService(mgr, clock=WallClock())
    settings = make_settings(tmp_path, poll_interval_s=0.05)
    with ServerThread(service, settings) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
            register(client)
            res = client.start_write_cache(
                StartWriteCacheRequest(instance_id="i1", block_keys=[1], write_timeout_seconds=0)
            )
            deadline = time.monotonic() + 10
            while thread.call(mgr.num_open_sessions) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert thread.call(mgr.num_open_sessions) == 0
            with pytest.raises(CacheError):
                client.finish_write_cache(
                    FinishWriteCacheRequest(
                        instance_id="i1",
                        write_session_id=res.write_session_id,
                        success_blocks=BlockMask(offset=1),
                    )
                )


def test_stop_under_load_answers_fully_or_refuses(tmp_path: Path) -> None:
    """Stopping while clients hammer both transports: every call gets a complete answer or a clean
    "unavailable", never a truncated reply; new connections are refused; stop ends within the grace."""
    mgr = new_manager()
    thread = ServerThread(KvcmService(mgr, clock=mgr.clock), make_settings(tmp_path), background_poll=False)
    ep = thread.start()
    outcomes: list[str] = []
    done = threading.Event()

    def hammer(client: CacheClient) -> None:
        with client:
            while not done.is_set():
                try:
                    client.list_storage()
                    outcomes.append("ok")
                except ServiceUnavailable:
                    outcomes.append("unavailable")
                except Exception as exc:  # anything else is a broken reply
                    outcomes.append(f"broken: {type(exc).__name__}: {exc}")

    clients = [CacheClient.grpc(ep.host, ep.rpc_port, timeout_s=2, retries=0) for _ in range(3)]
    clients += [
        CacheClient.http(ep.host, ep.http_port, ep.admin_http_port, timeout_s=2, retries=0) for _ in range(3)
    ]
    workers = [threading.Thread(target=hammer, args=(c,)) for c in clients]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    began = time.monotonic()
    thread.stop(grace_s=2.0)
    stop_s = time.monotonic() - began
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection((ep.host, ep.http_port), timeout=2).close()
    time.sleep(0.2)
    done.set()
    for worker in workers:
        worker.join(10)
    assert stop_s < 4.0
    assert outcomes.count("ok") > 0 and outcomes.count("unavailable") > 0
    assert [o for o in outcomes if o.startswith("broken")] == []


def test_restart_over_the_same_store_recovers(tmp_path: Path) -> None:
    """COMPAT "restart after kill -9": a new server over the kept store turns WRITING into deletions."""
    store = MemoryStore()
    settings = make_settings(tmp_path)
    first = new_manager(store=store)
    with ServerThread(KvcmService(first, clock=first.clock), settings, background_poll=False) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.http(ep.host, ep.http_port, ep.admin_http_port) as client:
            register(client)
            done = client.start_write_cache(StartWriteCacheRequest(instance_id="i1", block_keys=[5]))
            client.finish_write_cache(
                FinishWriteCacheRequest(
                    instance_id="i1",
                    write_session_id=done.write_session_id,
                    success_blocks=BlockMask(offset=1),
                )
            )
            client.start_write_cache(
                StartWriteCacheRequest(instance_id="i1", block_keys=[6])
            )  # never finished
    second = build_cache(settings, clock=ManualClock(1_700_000_000.0), store=store)
    assert second.num_pending_deletions() == 1
    with ServerThread(KvcmService(second, clock=second.clock), settings, background_poll=False) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.grpc(ep.host, ep.rpc_port) as client:
            metas = client.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=[5, 6])).metas
            assert [json.loads(m)["status"] for m in metas] == ["CLS_SERVING", "CLS_DELETING"]


def test_access_log_has_one_json_line_per_request(tmp_path: Path) -> None:
    mgr = new_manager()
    log = AccessLog(tmp_path / "access.log", mgr.clock)
    with ServerThread(KvcmService(mgr, clock=mgr.clock), make_settings(tmp_path), access_log=log) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.http(ep.host, ep.http_port, ep.admin_http_port) as client:
            client.list_storage()
        with CacheClient.grpc(ep.host, ep.rpc_port) as client, pytest.raises(CacheError):
            client.get_cache_location(GetCacheLocationRequest(trace_id="tr", instance_id="x"))
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [(r["transport"], r["service"], r["api"], r["status"]) for r in lines] == [
        ("http", "admin", "ListStorage", "OK"),
        ("grpc", "meta", "GetCacheLocation", "INSTANCE_NOT_EXIST"),
    ]
    assert lines[0]["http_status"] == 200 and lines[1]["trace_id"] == "tr"
    assert set(lines[1]) == ACCESS_FIELDS
    assert lines[1]["request_bytes"] == 7 and lines[1]["response_bytes"] > 0


def test_real_file_backend_under_the_data_dir(tmp_path: Path) -> None:
    """The built-in startup config puts nfs_01 in the data folder; the real backend writes files there."""
    settings = make_settings(tmp_path, storage_backend="real")
    try:
        mgr = build_cache(settings, clock=ManualClock(1_700_000_000.0), store=MemoryStore())
    except ConfigError as exc:
        pytest.skip(f"real storage backends not available yet: {exc}")
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings, background_poll=False) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.grpc(ep.host, ep.rpc_port) as client:
            register(client)
            res = client.start_write_cache(StartWriteCacheRequest(instance_id="i1", block_keys=[255]))
    uri = res.locations[0].location_specs[0].uri
    root = str(tmp_path.resolve() / "nfs") + "/"
    assert uri.startswith(f"file://nfs_01{root}i1/tp0/ff")
    assert any((tmp_path / "nfs").rglob("*"))


def test_the_meta_store_is_never_silently_memory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--meta-store: meta store 'postgres://x': unknown kind"):
        open_store("postgres://x", tmp_path)
    store = open_store("sqlite", tmp_path)
    try:
        assert not isinstance(store, MemoryStore)
        assert (tmp_path / "kvsim-meta.db").is_file()
    finally:
        store.close()


def test_port_in_use_fails_cleanly(served: Served, tmp_path: Path) -> None:
    mgr = new_manager()
    settings = make_settings(tmp_path, http_port=served.endpoints.http_port)
    with pytest.raises(OSError):
        ServerThread(KvcmService(mgr, clock=mgr.clock), settings).start()


def test_client_reports_an_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    for client in (
        CacheClient.grpc("127.0.0.1", port, timeout_s=2, retries=1),
        CacheClient.http("127.0.0.1", port, port, timeout_s=2, retries=1),
    ):
        with client, pytest.raises(ServiceUnavailable) as err:
            client.list_storage()
        assert err.value.code == ErrorCode.SERVICE_NOT_READY
        assert "after 2 attempt(s)" in err.value.message
