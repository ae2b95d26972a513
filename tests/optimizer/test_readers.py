"""Every trace format the optimizer reads: fields, key derivation, sessions and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvsim.cache.keys import block_keys, chained_keys
from kvsim.cache.optimizer import load_trace, replay
from kvsim.core import UserInputError
from kvsim.workloads.bailian import iter_bailian, session_roots
from kvsim.workloads.hisim import iter_hisim_collection
from kvsim.workloads.optimizer_schema import iter_optimizer_schema
from kvsim.workloads.publisher_log import iter_publisher_events, publisher_accesses
from tests.conftest import shared_path
from tests.optimizer.helpers import write_jsonl


def bailian(chat: int, parent: int, t: float, length: int, ids: list[int]) -> dict[str, object]:
    return {
        "chat_id": chat,
        "parent_chat_id": parent,
        "timestamp": t,
        "input_length": length,
        "output_length": 10,
        "type": "text",
        "turn": 1,
        "hash_ids": ids,
    }


# --- mooncake -------------------------------------------------------------------------------------------


def test_mooncake(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 3000, "input_length": 600, "output_length": 5, "hash_ids": [0, 2]},
        ],
    )
    tr = load_trace(path, "mooncake")
    assert (tr.block_size, tr.times, tr.lengths) == (512, [0.0, 3.0], [1000, 600])
    assert [[tr.keys[b] for b in rb] for rb in tr.reads] == [[0, 1], [0, 2]]
    res = replay(tr, "lru", math.inf)
    # The second request hits block 0 only: min(512, 600) tokens.
    assert (res.hit_blocks, res.hit_tokens, res.read_tokens) == (1, 512, 1600)


def test_mooncake_published_trace_reads() -> None:
    tr = load_trace(shared_path("data", "traces", "mooncake", "synthetic_trace.jsonl"), "mooncake")
    assert (tr.n_requests, sum(map(len, tr.reads)), tr.n_ids) == (3993, 121877, 43924)


# --- qwen_bailian -----------------------------------------------------------------------------------------


def test_bailian_chains_ids_and_cuts_the_partial_block(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "b.jsonl",
        [
            bailian(1, -1, 0.5, 40, [7, 8, 9]),  # 40 tokens = 2 full blocks of 16: id 9 is dropped
            bailian(2, 1, 1.25, 48, [7, 8, 5]),
            bailian(3, -1, 2.0, 32, [8, 7]),  # same ids, other order: a different prefix
        ],
    )
    accesses = list(iter_bailian(path))
    assert [a.read_keys for a in accesses] == [
        chained_keys([7, 8]),
        chained_keys([7, 8, 5]),
        chained_keys([8, 7]),
    ]
    assert accesses[0].read_keys is accesses[0].write_keys
    assert [a.session for a in accesses] == [(1, -1), (2, 1), (3, -1)]
    assert [a.timestamp_s for a in accesses] == [0.5, 1.25, 2.0]
    assert session_roots(accesses) == {1: 1, 2: 1, 3: 3}
    res = replay(load_trace(path, "qwen_bailian"), "lru", math.inf)
    assert (res.hit_blocks, res.read_blocks, res.hit_tokens, res.read_tokens) == (2, 7, 32, 120)


def test_bailian_keeps_partial_blocks_when_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [bailian(1, -1, 0.0, 40, [7, 8, 9])])
    (access,) = iter_bailian(path, full_blocks_only=False)
    assert access.read_keys == chained_keys([7, 8, 9])


# --- hisim_collection -------------------------------------------------------------------------------------


def test_hisim_collection_hashes_token_ids(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "h.jsonl",
        [
            {
                "rid": "a",
                "timestamp": 0.0,
                "input_length": 5,
                "output_length": 2,
                "input_ids": [1, 2, 3, 4, 5],
            },
            {
                "rid": "b",
                "created_time": 1.37,
                "input_length": 4,
                "output_length": 1,
                "input_ids": [1, 2, 9, 9],
            },
        ],
    )
    accesses = list(iter_hisim_collection(path, block_size=2))
    assert [a.read_keys for a in accesses] == [block_keys([1, 2, 3, 4, 5], 2), block_keys([1, 2, 9, 9], 2)]
    assert [a.input_length for a in accesses] == [5, 4]
    res = replay(load_trace(path, "hisim_collection", 2), "lru", math.inf)
    assert (res.hit_blocks, res.hit_tokens) == (1, 2)


# --- optimizer_schema -------------------------------------------------------------------------------------


def test_optimizer_schema_kinds(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            # dialog turn: read keys, write total_keys
            {
                "instance_id": "i0",
                "trace_id": "t0",
                "timestamp_us": 1_000_000,
                "tokens": [],
                "keys": [1, 2],
                "input_len": 32,
                "output_len": 16,
                "total_keys": [1, 2, 3],
            },
            # get: read only, with a block mask; tokens size the read
            {
                "instance_id": "i0",
                "trace_id": "t1",
                "timestamp_us": 2_000_000,
                "tokens": list(range(40)),
                "keys": [1, 2, 3],
                "query_type": "prefix_match",
                "block_mask": 1,
            },
            # write: keys derived from tokens (block size 16)
            {
                "instance_id": "i1",
                "trace_id": "t2",
                "timestamp_us": 3_000_000,
                "tokens": list(range(32)),
                "keys": [],
            },
            # explicit type, non-prefix read: dropped with a note
            {
                "type": "get",
                "instance_id": "i0",
                "trace_id": "t3",
                "timestamp_us": 4_000_000,
                "keys": [1],
                "query_type": "batch_get",
                "block_mask": [],
            },
        ],
    )
    accesses = list(iter_optimizer_schema(path))
    assert [(list(a.read_keys), list(a.write_keys)) for a in accesses] == [
        ([1, 2], [1, 2, 3]),
        ([1, 2, 3], []),
        ([], block_keys(list(range(32)), 16)),
        ([1], []),
    ]
    assert [a.input_length for a in accesses] == [32, 40, 0, 16]
    assert accesses[1].mask == 1
    tr = load_trace(path, "optimizer_schema")
    assert tr.instances == ("i0", "i1") and tr.read_only and tr.n_requests == 3
    assert tr.notes == ["1 read(s) with a query type other than prefix_match were not replayed"]
    res = replay(tr, "lru", math.inf, timeline=True)
    assert (res.hit_blocks, res.read_blocks, res.requests) == (3, 5, 2)
    assert res.timeline is not None
    assert (res.timeline.internal_read, res.timeline.internal_hit) == ([0, 1], [0, 1])


# --- publisher_log (conversion; the logged mode is in test_logged.py) --------------------------------------


def test_publisher_log_converts_to_reads_and_writes(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.log",
        [
            {
                "type": "GetCacheLocation",
                "source": "i0",
                "trigger_time_us": 1_000_000,
                "keys": [10, 11],
                "query_type": "prefix_match",
                "block_mask": 0,
            },
            {
                "type": "StartWriteCache",
                "source": "i0",
                "trigger_time_us": 2_000_000,
                "write_session_id": "s1",
                "keys": [10, 11, 12],
                "block_mask": 0,
                "write_timeout_seconds": 30,
            },
            {
                "type": "FinishWriteCache",
                "source": "i0",
                "trigger_time_us": 3_000_000,
                "write_session_id": "s1",
                "success_block": [True, True, False],
            },
            {
                "type": "StartWriteCache",
                "source": "i0",
                "trigger_time_us": 4_000_000,
                "write_session_id": "s2",
                "keys": [20],
                "block_mask": 0,
                "write_timeout_seconds": 30,
            },
        ],
    )
    accesses, notes = publisher_accesses(iter_publisher_events(path))
    assert [(a.timestamp_s, list(a.read_keys), list(a.write_keys)) for a in accesses] == [
        (1.0, [10, 11], []),
        (3.0, [], [10, 11]),  # 12 failed: not written
        (4.1, [], [20]),  # never finished: written 100 ms after its start, as KVCM's converter does
    ]
    assert notes == ["1 write session(s) never finished; written 100 ms after they started"]


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "line", "message"),
    [
        (
            "qwen_bailian",
            {"timestamp": 1.0, "input_length": 16, "output_length": 1},
            "missing field(s) hash_ids",
        ),
        (
            "qwen_bailian",
            {"timestamp": "x", "input_length": 16, "output_length": 1, "hash_ids": []},
            "timestamp",
        ),
        ("hisim_collection", {"timestamp": 1.0, "input_ids": []}, "input_ids must be a non-empty list"),
        ("optimizer_schema", {"instance_id": "i", "keys": [1]}, "missing field(s) timestamp_us"),
        ("optimizer_schema", {"instance_id": "i", "timestamp_us": 1, "keys": [1.5]}, "keys must be a list"),
        (
            "publisher_log",
            {"type": "FinishWriteCache", "source": "i", "trigger_time_us": 1, "write_session_id": "s"},
            "missing field(s) success_block",
        ),
        ("mooncake", {"timestamp": 0, "input_length": 5, "output_length": 1}, "missing field(s) hash_ids"),
    ],
)
def test_a_bad_line_names_file_and_line(
    tmp_path: Path, fmt: str, line: dict[str, object], message: str
) -> None:
    good = {
        "qwen_bailian": bailian(1, -1, 0.0, 16, [1]),
        "hisim_collection": {"timestamp": 0.0, "input_ids": [1, 2]},
        "optimizer_schema": {"instance_id": "i", "timestamp_us": 0, "keys": [1]},
        "publisher_log": {"type": "GetCacheLocation", "source": "i", "trigger_time_us": 0, "keys": [1]},
        "mooncake": {"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]},
    }[fmt]
    path = write_jsonl(tmp_path / "t.jsonl", [good, "", line])
    with pytest.raises(UserInputError) as err:
        load_trace(path, fmt)
    assert str(err.value).startswith(f"{path}, line 3: ")
    assert message in str(err.value)


def test_not_json_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [bailian(1, -1, 0.0, 16, [1]), "{oops"])
    with pytest.raises(UserInputError, match=r", line 2: not valid JSON"):
        load_trace(path, "qwen_bailian")


def test_unknown_format_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        UserInputError,
        match="unknown trace format 'csv'; choose one of: mooncake, qwen_bailian, publisher_log, "
        "optimizer_schema, hisim_collection",
    ):
        load_trace(tmp_path / "x", "csv")


def test_no_usable_line(tmp_path: Path) -> None:
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="holds no usable access"):
        load_trace(empty, "qwen_bailian")
    with pytest.raises(UserInputError, match="not found"):
        load_trace(tmp_path / "missing.jsonl", "hisim_collection")


def test_publisher_log_skips_a_logger_prefix(tmp_path: Path) -> None:
    record = {"type": "GetCacheLocation", "source": "i0", "trigger_time_us": 5, "keys": [1]}
    path = tmp_path / "p.log"
    path.write_text("2026-01-01 00:00:00.000 INFO " + json.dumps(record) + "\n", encoding="utf-8")
    (event,) = iter_publisher_events(path)
    assert (event.kind, event.instance, event.keys, event.time_s) == ("GetCacheLocation", "i0", [1], 5e-6)
