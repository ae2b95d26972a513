"""Reader of KV-cache event logs: KVCM's ``logs/event_publisher.log`` and kvsim's own cache event log.

One JSON object per line (a logger prefix before the object is skipped). Common fields: ``id``,
``source`` (the instance id), ``component``, ``type`` and ``trigger_time_us``. The types a replay uses,
with their fields (reference: KVCM's ``LogEventPublisher``):

==================== =====================================================================================
``GetCacheLocation`` ``query_type``, ``keys`` (effective keys), ``tokens``, ``block_mask`` (the request's:
                     blocks the engine already holds), ``sw_size``, ``location_spec_names``
``StartWriteCache``  ``write_session_id``, ``keys``, ``tokens``, ``block_mask`` (the response's: keys
                     already cached, not to be written), ``write_timeout_seconds``
``FinishWriteCache`` ``write_session_id``, ``success_block`` (a mask over the session's *new* keys)
``CacheReclaimSubmit`` ``block_keys``, ``location_ids``, ``delay_us`` (component ``cache_reclaimer``)
==================== =====================================================================================

Other types are yielded with their common fields only, so a consumer can count and skip them.

:func:`publisher_accesses` converts events into replayable accesses the way KVCM's ``publisher_log``
converter does: a ``GetCacheLocation`` becomes a read; a write becomes one write access at the time its
session finished, of the start's keys less the new keys that failed; a session that never finished is
written 100 ms after it started. Replaying the log *as it happened* (writes, failures, expiries and
reclaims applied as logged) is the optimizer's ``logged`` mode, which consumes the events directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from kvsim.cache.keys import block_keys
from kvsim.core import UserInputError
from kvsim.workloads.cache_trace import (
    BlockMask,
    CacheAccess,
    int64_list,
    is_int,
    is_number,
    iter_json_lines,
    masked,
    parse_block_mask,
)

GET = "GetCacheLocation"
START = "StartWriteCache"
FINISH = "FinishWriteCache"
RECLAIM = "CacheReclaimSubmit"
#: Event types a replay understands.
EVENT_TYPES = (GET, START, FINISH, RECLAIM)
#: KVCM's converter emits a write whose session never finished this long after its start.
UNFINISHED_WRITE_DELAY_S = 0.1
#: Default tokens per block when events carry keys only.
PUBLISHER_BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class PublisherEvent:
    """One event of a cache event log.

    Attributes:
        kind: The event ``type`` (one of :data:`EVENT_TYPES`, or another type the log holds).
        instance: ``source``: the instance id.
        time_s: ``trigger_time_us`` in seconds.
        line: 1-based line in the log.
        keys: Block keys (``keys``, or ``block_keys`` of a reclaim; derived from ``tokens`` when empty).
        n_tokens: Number of ``tokens`` logged (``None`` when none were).
        mask: ``block_mask`` of a get or a start.
        query_type: ``query_type`` of a get.
        session: ``write_session_id`` of a start or a finish.
        success: ``success_block`` of a finish (a mask over the session's new keys).
        timeout_s: ``write_timeout_seconds`` of a start (``None``: never expires).
        delay_s: ``delay_us`` of a reclaim, in seconds.
    """

    kind: str
    instance: str
    time_s: float
    line: int
    keys: list[int] = field(default_factory=list)
    n_tokens: int | None = None
    mask: BlockMask = None
    query_type: str = "prefix_match"
    session: str = ""
    success: BlockMask = None
    timeout_s: float | None = None
    delay_s: float = 0.0

    def new_keys(self) -> list[int]:
        """The keys a start asked to write: those not in its (response) mask, in order."""
        return [k for i, k in enumerate(self.keys) if not masked(self.mask, i)]


def _keys(record: dict[str, object], name: str, block_size: int) -> tuple[list[int], int | None] | str:
    keys = int64_list(record.get(name, []))
    if keys is None:
        return f"{name} must be a list of 64-bit integers"
    tokens = int64_list(record.get("tokens", []))
    if tokens is None:
        return "tokens must be a list of 64-bit integers"
    if not keys and tokens:
        keys = block_keys(tokens, block_size)
    return keys, (len(tokens) if tokens else None)


def _parse(record: object, line: int, block_size: int) -> PublisherEvent | str:
    """Turn one JSON record into an event, or return a message saying what is wrong."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("type", "source", "trigger_time_us") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    kind, source, stamp = record["type"], record["source"], record["trigger_time_us"]
    if not isinstance(kind, str) or not isinstance(source, str):
        return "type and source must be strings"
    if not is_number(stamp):
        return f"trigger_time_us must be a finite number, got {stamp!r}"
    time_s = float(stamp) / 1e6
    if kind not in EVENT_TYPES:
        return PublisherEvent(kind, source, time_s, line)
    if kind == FINISH:
        session = record.get("write_session_id")
        if not isinstance(session, str) or not session:
            return "write_session_id must be a non-empty string"
        if "success_block" not in record:
            return "missing field(s) success_block"
        success = parse_block_mask(record["success_block"])
        if isinstance(success, str):
            return success.replace("block_mask", "success_block")
        return PublisherEvent(kind, source, time_s, line, session=session, success=success)
    got = _keys(record, "block_keys" if kind == RECLAIM else "keys", block_size)
    if isinstance(got, str):
        return got
    keys, n_tokens = got
    if kind == RECLAIM:
        delay = record.get("delay_us", 0)
        if not is_number(delay):
            return f"delay_us must be a number, got {delay!r}"
        return PublisherEvent(kind, source, time_s, line, keys, delay_s=float(delay) / 1e6)
    mask = parse_block_mask(record.get("block_mask"))
    if isinstance(mask, str):
        return mask
    if kind == GET:
        query_type = record.get("query_type", "prefix_match")
        if not isinstance(query_type, str):
            return f"query_type must be a string, got {query_type!r}"
        return PublisherEvent(kind, source, time_s, line, keys, n_tokens, mask, query_type)
    session = record.get("write_session_id")
    if not isinstance(session, str) or not session:
        return "write_session_id must be a non-empty string"
    timeout = record.get("write_timeout_seconds")
    if timeout is not None and not is_int(timeout):
        return f"write_timeout_seconds must be an integer, got {timeout!r}"
    return PublisherEvent(
        kind,
        source,
        time_s,
        line,
        keys,
        n_tokens,
        mask,
        session=session,
        timeout_s=None if timeout is None else float(timeout),
    )


def iter_publisher_events(
    path: str | os.PathLike[str], block_size: int = PUBLISHER_BLOCK_SIZE
) -> Iterator[PublisherEvent]:
    """Stream the events of a cache event log in file order.

    Args:
        path: The log (one JSON object per line, optionally after a logger prefix).
        block_size: Tokens per block, to derive keys from ``tokens`` when ``keys`` is empty.

    Raises:
        UserInputError: The file is missing or unreadable, or a line is malformed (file and line named).
    """
    if not is_int(block_size) or block_size < 1:
        raise UserInputError(f"block_size must be an integer >= 1, got {block_size!r}")
    for line_no, record in iter_json_lines(path, "publisher_log", embedded=True):
        parsed = _parse(record, line_no, block_size)
        if isinstance(parsed, str):
            raise UserInputError(f"{path}, line {line_no}: {parsed}")
        yield parsed


def publisher_accesses(
    events: Iterable[PublisherEvent], block_size: int = PUBLISHER_BLOCK_SIZE
) -> tuple[list[CacheAccess], list[str]]:
    """Convert events into replayable accesses (KVCM's ``publisher_log`` converter, see the module doc).

    Args:
        events: The log's events, in file order.
        block_size: Tokens per block, to size reads whose tokens were not logged.

    Returns:
        The accesses (in the order they were produced; replays sort them by time) and notes about
        events that were skipped.
    """
    accesses: list[CacheAccess] = []
    pending: dict[str, PublisherEvent] = {}
    unknown_finish = 0
    other: dict[str, int] = {}
    for ev in events:
        if ev.kind == GET:
            length = ev.n_tokens if ev.n_tokens is not None else len(ev.keys) * block_size
            accesses.append(
                CacheAccess(
                    ev.time_s, ev.instance, length, ev.keys, (), ev.mask, ev.query_type, None, ev.line
                )
            )
        elif ev.kind == START:
            pending[ev.session] = ev
        elif ev.kind == FINISH:
            start = pending.pop(ev.session, None)
            if start is None:
                unknown_finish += 1
                continue
            failed = {k for j, k in enumerate(start.new_keys()) if not masked(ev.success, j)}
            written = [k for k in start.keys if k not in failed] if failed else start.keys
            if written:
                accesses.append(CacheAccess(ev.time_s, start.instance, 0, (), written, line=ev.line))
        elif ev.kind != RECLAIM:
            other[ev.kind] = other.get(ev.kind, 0) + 1
    for start in pending.values():
        if start.keys:
            time_s = start.time_s + UNFINISHED_WRITE_DELAY_S
            accesses.append(CacheAccess(time_s, start.instance, 0, (), start.keys, line=start.line))
    notes = []
    if pending:
        notes.append(
            f"{len(pending)} write session(s) never finished; written {UNFINISHED_WRITE_DELAY_S * 1000:g} ms "
            "after they started"
        )
    if unknown_finish:
        notes.append(f"{unknown_finish} FinishWriteCache event(s) without a StartWriteCache were skipped")
    if other:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(other.items()))
        notes.append(f"skipped events of other types: {kinds}")
    return accesses, notes
