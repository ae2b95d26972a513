"""The JSON access log: one line per request with what an operator needs, never the bodies.

Each line holds ``ts`` (epoch seconds), ``transport`` (grpc or http), ``service`` (meta, admin, debug),
``api``, ``status`` (the KVCM code name, or ``-`` when the request never reached a handler), ``http_status``
(HTTP only), ``latency_ms``, ``request_bytes``, ``response_bytes``, ``trace_id`` and ``peer``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

from kvsim.core import Clock

ACCESS_LOGGER = "kvsim.serve.access"


class AccessLog:
    """Writes access lines to a file (or nowhere when ``path`` is None).

    Args:
        path: the log file, appended to; its folder must exist.
        clock: stamps each line.
        max_bytes: rotate the file when a line would take it past this size (0: never).
        backups: rotated files kept (``access.log.1`` is the newest).
    """

    def __init__(self, path: Path | None, clock: Clock, *, max_bytes: int = 0, backups: int = 1) -> None:
        self._clock = clock
        self._logger = logging.getLogger(f"{ACCESS_LOGGER}.{id(self)}")
        self._logger.propagate = False  # access lines go to their file only, not to stderr
        self._logger.setLevel(logging.INFO)
        self._handler: logging.Handler | None = None
        if path is not None:
            # A server runs for months: the file rotates by size instead of growing without bound.
            self._handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(self._handler)

    def write(
        self,
        *,
        transport: str,
        service: str,
        api: str,
        status: str,
        latency_s: float,
        request_bytes: int,
        response_bytes: int,
        trace_id: str = "",
        peer: str = "",
        http_status: int | None = None,
    ) -> None:
        """Append one line."""
        if self._handler is None:
            return
        record: dict[str, object] = {
            "ts": round(self._clock.now(), 6),
            "transport": transport,
            "service": service,
            "api": api,
            "status": status,
        }
        if http_status is not None:
            record["http_status"] = http_status
        record.update(
            latency_ms=round(latency_s * 1000, 3),
            request_bytes=request_bytes,
            response_bytes=response_bytes,
            trace_id=trace_id,
            peer=peer,
        )
        self._logger.info(json.dumps(record, separators=(",", ":"), ensure_ascii=False))

    def close(self) -> None:
        """Flush and close the file."""
        if self._handler is not None:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
