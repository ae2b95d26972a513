"""A cache event log replayed as it happened (``logged``) and as a capacity replay.

The hand-written log below follows KVCM's publisher fields. The hit counts the service would have
returned are derived in the comments from KVCM's rules (WRITING locations never match; a finish makes
successful new keys SERVING and deletes failed ones; an open session past its timeout is deleted; a
reclaim submit takes keys out of service; prefix matching drops masked keys first).

kvsim's own ``kvsim serve`` event log (issue 6) does not exist yet; when it does, a test should replay
a logged run and compare with the hit counts the service reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvsim.cache.optimizer import load_trace, replay, replay_logged
from kvsim.cli.main import main
from kvsim.workloads.publisher_log import iter_publisher_events

US = 1_000_000


def ev(kind: str, t: float, **fields: object) -> dict[str, object]:
    return {
        "id": f"{kind}-{t}",
        "source": "i0",
        "component": "cache_manager",
        "type": kind,
        "trigger_time_us": int(t * US),
        **fields,
    }


LOG = [
    ev("GetCacheLocation", 1, query_type="prefix_match", keys=[10, 11, 12], block_mask=0),  # 0 hits
    ev(
        "StartWriteCache", 2, write_session_id="s1", keys=[10, 11, 12], block_mask=0, write_timeout_seconds=30
    ),
    ev("GetCacheLocation", 3, query_type="prefix_match", keys=[10, 11], block_mask=0),  # WRITING: 0 hits
    ev("FinishWriteCache", 4, write_session_id="s1", success_block=[True, True, False]),  # 12 failed
    ev("GetCacheLocation", 5, query_type="prefix_match", keys=[10, 11, 12], block_mask=0),  # 2 hits
    # 10, 11 already cached (response mask offset 2): new keys 12, 13, which expire at t=11.
    ev(
        "StartWriteCache",
        6,
        write_session_id="s2",
        keys=[10, 11, 12, 13],
        block_mask=2,
        write_timeout_seconds=5,
    ),
    ev("GetCacheLocation", 12, query_type="prefix_match", keys=[10, 11, 12, 13], block_mask=0),  # 2 hits
    ev("CacheReclaimSubmit", 13, block_keys=[10], location_ids=[["loc-a"]], delay_us=1000),
    ev("GetCacheLocation", 14, query_type="prefix_match", keys=[10, 11], block_mask=0),  # 10 gone: 0 hits
    ev("GetCacheLocation", 15, query_type="prefix_match", keys=[10, 11], block_mask=1),  # 10 masked: 1 hit
    ev("GetCacheLocation", 16, query_type="batch_get", keys=[11], block_mask=0),  # skipped
    ev("Heartbeat", 17),  # another event type: ignored
    # A finish for a session that already expired.
    ev("FinishWriteCache", 18, write_session_id="s2", success_block=2),
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "event_publisher.log"
    path.write_text("\n".join(json.dumps(e) for e in LOG) + "\n", encoding="utf-8")
    return path


def test_logged_reproduces_the_service_hits(log: Path) -> None:
    res, stats = replay_logged(iter_publisher_events(log, 4), 4, timeline=True)
    assert res.timeline is not None
    assert res.timeline.hit_blocks == [0, 0, 2, 2, 0, 1]
    assert res.timeline.read_blocks == [3, 2, 3, 4, 2, 1]
    assert (res.requests, res.read_blocks, res.hit_blocks) == (6, 15, 5)
    assert (stats.written_blocks, stats.failed_blocks, stats.expired_blocks, stats.reclaimed_blocks) == (
        2,
        1,
        2,
        1,
    )
    assert (stats.skipped_reads, stats.unknown_sessions) == (1, 1)
    assert stats.cached_blocks == {"i0": 1}
    assert res.evicted_blocks == 4
    # Masked tokens are not part of the read: the last read covers 2 x 4 - 1 x 4 = 4 tokens.
    assert res.timeline.read_tokens[-1] == 4 and res.timeline.hit_tokens[-1] == 4


def test_logged_without_a_response_mask_infers_new_keys(tmp_path: Path) -> None:
    events = [
        ev("StartWriteCache", 1, write_session_id="a", keys=[1, 2]),
        ev("FinishWriteCache", 2, write_session_id="a", success_block=2),
        # No mask logged: 1 and 2 are serving, so only 3 is new; success offset 1 covers it.
        ev("StartWriteCache", 3, write_session_id="b", keys=[1, 2, 3]),
        ev("FinishWriteCache", 4, write_session_id="b", success_block=1),
        ev("GetCacheLocation", 5, keys=[1, 2, 3]),
    ]
    path = tmp_path / "p.log"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
    res, stats = replay_logged(iter_publisher_events(path), 16)
    assert (res.hit_blocks, stats.written_blocks, stats.failed_blocks) == (3, 3, 0)


def test_capacity_replay_of_the_same_log(log: Path) -> None:
    tr = load_trace(log, "publisher_log", 4)
    # Reads: t1 [10 11 12], t3 [10 11], t5 [10 11 12], t12 [10..13], t14 [10 11], t15 [10 11] (mask 1).
    # Writes: s1 at t4 (10 11; 12 failed). s2's finish at t18 comes after its timeout, but the converter
    # pairs start and finish by session as KVCM's does: 10..13 written at t18, after every read.
    res = replay(tr, "lru", math.inf, timeline=True)
    assert res.timeline is not None
    assert res.timeline.hit_blocks == [0, 0, 2, 2, 2, 2]
    assert res.timeline.internal_hit == [0, 0, 0, 0, 0, 1]


def test_cli_logged_mode(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "optimize",
            "--trace",
            str(log),
            "--trace-format",
            "publisher_log",
            "--block-size",
            "4",
            "--policy",
            "logged,lru",
            "--capacity-blocks",
            "1,inf",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    results = json.loads(out)["results"]
    assert [(r["policy"], r["capacity_blocks"], r["hit_blocks"]) for r in results] == [
        ("logged", "inf", 5),
        ("lru", 1, 0),
        ("lru", "inf", 8),
    ]
    assert results[0]["logged"] == {
        "written_blocks": 2,
        "failed_blocks": 1,
        "expired_blocks": 2,
        "reclaimed_blocks": 1,
    }
    assert "1 read(s) with a query type other than prefix_match" in err


def test_cli_logged_needs_a_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(
        ["optimize", "--trace", str(tmp_path / "x"), "--trace-format", "mooncake", "--policy", "logged"]
    )
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "--policy logged replays a publisher_log" in err
