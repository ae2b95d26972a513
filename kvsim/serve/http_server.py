"""HTTP transport (aiohttp): ``POST /api/<lowerCamelMethod>`` with proto3 JSON bodies.

Parsing and printing follow the reference (COMPAT.md "HTTP" row):

* Requests: protobuf JSON with unknown fields ignored (unknown enum names too, as the reference's parser
  does), field names in snake_case or lowerCamel, int64 as JSON strings or numbers, enums by name or
  number. A body that is not such JSON (including an empty one) -> HTTP 400 with body ``{}``.
* Responses: HTTP 200, snake_case keys, every field without presence printed (``"locations":[]``),
  enums by name, int64 as strings, no whitespace.
* kvsim additions: a body over ``max_body_bytes`` -> 413 ``{}``; an unknown method -> 404.

The handler never raises past aiohttp: whatever the body holds, the answer is 200, 400, 404 or 413.
"""

from __future__ import annotations

import json

from aiohttp import web
from google.protobuf import json_format

from kvsim.serve.accesslog import AccessLog
from kvsim.serve.catalog import ServiceKind
from kvsim.serve.grpc_server import status_name
from kvsim.serve.jsonprint import message_json
from kvsim.serve.service import KvcmService

JSON = "application/json"
_EMPTY = b"{}"


def message_to_json(message: object) -> bytes:
    """The reference's JSON print of a message: snake_case, defaults included, compact (long lists of
    locations from memoised text, see :mod:`kvsim.serve.jsonprint`)."""
    return message_json(message).encode("utf-8")  # type: ignore[arg-type]


def build_app(
    service: KvcmService, kind: ServiceKind, access: AccessLog, max_body_bytes: int
) -> web.Application:
    """The aiohttp application serving every RPC of service ``kind``."""
    by_path = {route.info.http_name: route for route in service.routes(kind).values()}

    async def handle(request: web.Request) -> web.Response:
        started = service.timer.monotonic()
        name = request.match_info["method"]
        route = by_path.get(name)
        peer = request.remote or ""

        def answer(
            status: int, body: bytes, api: str, code: str, size: int, trace_id: str = ""
        ) -> web.Response:
            access.write(
                transport="http",
                service=kind,
                api=api,
                status=code,
                http_status=status,
                latency_s=service.timer.monotonic() - started,
                request_bytes=size,
                response_bytes=len(body),
                trace_id=trace_id,
                peer=peer,
            )
            return web.Response(status=status, body=body, content_type=JSON)

        if route is None:
            return answer(404, _EMPTY, name, "-", request.content_length or 0)
        api = route.info.name
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return answer(413, _EMPTY, api, "-", request.content_length or 0)
        message = route.info.request_type()
        try:
            document = json.loads(body)
            if not isinstance(document, dict):  # the reference's parser requires a JSON object
                raise ValueError("not a JSON object")
            json_format.ParseDict(document, message, ignore_unknown_fields=True)
        except Exception:  # ParseError, bad UTF-8, non-object JSON, absurd nesting: all are the client's
            return answer(400, _EMPTY, api, "-", len(body))
        response = service.dispatch(route, message)
        return answer(
            200,
            message_to_json(response),
            api,
            status_name(response.header.status.code),  # type: ignore[attr-defined]
            len(body),
            getattr(message, "trace_id", ""),
        )

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post("/api/{method}", handle)
    return app
