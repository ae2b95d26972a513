"""Transports of the service client: gRPC (sync channels) and HTTP (``http.client``, keep-alive).

A transport sends one request message and returns the response message, or raises
:class:`ServiceUnavailable` when the service cannot be reached. Both retry with exponential backoff:

* any RPC, when the request surely never reached the server (connection refused or reset before
  sending, gRPC UNAVAILABLE);
* idempotent RPCs (:attr:`RpcInfo.idempotent`) also after a timeout or a dropped connection, where
  the server may have acted already.

Both are thread-safe: gRPC channels are, and HTTP keeps one connection per thread.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from kvsim.cache import CacheError, ErrorCode
from kvsim.serve.catalog import RpcInfo, ServiceKind


class ServiceUnavailable(CacheError):
    """The service could not be reached (after retries); ``code`` is SERVICE_NOT_READY."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.SERVICE_NOT_READY, message)

    def __reduce__(self) -> tuple[type[ServiceUnavailable], tuple[str]]:  # type: ignore[override]
        return (ServiceUnavailable, (self.message,))


class Unauthenticated(CacheError):
    """The admin or debug service refused the call: the admin token is missing or wrong (HTTP 401,
    gRPC UNAUTHENTICATED). ``code`` is INVALID_ARGUMENT; retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, message)

    def __reduce__(self) -> tuple[type[Unauthenticated], tuple[str]]:  # type: ignore[override]
        return (Unauthenticated, (self.message,))


def _auth_metadata(admin_token: str) -> tuple[tuple[str, str], ...]:
    """The ``authorization`` entry the admin and debug services require when a token is set."""
    return (("authorization", f"Bearer {admin_token}"),) if admin_token else ()


class _Retry(Exception):
    """Internal: this attempt failed in a way that may be retried (``always`` when it never reached the
    server)."""

    def __init__(self, reason: str, always: bool) -> None:
        super().__init__(reason)
        self.always = always


class Transport(ABC):
    """Sends one RPC; subclasses implement :meth:`_attempt`.

    Args:
        timeout_s: deadline of one attempt.
        retries: attempts after the first one.
        backoff_s: wait before the first retry; doubles each time, up to 2 s.
        sleep: injectable for tests.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep

    def call(self, info: RpcInfo, request: Message) -> Message:
        """Send ``request`` and return the response message.

        Raises:
            ServiceUnavailable: every attempt failed to reach the service.
            CacheError: the server refused the request outright (HTTP 400, 404, 413).
        """
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return self._attempt(info, request)
            except _Retry as failure:
                if attempt == self.retries or not (failure.always or info.idempotent):
                    raise ServiceUnavailable(
                        f"{info.kind}.{info.name}: {failure} (after {attempt + 1} attempt(s))"
                    ) from None
            self._sleep(delay)
            delay = min(2.0, delay * 2)
        raise AssertionError("unreachable")

    @abstractmethod
    def _attempt(self, info: RpcInfo, request: Message) -> Message:
        """One try; raises :class:`_Retry` for failures worth retrying."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class GrpcTransport(Transport):
    """gRPC; ``targets`` maps a service kind to ``host:port``.

    Args:
        channel_credentials: ``grpc.ChannelCredentials`` for TLS (see :mod:`kvsim.serve.tls`); insecure
            channels when None.
        admin_token: sent as ``authorization: Bearer <token>`` metadata to the admin and debug services.
    """

    def __init__(
        self,
        targets: dict[ServiceKind, str],
        *,
        max_message_bytes: int = 64 << 20,
        channel_credentials: Any = None,
        admin_token: str = "",
        **kwargs: Any,
    ) -> None:
        import grpc  # imported here so that the HTTP client works without grpcio

        super().__init__(**kwargs)
        self._grpc = grpc
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if channel_credentials is not None:
            self._channels = {
                kind: grpc.secure_channel(target, channel_credentials, options=options)
                for kind, target in targets.items()
            }
        else:
            self._channels = {
                kind: grpc.insecure_channel(target, options=options) for kind, target in targets.items()
            }
        auth = _auth_metadata(admin_token)
        # The meta and KV services never see the token: they are not guarded, and need no secret to pass on.
        self._metadata: dict[str, Any] = {"admin": auth or None, "debug": auth or None}
        self._calls: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _callable(self, info: RpcInfo) -> Any:
        with self._lock:
            call = self._calls.get(info.grpc_path)
            if call is None:
                channel = self._channels.get(info.kind)
                if channel is None:
                    raise CacheError(ErrorCode.UNSUPPORTED, f"no {info.kind} service address configured")
                call = channel.unary_unary(
                    info.grpc_path,
                    request_serializer=info.request_type.SerializeToString,
                    response_deserializer=info.response_type.FromString,
                )
                self._calls[info.grpc_path] = call
            return call

    def _attempt(self, info: RpcInfo, request: Message) -> Message:
        grpc = self._grpc
        try:
            call = self._callable(info)
            return call(request, timeout=self.timeout_s, metadata=self._metadata.get(info.kind))  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise _Retry(f"gRPC UNAVAILABLE: {exc.details()}", always=True) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise _Retry(f"gRPC deadline of {self.timeout_s} s exceeded", always=False) from None
            if code == grpc.StatusCode.CANCELLED:
                # A server shutting down cancels the calls it had received but not yet handed to a
                # handler (grpc/grpc#41785): the server went away, like a dropped connection.
                raise _Retry(f"gRPC CANCELLED: {exc.details()}", always=False) from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise CacheError(ErrorCode.UNSUPPORTED, f"{info.grpc_path}: not served here") from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(f"{info.kind}.{info.name}: {exc.details()}") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise CacheError(ErrorCode.INVALID_ARGUMENT, f"{info.name}: message too large") from None
            raise CacheError(ErrorCode.INTERNAL_ERROR, f"{info.name}: gRPC {code}: {exc.details()}") from None

    def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            channel.close()


class HttpTransport(Transport):
    """HTTP/1.1 JSON; ``targets`` maps a service kind to ``(host, port)``.

    Args:
        ssl_context: an ``ssl.SSLContext`` for HTTPS (see :func:`kvsim.serve.tls.client_ssl_context`);
            plain HTTP when None.
        admin_token: sent as ``Authorization: Bearer <token>`` to the admin and debug services.
    """

    def __init__(
        self,
        targets: dict[ServiceKind, tuple[str, int]],
        *,
        ssl_context: Any = None,
        admin_token: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._targets = targets
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._headers: dict[str, dict[str, str]] = {}
        for kind in ("meta", "admin", "debug", "kv_meta"):
            headers = {"Content-Type": "application/json"}
            if admin_token and kind in ("admin", "debug"):  # only the guarded services get the secret
                headers["Authorization"] = f"Bearer {admin_token}"
            self._headers[kind] = headers

    def _connection(self, kind: ServiceKind) -> http.client.HTTPConnection:
        pool: dict[ServiceKind, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        conn = pool.get(kind)
        if conn is None:
            target = self._targets.get(kind)
            if target is None:
                raise CacheError(ErrorCode.UNSUPPORTED, f"no {kind} service address configured")
            if self._ssl_context is not None:
                conn = http.client.HTTPSConnection(
                    target[0], target[1], timeout=self.timeout_s, context=self._ssl_context
                )
            else:
                conn = http.client.HTTPConnection(target[0], target[1], timeout=self.timeout_s)
            pool[kind] = conn
        return conn

    def _drop(self, kind: ServiceKind) -> None:
        conn = self._local.__dict__.get("pool", {}).pop(kind, None)
        if conn is not None:
            conn.close()

    def _attempt(self, info: RpcInfo, request: Message) -> Message:
        body = json.dumps(
            json_format.MessageToDict(request, preserving_proto_field_name=True), separators=(",", ":")
        ).encode("utf-8")
        conn = self._connection(info.kind)
        reused = conn.sock is not None  # a kept-alive connection the server may have closed while idle
        sent = False
        try:
            conn.request("POST", f"/api/{info.http_name}", body=body, headers=self._headers[info.kind])
            sent = True
            reply = conn.getresponse()
            data = reply.read()
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
            self._drop(info.kind)
            # On a reused connection this is the server having closed it while idle: the request never
            # arrived, so any RPC may be sent again on a fresh connection.
            raise _Retry(f"HTTP {type(exc).__name__}: {exc}", always=reused or not sent) from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            self._drop(info.kind)
            raise _Retry(f"HTTP {type(exc).__name__}: {exc}", always=not sent) from None
        if reply.status == 200:
            response = info.response_type()
            json_format.Parse(data, response, ignore_unknown_fields=True)
            return response
        if reply.status == 401:
            raise Unauthenticated(f"{info.kind}.{info.name}: admin token missing or wrong (HTTP 401)")
        if reply.status == 413:
            raise CacheError(ErrorCode.INVALID_ARGUMENT, f"{info.name}: request body too large (HTTP 413)")
        if reply.status in (404, 405):
            raise CacheError(
                ErrorCode.UNSUPPORTED, f"/api/{info.http_name}: not served here (HTTP {reply.status})"
            )
        if reply.status == 400:
            raise CacheError(
                ErrorCode.INVALID_ARGUMENT, f"{info.name}: the server could not parse the request"
            )
        self._drop(info.kind)
        raise _Retry(f"HTTP {reply.status}", always=False)

    def close(self) -> None:
        """Close this thread's connections (others close when their threads end)."""
        for kind in list(self._local.__dict__.get("pool", {})):
            self._drop(kind)
