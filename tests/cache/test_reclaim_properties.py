"""Properties of reclaiming and deletion over random operation sequences (hypothesis):

* a location the reclaimer submits was SERVING just before (WRITING and DELETING ones are never taken);
* usage counters are never negative and always equal a recount from the store, and the backend's bytes
  in use are never negative;
* every location queued for deletion is gone after the first ``poll`` at or past its due time;
* once the sessions have expired and the reclaimer is done, no DELETING (or WRITING) location is left,
  nothing is queued, and the storage in use is exactly that of the SERVING locations.
"""

from __future__ import annotations

import contextlib
import dataclasses

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    InstanceGroupQuota,
    LocationStatus,
    QuotaConfig,
    ReclaimPolicy,
    StorageType,
    TriggerStrategy,
)
from kvsim.cache.events import EventLog, MemorySink
from kvsim.cache.meta import InstanceIndex
from kvsim.cache.reclaim import ReclaimerConfig
from kvsim.core import ManualClock

from .conftest import T0, finish, make_manager, prefix, register, start

keys = st.lists(st.integers(0, 11), min_size=1, max_size=4)
op = st.one_of(
    st.tuples(st.just("write"), keys),
    st.tuples(st.just("start"), keys, st.integers(0, 5)),
    st.tuples(st.just("finish"), st.integers(0, 8), st.integers(0, 15)),
    st.tuples(st.just("read"), keys),
    st.tuples(st.just("advance"), st.sampled_from([0.05, 0.1, 0.3, 1.0, 3.0])),
    st.tuples(st.just("poll")),
)
setups = st.tuples(
    st.sampled_from(list(ReclaimPolicy)),
    st.sampled_from([0.3, 0.6, 0.9]),  # water level
    st.sampled_from([0, 100, 700]),  # delay_before_delete_ms
    st.sampled_from([0, 2]),  # ttl_seconds
)


def build(policy: ReclaimPolicy, level: float, delay_ms: int, ttl: int, sink: MemorySink) -> CacheManager:
    mgr = make_manager(
        ManualClock(T0), events=EventLog(sink), reclaimer=ReclaimerConfig(sampling_size=6, batch_size=3)
    )
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    rs = dataclasses.replace(
        group.cache_config.reclaim_strategy,
        reclaim_policy=policy,
        trigger_strategy=TriggerStrategy(used_percentage=level),
        delay_before_delete_ms=delay_ms,
        ttl_seconds=ttl,
    )
    mgr.update_instance_group(
        dataclasses.replace(
            group,
            version=group.version + 1,
            quota=InstanceGroupQuota(8 * 32, (QuotaConfig(StorageType.ST_NFS, 6 * 32),)),
            cache_config=dataclasses.replace(group.cache_config, reclaim_strategy=rs),
        ),
        group.version,
    )
    register(mgr, specs=[("tp0", 16), ("tp1", 16)])
    return mgr


def statuses(mgr: CacheManager) -> dict[tuple[int, str], LocationStatus]:
    out: dict[tuple[int, str], LocationStatus] = {}
    for key, rec in zip(range(12), mgr.store.meta_get("i1", list(range(12))), strict=True):
        for loc in rec.locations if rec is not None else ():
            out[(key, loc.location_id)] = loc.status
    return out


def poll_and_check(mgr: CacheManager, sink: MemorySink) -> None:
    """Poll, then check that the reclaimer took only locations that were SERVING, and that every
    location due for deletion by now is gone."""
    now = mgr.clock.now()
    before = statuses(mgr)
    due = [
        (key, i) for _, key, entry in mgr._deletions.items() if entry.due <= now for i in entry.location_ids
    ]
    seen = len(sink.records)
    mgr.poll()
    for record in sink.records[seen:]:
        if record["type"] == "CacheReclaimSubmit":
            for key, ids in zip(record["block_keys"], record["location_ids"], strict=True):
                assert all(before[(key, i)] == LocationStatus.CLS_SERVING for i in ids)
    after = statuses(mgr)
    assert [loc for loc in due if loc in after] == []


def check_usage(mgr: CacheManager) -> None:
    index = mgr._index("i1")
    assert index.key_count >= 0 and all(v >= 0 for v in index.usage_bytes.values())
    fresh = InstanceIndex(mgr.store, "i1")
    assert index.key_count == fresh.key_count
    assert {t: b for t, b in index.usage_bytes.items() if b} == {
        t: b for t, b in fresh.usage_bytes.items() if b
    }
    assert mgr.backend("nfs_01").used_bytes >= 0  # type: ignore[attr-defined]


@settings(max_examples=120, deadline=None)
@given(setup=setups, program=st.lists(op, max_size=40))
def test_reclaim_and_deletion_properties(
    setup: tuple[ReclaimPolicy, float, int, int], program: list[tuple]
) -> None:
    sink = MemorySink()
    mgr = build(*setup, sink)
    clock = mgr.clock
    assert isinstance(clock, ManualClock)
    sessions: list[tuple[str, int]] = []
    for step in program:
        kind = step[0]
        if kind == "write":
            with contextlib.suppress(CacheError):  # over a quota: refused, nothing applied
                res = start(mgr, step[1])
                finish(mgr, res.write_session_id, BlockMask(offset=len(res.locations)))
        elif kind == "start":
            try:
                res = start(mgr, step[1], timeout=step[2])
            except CacheError:
                continue  # over a quota: refused, nothing applied
            sessions.append((res.write_session_id, len(res.locations)))
        elif kind == "finish" and sessions:
            sid, n = sessions[step[1] % len(sessions)]
            bools = tuple(bool(step[2] >> i & 1) for i in range(n))
            with contextlib.suppress(CacheError):  # finished or expired already
                finish(mgr, sid, BlockMask(bool_masks=bools))
        elif kind == "read":
            prefix(mgr, step[1])
        elif kind == "advance":
            clock.advance(step[1])
        elif kind == "poll":
            poll_and_check(mgr, sink)
        check_usage(mgr)
    # Past every session deadline (10 s at most: an empty session); then poll until the reclaimer has
    # nothing left to do (each round may submit new victims, each with its own delay).
    clock.advance(10.5)
    for _ in range(30):
        poll_and_check(mgr, sink)
        if mgr.num_pending_deletions() == 0:
            break
        clock.advance(1)
    reclaims = sum(r["type"] == "CacheReclaimSubmit" for r in sink.records)
    event(f"reclaim submissions: {min(reclaims, 3)}{'+' if reclaims >= 3 else ''}")
    check_usage(mgr)
    left = statuses(mgr)
    assert set(left.values()) <= {LocationStatus.CLS_SERVING}
    assert mgr.num_pending_deletions() == 0 and mgr.num_open_sessions() == 0
    assert mgr.backend("nfs_01").used_bytes == 32 * len(left)  # type: ignore[attr-defined]
