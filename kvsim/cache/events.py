"""The cache event log: what the manager did, in the reference's publisher format, for trace replay.

KVCM's ``LogEventPublisher`` writes one JSON object per line to ``logs/event_publisher.log`` (study
§5.2), and its optimizer replays that file (``trace_type: publisher_log``). kvsim writes the same
records, so its own traffic (simulated or served) can be replayed by ``kvsim optimize`` through
:mod:`kvsim.workloads.publisher_log`.

Every record has ``id`` (32 ``[a-z0-9]`` characters), ``source`` (the instance id), ``component``,
``type`` and ``trigger_time_us`` (the manager's clock in integer microseconds), then per type:

======================== ==================================================================================
``GetCacheLocation``     ``trace_id``, ``query_type`` (``prefix_match`` / ``batch_get`` /
                         ``reverse_roll_sw_match``), ``keys`` (the effective keys, derived from tokens when
                         needed), ``tokens``, ``block_mask`` (the request's), ``sw_size``,
                         ``location_spec_names``
``StartWriteCache``      ``trace_id``, ``write_session_id``, ``keys``, ``tokens``, ``block_mask`` (the
                         response's: keys already cached), ``location_spec_group_names``,
                         ``write_timeout_seconds``
``FinishWriteCache``     ``trace_id``, ``write_session_id``, ``success_block``
``CacheReclaimSubmit``   ``block_keys``, ``location_ids`` (one list per key), ``delay_us``; component
                         ``cache_reclaimer`` (the others: ``cache_manager``)
======================== ==================================================================================

A block mask is written as the reference's ``PutBlockMask`` does: an integer offset or a list of
booleans (an absent mask as ``[]``). As in the reference only successful calls are logged.

The cache layer starts no threads and does no I/O on its own: :class:`EventLog` buffers records and
hands them to an injected *sink* when :meth:`EventLog.flush` is called (by the manager's ``poll`` and
``close``, or when the buffer is full). :class:`MemorySink` keeps them in a list (simulation);
:class:`JsonlFileSink` appends JSON lines to a file (the service).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

from kvsim.cache.types import BlockMask, QueryType

GET = "GetCacheLocation"
START = "StartWriteCache"
FINISH = "FinishWriteCache"
RECLAIM = "CacheReclaimSubmit"
MANAGER = "cache_manager"
RECLAIMER = "cache_reclaimer"

#: The reference's event queue size; here the buffer is flushed (not dropped) when it is reached.
DEFAULT_BUFFER = 10_000
#: While the sink fails, up to this many buffers of records are kept; older ones are then dropped.
OVERFLOW = 10

QUERY_TYPE_NAMES: dict[QueryType, str] = {
    QueryType.QT_UNSPECIFIED: "unspecified",
    QueryType.QT_BATCH_GET: "batch_get",
    QueryType.QT_PREFIX_MATCH: "prefix_match",
    QueryType.QT_REVERSE_ROLL_SW_MATCH: "reverse_roll_sw_match",
}

Record = dict[str, Any]


def mask_json(mask: BlockMask | None) -> int | list[bool]:
    """A block mask as the reference writes it: an offset, or a list of booleans (``[]`` when absent)."""
    if mask is None:
        return []
    if mask.offset is not None:
        return int(mask.offset)
    return [bool(v) for v in mask.bool_masks or ()]


def int_list(values: Sequence[int] | Any) -> list[int]:
    """Plain ints (a numpy array or any sequence of integers)."""
    tolist = getattr(values, "tolist", None)
    return [int(v) for v in (tolist() if tolist is not None else values)]


class EventSink(Protocol):
    """Where flushed records go."""

    def write(self, records: Sequence[Record]) -> None:
        """Take a batch of records (in publication order)."""
        ...

    def close(self) -> None:
        """Release resources; no more writes follow."""
        ...


class MemorySink:
    """Keeps every record in :attr:`records` (for simulations and tests)."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: Sequence[Record]) -> None:
        """Append the batch."""
        self.records.extend(records)

    def close(self) -> None:
        """Nothing to release."""


class JsonlFileSink:
    """Appends one compact JSON object per line to ``path`` (created with its directory when needed).

    Args:
        path: the log file (the reference's is ``logs/event_publisher.log``).

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()

    def write(self, records: Sequence[Record]) -> None:
        """Write the batch and flush it to the OS."""
        if not records:
            return
        self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class EventLog:
    """Buffers event records and flushes them to a sink.

    Args:
        sink: where records go; a :class:`MemorySink` when None.
        buffer_size: records kept before a flush is forced (the reference's queue size).
    """

    def __init__(self, sink: EventSink | None = None, buffer_size: int = DEFAULT_BUFFER) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: must be >= 1, got {buffer_size}")
        self.sink: EventSink = sink if sink is not None else MemorySink()
        self._buffer: list[Record] = []
        self._limit = buffer_size
        self.published = 0
        self.dropped = 0

    def publish(self, record: Record) -> None:
        """Queue one record, flushing when the buffer is full. Never raises for a failing sink: the
        call being logged has already happened, so the records stay buffered for a later flush, and
        beyond ``OVERFLOW`` times the buffer size the oldest are dropped (counted in ``dropped``)."""
        self._buffer.append(record)
        self.published += 1
        if len(self._buffer) >= self._limit:
            try:
                self.flush()
            except OSError:
                excess = len(self._buffer) - OVERFLOW * self._limit
                if excess > 0:
                    del self._buffer[:excess]
                    self.dropped += excess

    def pending(self) -> int:
        """Records buffered and not yet flushed."""
        return len(self._buffer)

    def flush(self) -> int:
        """Hand the buffered records to the sink; return how many.

        Raises:
            OSError: from the sink; the records stay buffered.
        """
        if not self._buffer:
            return 0
        self.sink.write(self._buffer)
        count = len(self._buffer)
        self._buffer = []
        return count

    def close(self) -> None:
        """Flush and close the sink."""
        self.flush()
        self.sink.close()


def base_record(event_id: str, source: str, component: str, kind: str, now_s: float) -> Record:
    """The fields every event has, in the reference's order."""
    return {
        "id": event_id,
        "source": source,
        "component": component,
        "type": kind,
        "trigger_time_us": round(now_s * 1e6),
    }


__all__ = [
    "DEFAULT_BUFFER",
    "FINISH",
    "GET",
    "MANAGER",
    "OVERFLOW",
    "QUERY_TYPE_NAMES",
    "RECLAIM",
    "RECLAIMER",
    "START",
    "EventLog",
    "EventSink",
    "JsonlFileSink",
    "MemorySink",
    "Record",
    "base_record",
    "int_list",
    "mask_json",
]
