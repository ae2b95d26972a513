"""The admin token: with ``--admin-token`` (or ``KVSIM_ADMIN_TOKEN``) set, the admin and debug services
answer only requests that carry it.

* HTTP: header ``Authorization: Bearer <token>``. Anything else gets ``401`` with body ``{}`` and
  ``WWW-Authenticate: Bearer realm="kvsim"``, before the body is read. This also covers ``GET /metrics``
  on the admin HTTP port.
* gRPC: metadata ``authorization: Bearer <token>``. Anything else ends the call with
  ``UNAUTHENTICATED`` before the request bytes are decoded (each method handler is wrapped, since
  registered methods bypass generic handlers).

The meta service is never guarded: inference engines call it on every request, as in the reference.
Tokens are compared in constant time (:func:`hmac.compare_digest`). Every refusal is written to the access
log (status ``UNAUTHENTICATED``) and counted (GetMetrics ``service.unauthenticated_counter``); the server
log gets a warning per peer address and reason at most every :data:`WARN_EVERY_S` seconds, so that a
client retrying with a wrong token cannot flood it. The token itself is never logged.

:func:`exposure_warnings` lists what is risky about a listen address: a non-loopback host without a
token, or a token sent over the network without TLS.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web

from kvsim.serve.accesslog import AccessLog
from kvsim.serve.catalog import ServiceKind

logger = logging.getLogger("kvsim.serve")

#: Metadata key (gRPC) and header (HTTP) that carry the token.
GRPC_METADATA_KEY = "authorization"
HTTP_HEADER = "Authorization"
#: Shortest gap between two warnings for the same peer address and reason.
WARN_EVERY_S = 10.0
#: What a refused client is told; it names the header but never the token.
REFUSAL = "admin token missing or wrong: send 'authorization: Bearer <token>'"

Clock = Callable[[], float]


class TokenGuard:
    """Checks ``Authorization`` values against the admin token; an empty token allows everything.

    Args:
        token: the admin token ("" turns the guard off).
        counts: where refusals are counted by service kind (a new dict when None).
        monotonic: seconds for the warning rate limit (injectable for tests).
    """

    def __init__(
        self, token: str, *, counts: dict[str, int] | None = None, monotonic: Clock = time.monotonic
    ) -> None:
        self._token = token.encode("utf-8")
        self._monotonic = monotonic
        self._last_warning: dict[tuple[str, str], float] = {}
        #: Refusals by service kind (GetMetrics ``service.unauthenticated_counter``); the server passes
        #: the service's ``metrics.refused``.
        self.refused: dict[str, int] = counts if counts is not None else {}

    @property
    def enabled(self) -> bool:
        """True when a token is required."""
        return bool(self._token)

    def check(self, value: str | None) -> str:
        """Why ``value`` (an ``Authorization`` header or metadata value) is refused: ``no admin token``,
        ``not a Bearer credential`` or ``wrong admin token``; the empty string when it is accepted."""
        if not self._token:
            return ""
        if not value:
            return "no admin token"
        scheme, _, credential = value.strip().partition(" ")
        if scheme.lower() != "bearer":  # RFC 6750: the scheme name is case-insensitive
            return "not a Bearer credential"
        if not hmac.compare_digest(credential.strip().encode("utf-8"), self._token):
            return "wrong admin token"
        return ""

    def refuse(self, kind: ServiceKind, api: str, peer: str, reason: str, transport: str) -> None:
        """Count one refusal and warn about it (rate-limited per peer address and reason)."""
        self.refused[kind] = self.refused.get(kind, 0) + 1
        address = _address(peer)
        now = self._monotonic()
        last = self._last_warning.get((address, reason))
        if last is not None and now - last < WARN_EVERY_S:
            return
        if len(self._last_warning) > 10_000:  # many distinct peers: forget them rather than grow
            self._last_warning.clear()
        self._last_warning[(address, reason)] = now
        logger.warning("refused %s %s.%s from %s: %s", transport, kind, api, peer or "?", reason)


def _address(peer: str) -> str:
    """The address part of a peer (``ipv4:1.2.3.4:5678`` or ``1.2.3.4``), without the port."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.split(":", 1)[1].rsplit(":", 1)[0]
    return peer


# ---------------------------------------------------------------------------------------------- gRPC


def _metadata_value(metadata: Any) -> str | None:
    """The ``authorization`` value of a call's invocation metadata, or None."""
    for key, item in metadata or ():
        if key == GRPC_METADATA_KEY:
            return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    return None


def _guarded(
    handler: grpc.RpcMethodHandler, kind: ServiceKind, api: str, guard: TokenGuard, access: AccessLog
) -> grpc.RpcMethodHandler:
    """``handler`` with the token checked on the call's metadata before the request bytes are decoded."""
    inner = handler.unary_unary
    assert inner is not None, "kvsim serves unary RPCs only"

    async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        reason = guard.check(_metadata_value(context.invocation_metadata()))
        if not reason:
            return await inner(raw, context)  # type: ignore[no-any-return,misc]
        peer = context.peer() or ""
        guard.refuse(kind, api, peer, reason, "grpc")
        access.write(
            transport="grpc",
            service=kind,
            api=api,
            status="UNAUTHENTICATED",
            latency_s=0.0,
            request_bytes=len(raw),
            response_bytes=0,
            peer=peer,
        )
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def guard_grpc(
    handlers: dict[str, grpc.RpcMethodHandler], kind: ServiceKind, guard: TokenGuard, access: AccessLog
) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers of service ``kind`` (by method name), each refusing calls without the token
    with ``UNAUTHENTICATED``; ``handlers`` unchanged when no token is set or ``kind`` is the meta
    service."""
    if not guard.enabled or kind == "meta":
        return handlers
    return {api: _guarded(handler, kind, api, guard, access) for api, handler in handlers.items()}


# ---------------------------------------------------------------------------------------------- HTTP


def http_middleware(kind: ServiceKind, guard: TokenGuard, access: AccessLog) -> Any:
    """An aiohttp middleware that answers 401 to requests of service ``kind`` without the token."""

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        reason = guard.check(request.headers.get(HTTP_HEADER))
        if not reason:
            return await handler(request)  # type: ignore[no-any-return]
        api = request.match_info.get("method") or request.path
        peer = request.remote or ""
        guard.refuse(kind, api, peer, reason, "http")
        access.write(
            transport="http",
            service=kind,
            api=api,
            status="UNAUTHENTICATED",
            http_status=401,
            latency_s=0.0,
            request_bytes=request.content_length or 0,
            response_bytes=2,
            peer=peer,
        )
        return web.Response(
            status=401,
            body=b"{}",
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="kvsim"'},
        )

    return require_token


def secure_app(app: web.Application, kind: ServiceKind, guard: TokenGuard, access: AccessLog) -> None:
    """Put the token check in front of every route of ``app`` (admin and debug services only)."""
    if guard.enabled and kind != "meta":
        app.middlewares.insert(0, http_middleware(kind, guard, access))


# ---------------------------------------------------------------------------------------------- exposure


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warnings(host: str, token_set: bool, tls_set: bool) -> list[str]:
    """What is risky about serving on ``host`` with this security configuration (empty: nothing)."""
    if is_loopback(host):
        return []
    warnings = []
    if not token_set:
        warnings.append(
            f"listening on {host} without an admin token: anyone who reaches the admin port can remove "
            "storages, instances and caches (set KVSIM_ADMIN_TOKEN)"
        )
    if not tls_set:
        what = "the admin token and all cache metadata" if token_set else "all cache metadata"
        warnings.append(f"listening on {host} without TLS: {what} cross the network in clear text")
    return warnings
