"""Tests of the Mooncake trace reader, on small synthetic files and on the published traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvsim.core import UserInputError
from kvsim.workloads import hash_id_tokens, read_mooncake

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces" / "mooncake"


def write_trace(path: Path, records: list[dict[str, object] | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec(timestamp: float, input_length: int, output_length: int, hash_ids: list[int]) -> dict[str, object]:
    return {
        "timestamp": timestamp,
        "input_length": input_length,
        "output_length": output_length,
        "hash_ids": hash_ids,
    }


def real_trace(name: str) -> Path:
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"Mooncake trace {path} is not available (it lives in ../shared, outside the repo)")
    return path


# --- tokens from hash ids ---------------------------------------------------------------------------


def test_equal_hash_ids_give_equal_tokens() -> None:
    a = hash_id_tokens([7, 8, 9], 1536)
    b = hash_id_tokens([7, 8, 10], 1536)
    assert np.array_equal(a[:1024], b[:1024])
    assert not np.array_equal(a[1024:], b[1024:])
    assert np.array_equal(hash_id_tokens([7, 8, 9], 1536), a)  # deterministic


def test_partial_last_block_is_a_prefix_of_the_full_block() -> None:
    full = hash_id_tokens([3, 4], 1024)
    partial = hash_id_tokens([3, 4], 600)
    assert len(partial) == 600
    assert np.array_equal(partial, full[:600])
    # The same id as a full block in another request matches the partial block too.
    assert np.array_equal(hash_id_tokens([4], 88), full[512:600])


def test_hash_tokens_are_in_vocab_and_read_only() -> None:
    tokens = hash_id_tokens(list(range(50)), 50 * 512, vocab_size=1000)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() < 1000
    assert not tokens.flags.writeable
    # Different blocks differ (a hash collision of a whole 512-token block would be astronomically rare).
    blocks = {tuple(tokens[i * 512 : (i + 1) * 512].tolist()) for i in range(50)}
    assert len(blocks) == 50


def test_hash_id_tokens_exact_values() -> None:
    """Pinned so that a change of the hash (which would change every cached result) is noticed."""
    assert hash_id_tokens([0], 4).tolist() == [134206, 86081, 89823, 17237]


# --- reading files ----------------------------------------------------------------------------------


def test_read_sorts_by_timestamp_and_scales_time(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "t.jsonl",
        [
            rec(2000, 600, 5, [1, 2]),
            "",
            rec(1000, 512, 3, [1]),
            rec(2000, 100, 2, [9]),
            rec(4500, 10, 1, [3]),
        ],
    )
    workload = read_mooncake(trace, num_prompts=None, max_context_len=10_000, mooncake_slowdown_factor=2.0)
    # Stable sort: the two records at 2000 ms keep file order; times are relative to the first.
    assert [(r.input_len, r.output_len) for r in workload] == [(512, 3), (600, 5), (100, 2), (10, 1)]
    assert [r.arrival_s for r in workload] == [0.0, 2.0, 2.0, 7.0]
    assert [r.request_id for r in workload] == [0, 1, 2, 3]
    # Requests 0 and 1 share block 1 entirely.
    assert np.array_equal(workload.requests[0].token_ids, workload.requests[1].token_ids[:512])
    assert workload.truncated_requests == 0
    assert workload.params["num_records"] == 4


def test_num_prompts_takes_the_first_records_in_file_order(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "t.jsonl",
        [rec(3000, 10, 1, [1]), rec(1000, 20, 1, [2]), rec(0, 30, 1, [3]), "not json"],
    )
    # The malformed fourth line is never read.
    workload = read_mooncake(trace, num_prompts=2, max_context_len=100)
    assert [r.input_len for r in workload] == [20, 10]
    assert [r.arrival_s for r in workload] == [0.0, 2.0]


def test_truncation_to_context_is_counted(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "t.jsonl", [rec(0, 1500, 100, [1, 2, 3]), rec(1, 900, 200, [1, 4]), rec(2, 10, 5, [5])]
    )
    workload = read_mooncake(trace, num_prompts=None, max_context_len=1024)
    assert [(r.input_len, r.output_len) for r in workload] == [(1023, 1), (900, 124), (10, 5)]
    assert workload.truncated_requests == 2
    assert np.array_equal(workload.requests[0].token_ids, hash_id_tokens([1, 2, 3], 1500)[:1023])


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1}), "missing field(s) hash_ids"),
        (json.dumps(rec(0, 0, 1, [])), "input_length must be an integer >= 1"),
        (json.dumps(rec(0, 5, 0, [1])), "output_length must be an integer >= 1"),
        (json.dumps(rec("soon", 5, 1, [1])), "timestamp must be a finite number"),  # type: ignore[arg-type]
        (json.dumps(rec(0, 5, 1, [-1])), "hash_ids must be a list of non-negative integers"),
        (json.dumps(rec(0, 600, 1, [1])), "input_length 600 needs 2 hash_ids of 512 tokens, got 1"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    trace = write_trace(tmp_path / "bad_trace.jsonl", [rec(0, 5, 1, [1]), "", bad_line])
    with pytest.raises(UserInputError) as caught:
        read_mooncake(trace, num_prompts=None, max_context_len=1000)
    text = str(caught.value)
    assert "bad_trace.jsonl, line 3: " in text
    assert message in text
    assert "\n" not in text


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "trace.jsonl"
    with pytest.raises(UserInputError, match=f"mooncake trace not found: {missing}"):
        read_mooncake(missing, num_prompts=None, max_context_len=1000)


def test_directory_and_empty_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="is not a file"):
        read_mooncake(tmp_path, num_prompts=None, max_context_len=1000)
    empty = write_trace(tmp_path / "empty.jsonl", [""])
    with pytest.raises(UserInputError, match="holds no requests"):
        read_mooncake(empty, num_prompts=None, max_context_len=1000)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", [rec(0, 5, 1, [1])])
    with pytest.raises(UserInputError, match="mooncake_slowdown_factor must be"):
        read_mooncake(trace, num_prompts=None, max_context_len=1000, mooncake_slowdown_factor=0)
    with pytest.raises(UserInputError, match="num_prompts must be >= 1, got 0"):
        read_mooncake(trace, num_prompts=0, max_context_len=1000)


# --- the published traces ---------------------------------------------------------------------------


def test_conversation_trace_shares_its_system_block() -> None:
    """Every conversation request starts with hash id 0, so all share their first 512 tokens."""
    path = real_trace("conversation_trace.jsonl")
    workload = read_mooncake(path, num_prompts=300, max_context_len=200_000)
    assert len(workload) == 300
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:300]]
    first = raw[0]
    assert (workload.requests[0].input_len, workload.requests[0].output_len) == (
        first["input_length"],
        first["output_length"],
    )
    head = workload.requests[0].token_ids[:512]
    assert all(np.array_equal(r.token_ids[:512], head) for r in workload if r.input_len >= 512)
    expected_last = (max(r["timestamp"] for r in raw) - raw[0]["timestamp"]) / 1000.0
    assert workload.requests[-1].arrival_s == pytest.approx(expected_last)


def test_synthetic_trace_truncation_count_matches_the_raw_lengths() -> None:
    path = real_trace("synthetic_trace.jsonl")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:800]]
    limit = 32_768
    expected = sum(1 for r in raw if r["input_length"] + r["output_length"] > limit)
    workload = read_mooncake(path, num_prompts=800, max_context_len=limit)
    assert expected > 0
    assert workload.truncated_requests == expected
    assert all(r.input_len + r.output_len <= limit for r in workload)
