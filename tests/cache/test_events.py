"""The event log: every call and reclaim recorded with the reference's publisher fields, buffered and
flushed to an injected sink, and readable by kvsim's ``publisher_log`` reader and logged replay."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    GetCacheLocationRequest,
    InstanceGroupQuota,
    QueryType,
    StartWriteCacheRequest,
    TriggerStrategy,
    block_keys,
)
from kvsim.cache.events import OVERFLOW, EventLog, JsonlFileSink, MemorySink, mask_json
from kvsim.cache.optimizer.logged import replay_logged
from kvsim.cache.reclaim import ReclaimerConfig
from kvsim.core import ManualClock
from kvsim.workloads.publisher_log import iter_publisher_events, publisher_accesses

from .conftest import T0, finish, make_manager, register, start

TOKENS = [11, 12, 13, 14, 15, 16, 17]  # three blocks of 2 and a partial one
KEYS = block_keys(TOKENS, 2)


def logged_manager(clock: ManualClock, sink: MemorySink | JsonlFileSink, **kwargs: Any) -> CacheManager:
    """A manager with an event log, a small group quota (4 blocks of 1024 B, level 50 %, no delete delay)
    and instance ``i1`` with block size 2."""
    mgr = make_manager(clock, events=EventLog(sink), reclaimer=ReclaimerConfig(interval_s=0.0), **kwargs)
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    rs = dataclasses.replace(
        group.cache_config.reclaim_strategy,
        trigger_strategy=TriggerStrategy(used_percentage=0.5),
        delay_before_delete_ms=0,
    )
    mgr.update_instance_group(
        dataclasses.replace(
            group,
            version=group.version + 1,
            quota=InstanceGroupQuota(4 * 1024),
            cache_config=dataclasses.replace(group.cache_config, reclaim_strategy=rs),
        ),
        group.version,
    )
    register(mgr, block_size=2)
    return mgr


def traffic(mgr: CacheManager, clock: ManualClock) -> list[int]:
    """Writes, reads of each query type, a failed call and a reclaim; returns each read's hit count."""
    hits = []
    res = mgr.start_write_cache(
        StartWriteCacheRequest(trace_id="w1", instance_id="i1", token_ids=TOKENS, write_timeout_seconds=30)
    )
    clock.advance(0.5)
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, True, False)))
    clock.advance(0.5)
    get = mgr.get_cache_location(
        GetCacheLocationRequest(
            trace_id="r1", instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, token_ids=TOKENS
        )
    )
    hits.append(len(get.locations))
    mgr.get_cache_location(
        GetCacheLocationRequest(
            instance_id="i1",
            query_type=QueryType.QT_BATCH_GET,
            block_keys=KEYS,
            block_mask=BlockMask(offset=1),
        )
    )
    mgr.get_cache_location(
        GetCacheLocationRequest(
            instance_id="i1",
            query_type=QueryType.QT_REVERSE_ROLL_SW_MATCH,
            block_keys=KEYS,
            sw_size=2,
            location_spec_names=("tp0",),
        )
    )
    with pytest.raises(CacheError):
        start(mgr, [1], instance_id="nope")  # failed calls are not logged, as the reference
    mgr.poll()  # 2 of 4 blocks: exactly at the 50 % level, so one (the older, key 0) is reclaimed
    clock.advance(1)
    get = mgr.get_cache_location(
        GetCacheLocationRequest(instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=KEYS)
    )
    hits.append(len(get.locations))
    mgr.poll()
    return hits


def test_every_call_and_reclaim_is_recorded_with_the_reference_fields(clock: ManualClock) -> None:
    sink = MemorySink()
    mgr = logged_manager(clock, sink)
    traffic(mgr, clock)
    records = sink.records
    ids = [r.pop("id") for r in records]
    assert all(re.fullmatch(r"[a-z0-9]{32}", i) for i in ids) and len(set(ids)) == len(ids)
    session = records[0]["write_session_id"]
    reclaimed = records[5]["location_ids"]
    common = {"source": "i1", "component": "cache_manager"}
    t = round(T0 * 1e6)
    assert records == [
        {
            **common,
            "type": "StartWriteCache",
            "trigger_time_us": t,
            "trace_id": "w1",
            "write_session_id": session,
            "keys": KEYS,
            "tokens": TOKENS,
            "block_mask": 0,
            "location_spec_group_names": [],
            "write_timeout_seconds": 30,
        },
        {
            **common,
            "type": "FinishWriteCache",
            "trigger_time_us": t + 500_000,
            "trace_id": "",
            "write_session_id": session,
            "success_block": [True, True, False],
        },
        {
            **common,
            "type": "GetCacheLocation",
            "trigger_time_us": t + 1_000_000,
            "trace_id": "r1",
            "query_type": "prefix_match",
            "keys": KEYS,
            "tokens": TOKENS,
            "block_mask": [],
            "sw_size": 0,
            "location_spec_names": [],
        },
        {
            **common,
            "type": "GetCacheLocation",
            "trigger_time_us": t + 1_000_000,
            "trace_id": "",
            "query_type": "batch_get",
            "keys": KEYS,
            "tokens": [],
            "block_mask": 1,
            "sw_size": 0,
            "location_spec_names": [],
        },
        {
            **common,
            "type": "GetCacheLocation",
            "trigger_time_us": t + 1_000_000,
            "trace_id": "",
            "query_type": "reverse_roll_sw_match",
            "keys": KEYS,
            "tokens": [],
            "block_mask": [],
            "sw_size": 2,
            "location_spec_names": ["tp0"],
        },
        {
            "source": "i1",
            "component": "cache_reclaimer",
            "type": "CacheReclaimSubmit",
            "trigger_time_us": t + 1_000_000,
            "block_keys": [KEYS[0]],
            "location_ids": reclaimed,
            "delay_us": 0,
        },
        {
            **common,
            "type": "GetCacheLocation",
            "trigger_time_us": t + 2_000_000,
            "trace_id": "",
            "query_type": "prefix_match",
            "keys": KEYS,
            "tokens": [],
            "block_mask": [],
            "sw_size": 0,
            "location_spec_names": [],
        },
    ]
    assert [len(ids) for ids in reclaimed] == [1] and re.fullmatch(r"[a-z0-9]{8}", reclaimed[0][0])


def test_the_jsonl_log_replays_as_the_service_answered(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "logs" / "event_publisher.log"
    mgr = logged_manager(clock, JsonlFileSink(path))
    hits = traffic(mgr, clock)
    mgr.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "StartWriteCache",
        "FinishWriteCache",
        "GetCacheLocation",
        "GetCacheLocation",
        "GetCacheLocation",
        "CacheReclaimSubmit",
        "GetCacheLocation",
    ]
    events = list(iter_publisher_events(path, block_size=2))
    assert [e.keys for e in events if e.kind == "CacheReclaimSubmit"] == [[KEYS[0]]]
    accesses, notes = publisher_accesses(events, block_size=2)
    assert (len(accesses), notes) == (5, [])
    result, stats = replay_logged(events, block_size=2)
    assert hits == [2, 0]  # the two prefix reads: 2 blocks, then 0 (the reclaimed key 0 breaks the prefix)
    assert (result.hit_blocks, stats.written_blocks, stats.failed_blocks, stats.reclaimed_blocks) == (
        2,
        2,
        1,
        1,
    )
    assert stats.skipped_reads == 2  # batch_get and the sliding window are not replayed


def test_buffer_is_flushed_by_poll_close_and_when_full(clock: ManualClock) -> None:
    sink = MemorySink()
    log = EventLog(sink, buffer_size=3)
    mgr = make_manager(clock, events=log)
    register(mgr)
    start(mgr, [1])
    assert (log.pending(), len(sink.records)) == (1, 0)
    mgr.poll()
    assert (log.pending(), len(sink.records)) == (0, 1)
    for k in (2, 3, 4):
        start(mgr, [k])
    assert (log.pending(), len(sink.records)) == (0, 4)  # the third buffered record forced a flush
    start(mgr, [5])
    mgr.close()
    assert (log.pending(), len(sink.records), log.published) == (0, 5, 5)
    with pytest.raises(ValueError, match="buffer_size: must be >= 1, got 0"):
        EventLog(sink, buffer_size=0)


def test_a_failing_sink_keeps_the_records_for_the_next_poll(clock: ManualClock) -> None:
    class FullDisk(MemorySink):
        full = True

        def write(self, records: object) -> None:
            if self.full:
                raise OSError(28, "No space left on device")
            super().write(records)  # type: ignore[arg-type]

    sink = FullDisk()
    mgr = make_manager(clock, events=EventLog(sink))
    register(mgr)
    start(mgr, [1])
    mgr.poll()
    assert mgr.events is not None and mgr.events.pending() == 1
    assert mgr.metrics().value("event_publisher.flush_error_count") == 1
    sink.full = False
    mgr.poll()
    assert [r["type"] for r in sink.records] == ["StartWriteCache"]
    # A full buffer whose flush fails never fails the call being logged; past OVERFLOW buffers the
    # oldest records are dropped (the reference drops when its queue is full).
    sink.full = True
    log = EventLog(sink, buffer_size=1)
    mgr = make_manager(clock, events=log)
    register(mgr)
    for k in range(OVERFLOW + 2):
        start(mgr, [k])
    assert (log.pending(), log.dropped, log.published) == (OVERFLOW, 2, OVERFLOW + 2)


def test_mask_json() -> None:
    assert mask_json(None) == []
    assert mask_json(BlockMask(offset=3)) == 3
    assert mask_json(BlockMask(bool_masks=(True, False))) == [True, False]
