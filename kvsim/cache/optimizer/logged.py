"""Replay a cache event log *as it happened* (``kvsim optimize --policy logged``).

A capacity replay asks "what if the cache were this big under that policy". The logged mode asks
"what did the service see": it applies the log's own writes, failures, expiries and reclaims, and so
reproduces the hit counts the service returned. State per instance, following KVCM's location
lifecycle (reference study §2.5, §4.2):

- ``StartWriteCache``: the start's *new* keys (those outside its response ``block_mask``; without a
  mask, the keys neither serving nor being written) get a WRITING location, which no read matches;
  the session expires ``write_timeout_seconds`` later.
- ``FinishWriteCache``: each new key in ``success_block`` becomes SERVING; each other one failed and its
  location is deleted.
- A session still open at its deadline (checked before every later event) fails as a whole: expired.
- ``CacheReclaimSubmit``: the keys' locations go DELETING at once (the delete itself is delayed, but a
  DELETING location is no longer matched), so they stop hitting.
- ``GetCacheLocation`` with ``query_type`` ``prefix_match``: masked keys are dropped (the engine holds
  them) and the hit is the run of SERVING keys from the first remaining one, exactly as KVCM's
  ``PrefixMatch``. Other query types are counted and skipped.

One location per key is assumed (the reclaimer's ``location_ids`` are not tracked), which holds for a
single storage backend.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from kvsim.cache.optimizer.replay import ReplayResult, Timeline
from kvsim.workloads.cache_trace import masked, masked_count
from kvsim.workloads.publisher_log import FINISH, GET, RECLAIM, START, PublisherEvent


@dataclass
class LoggedStats:
    """What happened to blocks in a logged replay, beyond the read totals."""

    written_blocks: int = 0
    failed_blocks: int = 0
    expired_blocks: int = 0
    reclaimed_blocks: int = 0
    skipped_reads: int = 0
    unknown_sessions: int = 0
    cached_blocks: dict[str, int] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """Human-readable notes about skipped events."""
        out = []
        if self.skipped_reads:
            out.append(f"{self.skipped_reads} read(s) with a query type other than prefix_match were skipped")
        if self.unknown_sessions:
            out.append(
                f"{self.unknown_sessions} FinishWriteCache event(s) named an unknown or expired session"
            )
        return out


@dataclass
class _Session:
    instance: str
    keys: list[int]


def replay_logged(
    events: Iterable[PublisherEvent], block_size: int, *, timeline: bool = False
) -> tuple[ReplayResult, LoggedStats]:
    """Apply a log's events in time order (stable) and count what its reads hit.

    Args:
        events: The log's events (any order; sorted stably by time here).
        block_size: Tokens per block (for the token hit rate of reads that logged no tokens).
        timeline: Record every read.

    Returns:
        A result with policy ``"logged"`` and capacity ``inf`` (``evicted_blocks`` = reclaimed + failed
        + expired), and the detailed counts.
    """
    ordered = sorted(events, key=lambda e: e.time_s)
    serving: dict[str, set[int]] = {}
    writing: dict[str, dict[int, int]] = {}
    sessions: dict[str, _Session] = {}
    deadlines: list[tuple[float, int, str]] = []
    stats = LoggedStats()
    result = ReplayResult("logged", math.inf)
    tl = Timeline() if timeline else None
    inst_index: dict[str, int] = {}

    def release(session: _Session) -> None:
        marks = writing[session.instance]
        for key in session.keys:
            left = marks.get(key, 0) - 1
            if left > 0:
                marks[key] = left
            else:
                marks.pop(key, None)

    for seq, ev in enumerate(ordered):
        while deadlines and deadlines[0][0] <= ev.time_s:
            _, _, sid = heapq.heappop(deadlines)
            open_session = sessions.pop(sid, None)
            if open_session is not None:
                stats.expired_blocks += len(open_session.keys)
                release(open_session)
        cache = serving.setdefault(ev.instance, set())
        marks = writing.setdefault(ev.instance, {})
        ii = inst_index.setdefault(ev.instance, len(inst_index))
        if ev.kind == GET:
            if ev.query_type != "prefix_match":
                stats.skipped_reads += 1
                continue
            keys = [k for i, k in enumerate(ev.keys) if not masked(ev.mask, i)]
            hit = 0
            for key in keys:
                if key not in cache:
                    break
                hit += 1
            length = ev.n_tokens if ev.n_tokens is not None else len(ev.keys) * block_size
            length = max(0, length - masked_count(ev.mask, len(ev.keys)) * block_size)
            hit_tokens = min(hit * block_size, length)
            result.requests += 1
            result.read_blocks += len(keys)
            result.hit_blocks += hit
            result.read_tokens += length
            result.hit_tokens += hit_tokens
            if tl is not None:
                tl.time_us.append(round(ev.time_s * 1e6))
                tl.inst.append(ii)
                tl.read_blocks.append(len(keys))
                tl.hit_blocks.append(hit)
                tl.internal_read.append(0)
                tl.internal_hit.append(0)
                tl.read_tokens.append(length)
                tl.hit_tokens.append(hit_tokens)
                tl.cached.append(len(cache))
        elif ev.kind == START:
            if ev.mask is not None:
                new = ev.new_keys()
            else:
                new = [k for k in ev.keys if k not in cache and k not in marks]
            for key in new:
                marks[key] = marks.get(key, 0) + 1
            session = _Session(ev.instance, new)
            sessions[ev.session] = session
            if ev.timeout_s is not None:
                heapq.heappush(deadlines, (ev.time_s + ev.timeout_s, seq, ev.session))
        elif ev.kind == FINISH:
            done = sessions.pop(ev.session, None)
            if done is None:
                stats.unknown_sessions += 1
                continue
            release(done)
            target = serving.setdefault(done.instance, set())
            for j, key in enumerate(done.keys):
                if masked(ev.success, j):
                    target.add(key)
                    stats.written_blocks += 1
                else:
                    stats.failed_blocks += 1
        elif ev.kind == RECLAIM:
            for key in ev.keys:
                if key in cache:
                    cache.remove(key)
                    stats.reclaimed_blocks += 1
    result.inserted_blocks = stats.written_blocks
    result.evicted_blocks = stats.reclaimed_blocks + stats.failed_blocks + stats.expired_blocks
    result.timeline = tl
    stats.cached_blocks = {name: len(keys) for name, keys in serving.items()}
    return result, stats


def instance_names(events: Iterable[PublisherEvent]) -> tuple[str, ...]:
    """Instances in order of first appearance in time order (matches the timeline's ``inst`` indices)."""
    names: dict[str, None] = {}
    for ev in sorted(events, key=lambda e: e.time_s):
        names.setdefault(ev.instance, None)
    return tuple(names)
