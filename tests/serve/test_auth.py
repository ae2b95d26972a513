"""The admin token (COMPAT.md "accounts" row): required on the admin and debug services when set, over
HTTP (``Authorization: Bearer``) and gRPC (``authorization`` metadata); the meta service stays open;
refusals are 401 / UNAUTHENTICATED, logged (rate-limited, never the token), in the access log and in the
metrics. Also: where the token comes from, and the loopback default of the listen address."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvsim.cache import ErrorCode
from kvsim.core import ManualClock
from kvsim.core.env import env_settings
from kvsim.serve.accesslog import AccessLog
from kvsim.serve.auth import REFUSAL, TokenGuard, exposure_warnings, is_loopback
from kvsim.serve.catalog import rpc
from kvsim.serve.client import CacheClient, Unauthenticated
from kvsim.serve.config import DEFAULT_HOST, ServeSettings, known_keys, resolve_settings
from kvsim.serve.server import Endpoints, ServerThread, build_cache
from kvsim.serve.service import KvcmService

from .conftest import T0, make_settings, new_manager

TOKEN = "s3cret-Token_with.chars"


class Secured:
    """A server with an admin token, its endpoints and its access log file."""

    def __init__(self, thread: ServerThread, log_path: Path) -> None:
        self.thread = thread
        self.log_path = log_path
        assert thread.endpoints is not None
        self.ep: Endpoints = thread.endpoints

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log so far."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]


@pytest.fixture(scope="module", params=["separate", "shared"])
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A server with TOKEN; the admin gRPC service on its own port, or sharing the meta port."""
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    mgr = new_manager()
    log = AccessLog(tmp / "access.log", mgr.clock)
    settings = make_settings(tmp, admin_token=TOKEN)
    if request.param == "separate":
        settings = make_settings(tmp, admin_token=TOKEN, rpc_port=0, admin_rpc_port=_free_port())
    thread = ServerThread(KvcmService(mgr, clock=mgr.clock), settings, access_log=log, background_poll=False)
    thread.start()
    try:
        yield Secured(thread, tmp / "access.log")
    finally:
        thread.stop(grace_s=1.0)
        log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int, path: str, headers: dict[str, str] | None = None, body: bytes = b"{}") -> tuple[int, Any]:
    """POST ``body``; returns the status and the headers and body of the reply."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        reply = conn.getresponse()
        return reply.status, (dict(reply.getheaders()), reply.read())
    finally:
        conn.close()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path``; returns the status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no admin token"),
        (bearer("wrong"), "wrong admin token"),
        (bearer(TOKEN + "x"), "wrong admin token"),
        ({"Authorization": f"Basic {TOKEN}"}, "not a Bearer credential"),
        ({"Authorization": TOKEN}, "not a Bearer credential"),
    ],
)
def test_http_admin_and_debug_refuse_without_the_token(
    secured: Secured, headers: dict[str, str], reason: str
) -> None:
    for port, path in (
        (secured.ep.admin_http_port, "/api/listStorage"),
        (secured.ep.debug_http_port, "/api/clearFaults"),
        (secured.ep.admin_http_port, "/api/noSuchMethod"),  # refused before routing: no method probing
    ):
        assert port is not None
        status, (reply_headers, body) = post(port, path, headers)
        assert (status, body) == (401, b"{}")
        assert reply_headers["WWW-Authenticate"] == 'Bearer realm="kvsim"'
    assert TokenGuard(TOKEN).check(headers.get("Authorization")) == reason


def test_http_accepts_the_token_and_leaves_meta_open(secured: Secured) -> None:
    status, (_, body) = post(secured.ep.admin_http_port, "/api/listStorage", bearer(TOKEN))
    assert status == 200 and json.loads(body)["header"]["status"]["code"] == "OK"
    # The scheme is case-insensitive (RFC 6750) and blanks around the credential are ignored.
    status, _ = post(secured.ep.admin_http_port, "/api/listStorage", {"Authorization": f"bearer  {TOKEN} "})
    assert status == 200
    assert secured.ep.debug_http_port is not None
    status, (_, body) = post(secured.ep.debug_http_port, "/api/clearFaults", bearer(TOKEN))
    assert status == 200 and json.loads(body)["header"]["status"]["code"] == "OK"
    # The meta service never needs the token (engines call it on every request).
    status, (_, body) = post(secured.ep.http_port, "/api/getInstanceInfo", body=b'{"instance_id":"nobody"}')
    assert status == 200 and json.loads(body)["header"]["status"]["code"] == "INSTANCE_NOT_EXIST"


def test_metrics_endpoint_needs_the_token(secured: Secured) -> None:
    status, body = get(secured.ep.admin_http_port, "/metrics")
    assert (status, body) == (401, b"{}")
    status, body = get(secured.ep.admin_http_port, "/metrics", bearer(TOKEN))
    assert status == 200 and b"kvcm_service_query_counter" in body


# ---------------------------------------------------------------------------------------------- gRPC


def _grpc_call(port: int, kind: str, method: str, metadata: tuple[tuple[str, str], ...] | None) -> Any:
    info = rpc(kind, method)  # type: ignore[arg-type]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            info.grpc_path,
            request_serializer=info.request_type.SerializeToString,
            response_deserializer=info.response_type.FromString,
        )
        return call(info.request_type(), timeout=10, metadata=metadata)


@pytest.mark.parametrize(
    "metadata",
    [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),), (("x-token", TOKEN),)],
)
def test_grpc_admin_and_debug_refuse_without_the_token(secured: Secured, metadata: Any) -> None:
    for kind, method in (("admin", "ListStorage"), ("admin", "GetMetrics"), ("debug", "ClearFaults")):
        with pytest.raises(grpc.RpcError) as err:
            _grpc_call(secured.ep.admin_rpc_port, kind, method, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert err.value.details() == REFUSAL  # type: ignore[attr-defined]


def test_grpc_accepts_the_token_and_leaves_meta_open(secured: Secured) -> None:
    auth = (("authorization", f"Bearer {TOKEN}"),)
    port = secured.ep.admin_rpc_port
    assert _grpc_call(port, "admin", "ListStorage", auth).header.status.code == ErrorCode.OK
    assert _grpc_call(port, "debug", "ClearFaults", auth).header.status.code == ErrorCode.OK
    reply = _grpc_call(secured.ep.rpc_port, "meta", "GetInstanceInfo", None)  # reaches the handler
    assert (reply.header.status.code, reply.header.status.message) == (
        ErrorCode.INVALID_ARGUMENT,
        "instance_id: is required",
    )


# ---------------------------------------------------------------------------------------------- clients


def test_clients_send_the_token(secured: Secured) -> None:
    ep = secured.ep
    with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, admin_token=TOKEN, retries=0) as client:
        assert [s.global_unique_name for s in client.list_storage()] == ["nfs_01"]
        client.clear_faults()
    with CacheClient.http(
        ep.host, ep.http_port, ep.admin_http_port, ep.debug_http_port, admin_token=TOKEN, retries=0
    ) as client:
        assert [s.global_unique_name for s in client.list_storage()] == ["nfs_01"]
        client.clear_faults()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_clients_without_the_token_raise_unauthenticated(secured: Secured, transport: str) -> None:
    ep = secured.ep
    if transport == "grpc":
        client = CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, admin_token="nope", retries=2)
    else:
        client = CacheClient.http(ep.host, ep.http_port, ep.admin_http_port, ep.debug_http_port, retries=2)
    with client, pytest.raises(Unauthenticated) as err:
        client.list_storage()
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith("admin.ListStorage: ")


# ---------------------------------------------------------------------------------------------- accounting


def test_refusals_are_logged_once_per_peer_and_reason_never_with_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Warnings are rate-limited per peer address and reason; the access log and the metrics get every
    refusal."""
    mgr = new_manager()
    log = AccessLog(tmp_path / "access.log", mgr.clock)
    service = KvcmService(mgr, clock=mgr.clock)
    with (
        caplog.at_level(logging.WARNING, logger="kvsim.serve"),
        ServerThread(service, make_settings(tmp_path, admin_token=TOKEN), access_log=log) as thread,
    ):
        ep = thread.endpoints
        assert ep is not None and ep.debug_http_port is not None
        for _ in range(3):
            assert post(ep.admin_http_port, "/api/listStorage", bearer("bad"))[0] == 401
        assert post(ep.debug_http_port, "/api/clearFaults")[0] == 401
        with pytest.raises(grpc.RpcError):
            _grpc_call(ep.admin_rpc_port, "admin", "CheckHealth", (("authorization", f"Basic {TOKEN}"),))
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, admin_token=TOKEN) as client:
            counts = {
                tuple(sorted((t.tag_key, t.tag_value) for t in m.metric_tags)): m.metric_value.int_value
                for m in client.get_metrics().metrics  # type: ignore[attr-defined]
                if m.metric_name == "service.unauthenticated_counter"
            }
    log.close()
    assert counts == {(("service", "admin"),): 4, (("service", "debug"),): 1}
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    # The two repeats of (127.0.0.1, wrong admin token) are suppressed; the address ignores the port.
    assert len(warnings) == 3
    assert warnings[0] == "refused http admin.listStorage from 127.0.0.1: wrong admin token"
    assert warnings[1] == "refused http debug.clearFaults from 127.0.0.1: no admin token"
    assert warnings[2].startswith("refused grpc admin.CheckHealth from ipv4:127.0.0.1:")
    assert warnings[2].endswith(": not a Bearer credential")
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    refused = [(r["transport"], r["service"], r["api"], r.get("http_status")) for r in lines[:5]]
    assert refused == [
        ("http", "admin", "listStorage", 401),
        ("http", "admin", "listStorage", 401),
        ("http", "admin", "listStorage", 401),
        ("http", "debug", "clearFaults", 401),
        ("grpc", "admin", "CheckHealth", None),
    ]
    assert all(r["status"] == "UNAUTHENTICATED" for r in lines[:5])
    assert TOKEN not in (tmp_path / "access.log").read_text()


def test_warning_rate_limit_restarts_after_the_period() -> None:
    now = [100.0]
    guard = TokenGuard(TOKEN, monotonic=lambda: now[0])
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("kvsim.serve")
    log.addHandler(handler)
    try:
        guard.refuse("admin", "ListStorage", "ipv4:10.0.0.1:5000", "no admin token", "grpc")
        guard.refuse("admin", "ListStorage", "ipv4:10.0.0.1:5001", "no admin token", "grpc")  # same address
        guard.refuse("admin", "ListStorage", "ipv4:10.0.0.2:5000", "no admin token", "grpc")  # another one
        now[0] += 10.0
        guard.refuse("admin", "ListStorage", "ipv4:10.0.0.1:5002", "no admin token", "grpc")
    finally:
        log.removeHandler(handler)
    assert len(records) == 3
    assert guard.refused == {"admin": 4}


def test_no_token_means_no_guard(tmp_path: Path) -> None:
    mgr = new_manager()
    with ServerThread(KvcmService(mgr, clock=mgr.clock), make_settings(tmp_path)) as thread:
        ep = thread.endpoints
        assert ep is not None
        assert post(ep.admin_http_port, "/api/listStorage")[0] == 200
        assert _grpc_call(ep.admin_rpc_port, "admin", "ListStorage", None).header.status.code == ErrorCode.OK
        assert get(ep.admin_http_port, "/metrics")[0] == 200


# ---------------------------------------------------------------------------------------------- settings


def test_token_comes_from_the_environment_and_stays_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSIM_ADMIN_TOKEN", "from-env")
    settings = resolve_settings({"kvsim.admin_token": "from-file"}, env_settings(known_keys()))
    assert settings.admin_token == "from-env"
    assert "from-env" not in repr(settings)
    flags = resolve_settings({}, env_settings(known_keys()), {"admin_token": "from-flag"})
    assert flags.admin_token == "from-flag"


def test_cli_accepts_admin_token_and_tls_flags() -> None:
    import argparse

    from kvsim.cli.serve import _FLAG_FIELDS, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--admin-token", "t", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
    assert (args.admin_token, args.tls_cert, args.tls_key) == ("t", "c.pem", "k.pem")
    assert {"admin_token", "tls_cert", "tls_key"} <= set(_FLAG_FIELDS)


def test_listeners_default_to_loopback(tmp_path: Path) -> None:
    assert DEFAULT_HOST == "127.0.0.1" and ServeSettings().host == "127.0.0.1"
    mgr = new_manager()
    settings = make_settings(tmp_path, host=ServeSettings().host)
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings) as thread:
        ep = thread.endpoints
        assert ep is not None and ep.host == "127.0.0.1"
        outside = _non_loopback_address()
        if outside is None:
            pytest.skip("this host has no non-loopback IPv4 address to try")
        for port in (ep.rpc_port, ep.http_port, ep.admin_http_port):
            with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
                pass


def _non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback (the one a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, it only picks a source address
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if is_loopback(address) or address == "0.0.0.0" else address


def test_exposure_warnings() -> None:
    assert exposure_warnings("127.0.0.1", False, False) == []
    assert exposure_warnings("::1", False, False) == []
    assert exposure_warnings("localhost", False, False) == []
    open_host = exposure_warnings("0.0.0.0", False, False)
    assert len(open_host) == 2
    assert open_host[0].startswith("listening on 0.0.0.0 without an admin token")
    clear = "cross the network in clear text"
    assert open_host[1] == f"listening on 0.0.0.0 without TLS: all cache metadata {clear}"
    assert exposure_warnings("10.1.2.3", True, False) == [
        f"listening on 10.1.2.3 without TLS: the admin token and all cache metadata {clear}"
    ]
    assert exposure_warnings("10.1.2.3", True, True) == []
    assert exposure_warnings("kvcm.example", True, True) == []


def test_exposure_is_warned_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server logs what exposure_warnings finds (checked with a stub: tests bind loopback only)."""
    seen: list[tuple[str, bool, bool]] = []

    def fake(host: str, token_set: bool, tls_set: bool) -> list[str]:
        seen.append((host, token_set, tls_set))
        return ["exposed!"]

    monkeypatch.setattr("kvsim.serve.server.exposure_warnings", fake)
    mgr = new_manager()
    with (
        caplog.at_level(logging.WARNING, logger="kvsim.serve"),
        ServerThread(KvcmService(mgr, clock=mgr.clock), make_settings(tmp_path, admin_token=TOKEN)),
    ):
        pass
    assert seen == [("127.0.0.1", True, False)]
    assert "exposed!" in [r.getMessage() for r in caplog.records]


def test_password_salts_do_not_follow_the_seed(tmp_path: Path) -> None:
    """Two servers with the same --seed store different hashes of one password (salts from os.urandom)."""
    hashes = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, seed=7)
        cache = build_cache(settings, clock=ManualClock(T0))
        cache.add_account("ops", "pw")
        accounts = json.loads(cache.gen_config_snapshot())["accounts"]
        hashes.append(accounts[0]["password_hash"])
        assert cache.verify_account("ops", "pw") is not None
        cache.close()
    assert hashes[0].startswith("pbkdf2_sha256$") and hashes[0] != hashes[1]
