"""Request limits of ``kvsim serve``: what one request, one connection and one listener may ask for.

* ``kvsim.max_body_bytes`` (64 MiB): an HTTP body or a gRPC message. Over it: HTTP 413 ``{}``, gRPC
  RESOURCE_EXHAUSTED.
* ``kvsim.max_keys_per_request`` (1,000,000): the items of every list field of a request
  (``block_keys``, ``token_ids``, masks, names, ...). Over it: INVALID_ARGUMENT
  ``<field>: N items exceed the per-request limit of M``.
* ``kvsim.max_concurrent_streams`` (100): gRPC calls open at once on one connection (the HTTP/2
  setting ``SETTINGS_MAX_CONCURRENT_STREAMS``). Over it, the client queues the call.
* ``kvsim.max_in_flight`` (1024): requests one listener handles at once. Over it: HTTP 503 ``{}`` with
  ``Retry-After: 1``, gRPC RESOURCE_EXHAUSTED.

The list-field check runs in :meth:`KvcmService.dispatch` before the handler, so one rule covers both
transports and every RPC; its plan (which fields to measure) is computed once per message type. Every
request is processed on the one event loop, so requests pile up "in flight" only while their bytes
arrive: the in-flight limit bounds what slow or stalled clients can hold (memory, file descriptors),
not the cache's throughput.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from kvsim.cache import CacheError, ErrorCode

#: The default of ``kvsim.max_keys_per_request`` (the cache's own default key limit).
DEFAULT_MAX_ITEMS = 1_000_000
#: How deep into singular sub-messages list fields are looked for (``block_mask.bool_masks.values`` is 3).
_MAX_DEPTH = 3
_EMPTY = b"{}"


def _is_repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # newer protobuf; ``label`` is deprecated there
    if flag is not None:
        return bool(flag)
    return fd.label == FieldDescriptor.LABEL_REPEATED


@functools.cache
def list_fields(descriptor: Descriptor) -> tuple[tuple[str, ...], ...]:
    """Paths of every list field of a message type, through singular sub-messages up to depth 3
    (``("block_mask", "bool_masks", "values")``). Map fields count as lists."""
    out: list[tuple[str, ...]] = []

    def walk(desc: Descriptor, prefix: tuple[str, ...]) -> None:
        for fd in desc.fields:
            path = (*prefix, fd.name)
            if _is_repeated(fd):
                out.append(path)
            elif fd.type == FieldDescriptor.TYPE_MESSAGE and len(path) < _MAX_DEPTH:
                walk(fd.message_type, path)

    walk(descriptor, ())
    return tuple(out)


class RequestLimits:
    """The per-request list limit (``kvsim.max_keys_per_request``).

    Args:
        max_items: the most items any list field of a request may hold.
    """

    def __init__(self, max_items: int) -> None:
        if max_items <= 0:
            raise ValueError(f"max_items: must be > 0, got {max_items}")
        self.max_items = max_items

    def check(self, request: Message) -> None:
        """Raise INVALID_ARGUMENT naming the first list field of ``request`` that is over the limit."""
        limit = self.max_items
        for path in list_fields(request.DESCRIPTOR):
            value: Any = request
            for name in path:
                value = getattr(value, name)  # an unset sub-message reads as its empty default
            if len(value) > limit:
                raise CacheError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"{'.'.join(path)}: {len(value)} items exceed the per-request limit of {limit} "
                    "(kvsim.max_keys_per_request)",
                )


# ---------------------------------------------------------------------------------------------- listeners


def grpc_server_options(max_concurrent_streams: int) -> list[tuple[str, int]]:
    """gRPC channel arguments of a server beyond the message size limits."""
    return [("grpc.max_concurrent_streams", max_concurrent_streams)]


def in_flight_middleware(limit: int) -> Any:
    """An aiohttp middleware that answers 503 while ``limit`` requests of its application are being
    handled (their bodies still arriving, typically)."""
    state = {"in_flight": 0}

    @web.middleware
    async def bound(request: web.Request, handler: Any) -> web.StreamResponse:
        if state["in_flight"] >= limit:
            return web.Response(
                status=503, body=_EMPTY, content_type="application/json", headers={"Retry-After": "1"}
            )
        state["in_flight"] += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            state["in_flight"] -= 1

    return bound


def limit_app(app: web.Application, max_in_flight: int) -> None:
    """Bound the requests ``app`` handles at once (the outermost middleware, so refusals cost nothing)."""
    app.middlewares.insert(0, in_flight_middleware(max_in_flight))
