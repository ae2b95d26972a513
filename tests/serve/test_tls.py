"""TLS on every listener (``--tls-cert``, ``--tls-key``): clients that trust the certificate work over
gRPC and HTTPS, with the admin token; plaintext and untrusting clients fail; bad files stop the start.

The certificate is self-signed for 127.0.0.1, made with the ``cryptography`` package if installed, else
the ``openssl`` command; without either the tests are skipped.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsim.cache import (
    BlockMask,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
)
from kvsim.core import ConfigError
from kvsim.serve.client import CacheClient, ServiceUnavailable
from kvsim.serve.config import resolve_settings
from kvsim.serve.server import Endpoints, ServerThread
from kvsim.serve.service import KvcmService
from kvsim.serve.tls import TlsUnavailable, client_ssl_context, load_server_tls, make_self_signed_cert

from .conftest import make_settings, new_manager

TOKEN = "tls-token"


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 (the test is skipped when none can be made)."""
    try:
        return make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    except TlsUnavailable as exc:
        pytest.skip(f"no certificate: {exc}")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, cert_pair: tuple[Path, Path]) -> Iterator[Endpoints]:
    """A server with TLS on every listener and an admin token."""
    cert, key = cert_pair
    mgr = new_manager()
    settings = make_settings(
        tmp_path_factory.mktemp("tls-server"), tls_cert=str(cert), tls_key=str(key), admin_token=TOKEN
    )
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings, background_poll=False) as thread:
        assert thread.endpoints is not None
        yield thread.endpoints


def _client(transport: str, ep: Endpoints, **kwargs: object) -> CacheClient:
    if transport == "grpc":
        return CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, **kwargs)  # type: ignore[arg-type]
    return CacheClient.http(ep.host, ep.http_port, ep.admin_http_port, ep.debug_http_port, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_lifecycle_over_tls_with_the_token(
    tls_server: Endpoints, cert_pair: tuple[Path, Path], transport: str
) -> None:
    cert, _ = cert_pair
    with _client(transport, tls_server, root_certificates=cert, admin_token=TOKEN, retries=0) as client:
        instance = f"tls-{transport}"
        client.register_instance(
            RegisterInstanceRequest(
                instance_group="default",
                instance_id=instance,
                block_size=4,
                location_spec_infos=(LocationSpecInfo("tp0", 64),),
                model_deployment=ModelDeployment("m", "bf16"),
            )
        )
        started = client.start_write_cache(
            StartWriteCacheRequest(instance_id=instance, block_keys=(1, 2, 3), write_timeout_seconds=30)
        )
        client.finish_write_cache(
            FinishWriteCacheRequest(
                instance_id=instance,
                write_session_id=started.write_session_id,
                success_blocks=BlockMask(offset=3),
            )
        )
        found = client.get_cache_location(
            GetCacheLocationRequest(
                instance_id=instance, query_type=QueryType.QT_PREFIX_MATCH, block_keys=(1, 2, 3, 4)
            )
        )
        assert [loc.location_specs[0].uri for loc in found.locations] == [
            loc.location_specs[0].uri for loc in started.locations
        ]
        assert [s.global_unique_name for s in client.list_storage()] == ["nfs_01"]  # admin, with the token
        client.clear_faults()  # debug, with the token


def test_metrics_over_https(tls_server: Endpoints, cert_pair: tuple[Path, Path]) -> None:
    context = client_ssl_context(cert_pair[0])
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.admin_http_port, timeout=10, context=context)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        reply = conn.getresponse()
        assert reply.status == 200
        assert b"# TYPE kvcm_service_query_counter counter" in reply.read()
    finally:
        conn.close()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_plaintext_clients_cannot_talk_to_a_tls_server(tls_server: Endpoints, transport: str) -> None:
    request = GetCacheLocationRequest(instance_id="x", query_type=QueryType.QT_PREFIX_MATCH, block_keys=(1,))
    with _client(transport, tls_server, retries=0, timeout_s=5) as client, pytest.raises(ServiceUnavailable):
        client.get_cache_location(request)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_clients_that_do_not_trust_the_certificate_fail(tls_server: Endpoints, transport: str) -> None:
    """tls=True trusts only the default roots, which never signed a self-signed certificate."""
    request = GetCacheLocationRequest(instance_id="x", query_type=QueryType.QT_PREFIX_MATCH, block_keys=(1,))
    with (
        _client(transport, tls_server, tls=True, retries=0, timeout_s=5) as client,
        pytest.raises(ServiceUnavailable),
    ):
        client.get_cache_location(request)


def test_raw_https_body_is_the_reference_json(tls_server: Endpoints, cert_pair: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(cert_pair[0]))
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.http_port, timeout=10, context=context)
    try:
        conn.request("POST", "/api/getInstanceInfo", body=b'{"instance_id":"nobody"}')
        reply = conn.getresponse()
        body = json.loads(reply.read())
    finally:
        conn.close()
    assert reply.status == 200
    assert body["header"]["status"]["code"] == ErrorCode.INSTANCE_NOT_EXIST.name


# ---------------------------------------------------------------------------------------------- bad files


def test_load_server_tls_checks_the_pair(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    assert load_server_tls("", "") is None
    loaded = load_server_tls(str(cert), str(key))
    assert loaded is not None and loaded.cert_pem == cert.read_bytes() and loaded.key_pem == key.read_bytes()
    with pytest.raises(ConfigError, match="go together"):
        load_server_tls(str(cert), "")
    with pytest.raises(ConfigError, match=r"TLS: cannot read .*missing\.pem"):
        load_server_tls(str(tmp_path / "missing.pem"), str(key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="are not a certificate and its key"):
        load_server_tls(str(garbage), str(key))
    other_cert, other_key = make_self_signed_cert(tmp_path / "other")
    with pytest.raises(ConfigError, match="are not a certificate and its key"):
        load_server_tls(str(cert), str(other_key))  # a key of another certificate
    assert other_cert.exists() and (other_key.stat().st_mode & 0o777) == 0o600


def test_settings_refuse_half_a_pair() -> None:
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        resolve_settings({"kvsim.tls_cert": "/etc/cert.pem"})
    settings = resolve_settings({"kvsim.tls_cert": "c.pem", "kvsim.tls_key": "k.pem"})
    assert (settings.tls_cert, settings.tls_key) == ("c.pem", "k.pem")


def test_a_bad_pair_stops_the_start_and_leaves_nothing_listening(tmp_path: Path) -> None:
    mgr = new_manager()
    missing = tmp_path / "nope"
    settings = make_settings(tmp_path, tls_cert=f"{missing}.pem", tls_key=f"{missing}.key")
    thread = ServerThread(KvcmService(mgr, clock=mgr.clock), settings)
    with pytest.raises(ConfigError, match="TLS: cannot read"):
        thread.start()
    assert thread.endpoints is None
