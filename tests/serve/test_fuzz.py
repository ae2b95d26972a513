"""Fuzzing every RPC over HTTP JSON and gRPC bytes (bounded hypothesis examples).

Properties, for a real server on loopback:

* it never crashes or hangs: every request is answered within its timeout, and the server still answers
  CheckHealth at the end;
* every bad request gets HTTP 400 (413 when too large) or a non-OK ``header.status``; an
  INVALID_ARGUMENT status names the field first (``<field>[.sub|[i]]*: <why>``, the field one of the
  request's); a status never reports a kvsim bug (``internal error: <exception>``);
* well-formed requests made alongside keep their results: a thread keeps matching a sentinel instance
  over gRPC and HTTP while the fuzzer runs, and must always get the same locations.

The fuzzer's strings never name the sentinel's instance, group or storage, so that the properties test
the server's robustness rather than the fuzzer's luck; everything else (other groups, storages,
accounts, faults on other APIs, snapshots, the log level) is fair game.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    default_instance_group,
)
from kvsim.serve.catalog import ALL_SERVICE_KINDS, RpcInfo, rpcs
from kvsim.serve.client import CacheClient
from kvsim.serve.server import Endpoints, ServerThread
from kvsim.serve.service import KvcmService

from .conftest import make_settings, new_manager

SENTINEL = "sentinel-instance"
PROTECTED = frozenset({SENTINEL, "default", "nfs_01"})
FUZZ_GROUP = "fz"
ALL_RPCS: list[RpcInfo] = [info for kind in ALL_SERVICE_KINDS for info in rpcs(kind).values()]
#: Every RPC (the KV meta API's included); the 8 meta RPCs (the hot path) are drawn as often as all the
#: others together.
RPCS = st.one_of(
    st.sampled_from(list(rpcs("meta").values())),
    st.sampled_from([info for info in ALL_RPCS if info.kind != "meta"]),
)
TIMEOUT_S = 10.0
KNOWN_CODES = frozenset(int(c) for c in ErrorCode)
#: ``<field>`` then ``.sub`` or ``[index]`` parts, then ``": "`` (kvsim.cache.errors.invalid).
FIELD_MESSAGE = re.compile(r"^([a-z_][a-z0-9_]*)(?:\.[a-z_][a-z0-9_]*|\[[^\]]*\])*: \S")
EXAMPLES = 300


# ---------------------------------------------------------------------------------------------- server


class Sentinel:
    """Matches the sentinel instance over gRPC and HTTP in a loop and records any change in the answer."""

    def __init__(self, ep: Endpoints, expected: list[str]) -> None:
        self._ep = ep
        self.expected = expected
        self.checks = 0
        self.mismatches: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-sentinel", daemon=True)

    def __enter__(self) -> Sentinel:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)

    def _run(self) -> None:
        ep = self._ep
        request = GetCacheLocationRequest(
            instance_id=SENTINEL, query_type=QueryType.QT_PREFIX_MATCH, block_keys=tuple(range(1, 9))
        )
        with (
            CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, timeout_s=TIMEOUT_S, retries=0) as g,
            CacheClient.http(ep.host, ep.http_port, ep.admin_http_port, timeout_s=TIMEOUT_S, retries=0) as h,
        ):
            while not self._stop.is_set():
                for client in (g, h):
                    try:
                        uris = [
                            loc.location_specs[0].uri for loc in client.get_cache_location(request).locations
                        ]
                    except Exception as exc:  # any failure is a broken promise to a well-formed client
                        self.mismatches.append(f"{type(exc).__name__}: {exc}")
                        continue
                    self.checks += 1
                    if uris != self.expected:
                        self.mismatches.append(f"got {uris}")
                self._stop.wait(0.005)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Endpoints, Sentinel]]:
    """A server with the sentinel written (8 blocks), and a group and an instance (``i1``, 16 blocks)
    for the fuzzer; the sentinel checker
    runs for the whole module and must see no change; the log level is restored afterwards."""
    level = logging.getLogger("kvsim").level
    mgr = new_manager()
    group = default_instance_group()
    mgr.create_instance_group(type(group)(**{**_fields(group), "name": FUZZ_GROUP}))
    thread = ServerThread(
        KvcmService(mgr, clock=mgr.clock),
        make_settings(
            tmp_path_factory.mktemp("fuzz"), max_body_bytes=64 << 10, kv_rpc_port=0, kv_http_port=0
        ),
        background_poll=False,
    )
    ep = thread.start()
    try:
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
            client.register_instance(
                RegisterInstanceRequest(
                    instance_group="default",
                    instance_id=SENTINEL,
                    block_size=4,
                    location_spec_infos=(LocationSpecInfo("tp0", 64),),
                    model_deployment=ModelDeployment("m", "bf16"),
                )
            )
            keys = tuple(range(1, 9))
            started = client.start_write_cache(
                StartWriteCacheRequest(instance_id=SENTINEL, block_keys=keys, write_timeout_seconds=3600)
            )
            client.finish_write_cache(
                FinishWriteCacheRequest(
                    instance_id=SENTINEL,
                    write_session_id=started.write_session_id,
                    success_blocks=BlockMask(offset=len(keys)),
                )
            )
            # A fuzz instance with 16 written blocks, so that fuzzed meta calls reach the cache's paths.
            client.register_instance(
                RegisterInstanceRequest(
                    instance_group=FUZZ_GROUP,
                    instance_id="i1",
                    block_size=4,
                    location_spec_infos=(LocationSpecInfo("tp0", 64), LocationSpecInfo("tp1", 64)),
                    model_deployment=ModelDeployment("m", "bf16"),
                )
            )
            fuzz_keys = tuple(range(1, 17))
            fuzz_session = client.start_write_cache(
                StartWriteCacheRequest(instance_id="i1", block_keys=fuzz_keys, write_timeout_seconds=3600)
            )
            client.finish_write_cache(
                FinishWriteCacheRequest(
                    instance_id="i1",
                    write_session_id=fuzz_session.write_session_id,
                    success_blocks=BlockMask(offset=len(fuzz_keys)),
                )
            )
        expected = [loc.location_specs[0].uri for loc in started.locations]
        with Sentinel(ep, expected) as sentinel:
            yield ep, sentinel
        assert sentinel.mismatches == []
        assert sentinel.checks >= 20
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port, timeout_s=TIMEOUT_S) as client:
            assert client.check_health().is_health  # type: ignore[attr-defined]
    finally:
        thread.stop(grace_s=1.0)
        logging.getLogger("kvsim").setLevel(level)


def _fields(obj: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# ---------------------------------------------------------------------------------------------- strategies

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
#: Names that reach deeper code (the fuzz group, spec and level names); never the sentinel's.
_pool = st.sampled_from(["", "i2", "i3", FUZZ_GROUP, "tp0", "s1", "DEBUG", "user", "RemoveCache", "x" * 64])
STRINGS = st.one_of(_pool, _pool, _text).filter(lambda s: s not in PROTECTED)
SMALL_INTS = st.integers(-3, 70)
INT32 = st.one_of(SMALL_INTS, st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(SMALL_INTS, st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1).map(str))
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)

#: Values that are often right for fields of these names in meta requests, so that fuzzed requests get
#: past the first check and reach the cache's deeper paths (3 draws in 4). Admin requests never get
#: them: the fuzz instance ``i1`` must not be removed half-way.
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "instance_id": st.just("i1"),
    "instance_group": st.just(FUZZ_GROUP),
    "query_type": st.sampled_from(["QT_PREFIX_MATCH", "QT_BATCH_GET", "QT_REVERSE_ROLL_SW_MATCH"]),
    "block_keys": st.integers(0, 20),
    "token_ids": st.integers(0, 100),
    "sw_size": st.integers(0, 6),
    "block_size": st.integers(1, 8),
    "write_timeout_seconds": st.integers(1, 60),
    "offset": st.integers(0, 20),
    "location_spec_names": st.sampled_from(["tp0", "tp1"]),
    "keys": st.sampled_from(["a", "b", "c", "prefix/0", "prefix/1", ""]),
}

_INT32_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UINT_TYPES = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


def _repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _hint(fd: FieldDescriptor) -> st.SearchStrategy[Any] | None:
    hinted = fd.full_name.startswith(("kv_cache_manager.proto.meta.", "kv_cache_manager.proto.kv_meta."))
    return FIELD_HINTS.get(fd.name) if hinted else None


def _scalar(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    hint = _hint(fd)
    if hint is not None:
        return st.one_of(hint, hint, hint, _plain(fd, depth))
    return _plain(fd, depth)


def _plain(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return message_json(fd.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return STRINGS
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in _INT32_TYPES:
        return INT32
    if kind in _INT64_TYPES:
        return INT64
    if kind in _UINT_TYPES:
        return st.integers(0, 2**32 - 1)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(names), st.integers(-2, 12), st.just("NO_SUCH_NAME"))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode())
    return st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def _object(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = list(descriptor.fields)
    if not fields:
        return out
    chosen = draw(st.lists(st.sampled_from(fields), max_size=min(len(fields), 6), unique=True))
    # Meta requests mostly carry their hinted fields (an instance id, a query type, keys), or nearly every
    # one would stop at "instance_id: is required".
    for fd in fields:
        if fd not in chosen and _hint(fd) is not None and draw(st.integers(0, 3)) > 0:
            chosen.append(fd)
    for fd in chosen:
        if depth >= 3 and fd.type == FieldDescriptor.TYPE_MESSAGE:
            continue  # deep enough: keep examples small
        if draw(st.integers(0, 19)) == 0:
            out[fd.name] = draw(ANY_JSON)  # a value of the wrong type now and then
        elif _repeated(fd):
            out[fd.name] = draw(st.lists(_scalar(fd, depth), max_size=6))
        else:
            out[fd.name] = draw(_scalar(fd, depth))
    return out


def message_json(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Proto3 JSON objects of ``descriptor``: a random subset of fields with values of (mostly) the right
    JSON type, sub-messages to depth 3."""
    return _object(descriptor, depth)


@st.composite
def http_cases(draw: st.DrawFn) -> tuple[RpcInfo, bytes, bool]:
    """An RPC and a body: proto-shaped JSON, arbitrary JSON, or arbitrary bytes. The flag says whether
    the body is a JSON object (anything else must be answered 400)."""
    info = draw(RPCS)
    shape = draw(st.integers(0, 9))
    if shape < 7:
        document: Any = draw(message_json(info.request_type.DESCRIPTOR))
    elif shape < 9:
        document = draw(ANY_JSON)
    else:
        raw = draw(st.binary(max_size=64))
        try:
            return info, raw, isinstance(json.loads(raw), dict)
        except ValueError:
            return info, raw, False
    return info, json.dumps(document).encode(), isinstance(document, dict)


@st.composite
def grpc_cases(draw: st.DrawFn) -> tuple[RpcInfo, bytes]:
    """An RPC and request bytes: a valid message (from proto-shaped JSON), one with bytes cut off or
    flipped, or arbitrary bytes."""
    info = draw(RPCS)
    shape = draw(st.integers(0, 9))
    if shape >= 8:
        return info, draw(st.binary(max_size=128))
    message = info.request_type()
    for key, value in draw(message_json(info.request_type.DESCRIPTOR)).items():
        part = info.request_type()
        try:
            json_format.ParseDict({key: value}, part, ignore_unknown_fields=True)
        except json_format.ParseError:
            continue  # a value of the wrong type cannot be encoded: leave that field out
        message.MergeFrom(part)
    data = message.SerializeToString()
    if shape >= 6 and data:
        cut = draw(st.integers(0, len(data) - 1))
        if shape == 6:
            data = data[:cut]
        else:
            data = data[:cut] + bytes([data[cut] ^ draw(st.integers(1, 255))]) + data[cut + 1 :]
    return info, data


# ---------------------------------------------------------------------------------------------- checks


def check_status(info: RpcInfo, code: int, message: str) -> None:
    """The header of a response to a fuzzed request: a known code, never a kvsim bug, and an
    INVALID_ARGUMENT that names a field of the request."""
    assert code in KNOWN_CODES, (info.name, code, message)
    assert not message.startswith("internal error:"), (info.name, message)
    if code == ErrorCode.INVALID_ARGUMENT:
        match = FIELD_MESSAGE.match(message)
        assert match, (info.name, message)
        assert match.group(1) in info.request_type.DESCRIPTOR.fields_by_name, (info.name, message)


class Http:
    """One kept-alive HTTP connection per port, reopened when the server closes it."""

    def __init__(self) -> None:
        self._conns: dict[int, http.client.HTTPConnection] = {}

    def post(self, port: int, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = self._conns.get(port)
            if conn is None:
                conn = self._conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                return reply.status, reply.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()
                del self._conns[port]
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()


def _http_port(ep: Endpoints, info: RpcInfo) -> int:
    port = {
        "meta": ep.http_port,
        "admin": ep.admin_http_port,
        "debug": ep.debug_http_port,
        "kv_meta": ep.kv_http_port,
    }[info.kind]
    assert port is not None
    return port


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def http_conns() -> Iterator[Http]:
    conns = Http()
    yield conns
    conns.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=http_cases())
def test_fuzz_http_json(
    fuzzed: tuple[Endpoints, Sentinel], http_conns: Http, case: tuple[RpcInfo, bytes, bool]
) -> None:
    ep, _ = fuzzed
    info, body, is_object = case
    status, reply = http_conns.post(_http_port(ep, info), f"/api/{info.http_name}", body)
    if not is_object:
        assert (status, reply) == (400, b"{}"), (info.name, body)
        return
    assert status in (200, 400), (info.name, status, body)
    if status == 400:
        assert reply == b"{}"
        return
    response = json_format.Parse(reply, info.response_type(), ignore_unknown_fields=False)
    header = response.header  # type: ignore[attr-defined]
    check_status(info, header.status.code, header.status.message)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=grpc_cases())
def test_fuzz_grpc_bytes(fuzzed: tuple[Endpoints, Sentinel], case: tuple[RpcInfo, bytes]) -> None:
    ep, _ = fuzzed
    info, data = case
    port = {"meta": ep.rpc_port, "kv_meta": ep.kv_rpc_port}.get(info.kind, ep.admin_rpc_port)
    assert port is not None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(info.grpc_path)  # bytes in, bytes out
        try:
            raw = call(data, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (info.name, exc)  # type: ignore[attr-defined]
            assert exc.details() == f"not a valid {info.request_type.__name__}"  # type: ignore[attr-defined]
            with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError: the server was right
                info.request_type.FromString(data)
            return
    response = info.response_type.FromString(raw)
    header = response.header  # type: ignore[attr-defined]
    check_status(info, header.status.code, header.status.message)


def test_oversized_bodies_get_413(fuzzed: tuple[Endpoints, Sentinel], http_conns: Http) -> None:
    ep, _ = fuzzed
    body = json.dumps({"instance_id": "i1", "block_keys": list(range(20_000))}).encode()
    assert len(body) > 64 << 10
    for info in (ALL_RPCS[0], rpcs("admin")["ListStorage"]):
        assert http_conns.post(_http_port(ep, info), f"/api/{info.http_name}", body) == (413, b"{}")


@settings(max_examples=20, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=256))
def test_garbage_on_the_sockets(fuzzed: tuple[Endpoints, Sentinel], garbage: bytes) -> None:
    """Random bytes straight into the gRPC and HTTP listeners: the connection may close, nothing else."""
    ep, _ = fuzzed
    for port in (ep.rpc_port, ep.http_port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + TIMEOUT_S
            while sock.recv(4096):  # the server answers or closes; it must not hold the socket forever
                assert time.monotonic() < deadline
