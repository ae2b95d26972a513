"""Tests of the run-directory writers and readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvsim.metrics import (
    IterationLogWriter,
    IterationRecord,
    RequestRecord,
    format_metrics,
    read_iterations,
    read_requests,
    summarize,
    write_metrics,
    write_requests,
)

from .conftest import make_record


def test_metrics_json_is_byte_identical_for_identical_input(
    tmp_path: Path, three_requests: list[RequestRecord]
) -> None:
    first = write_metrics(tmp_path / "a.json", summarize(three_requests, truncated_requests=1))
    # Rebuilt records (new objects, reversed order) must give the same bytes.
    rebuilt = [
        make_record(
            r.request_id, r.send_s, list(r.token_times), input_len=r.input_len, cached_tokens=r.cached_tokens
        )
        for r in reversed(three_requests)
        if r.token_times is not None
    ]
    second = write_metrics(tmp_path / "b.json", summarize(rebuilt, truncated_requests=1))
    assert first.read_bytes() == second.read_bytes()


def test_metrics_json_format(tmp_path: Path) -> None:
    text = format_metrics({"b": np.float64(1 / 3), "a": 2, "c": -1e-12, "d": np.int64(7)})
    assert text == '{\n  "a": 2,\n  "b": 0.333333,\n  "c": 0.0,\n  "d": 7\n}\n'
    target = write_metrics(tmp_path, {"x": 1.5})  # a directory gets metrics.json inside it
    assert target == tmp_path / "metrics.json"
    assert json.loads(target.read_text()) == {"x": 1.5}


def test_metrics_refuse_non_finite_numbers() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_metrics({"x": float("inf")})


def test_requests_jsonl_round_trip(tmp_path: Path, three_requests: list[RequestRecord]) -> None:
    path = write_requests(tmp_path, list(reversed(three_requests)), include_token_times=True)
    assert path.name == "requests.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [0, 1, 2]
    assert lines[2] == (
        '{"arrival_s":0.4,"cached_tokens":150,"finish_s":0.6,"first_token_s":0.6,"input_len":300,'
        '"output_len":1,"request_id":2,"send_s":0.4,"token_times":[0.6]}'
    )
    assert read_requests(path) == three_requests


def test_requests_jsonl_without_token_times(tmp_path: Path, three_requests: list[RequestRecord]) -> None:
    path = write_requests(tmp_path / "r.jsonl", three_requests)
    assert "token_times" not in path.read_text()
    back = read_requests(path)
    assert [r.token_times for r in back] == [None, None, None]
    assert [(r.first_token_s, r.finish_s) for r in back] == [(0.1, 0.5), (0.5, 0.9), (0.6, 0.6)]


def test_iteration_log_round_trip(tmp_path: Path) -> None:
    steps = [
        IterationRecord(0.0, "prefill", [(512, 0), (300, 212)], 25.5, 2, 3),
        IterationRecord(0.0255, "decode", [(1, 512), (1, 512)], 9.75, 2, 3, extra={"l2_load_ms": 0.125}),
        IterationRecord(0.035, "idle", [], 0.0, 0, 0),
    ]
    with IterationLogWriter(tmp_path) as log:
        for step in steps:
            log.append(step)
        log.log(0.04, "mixed", np.array([[64, 0], [1, 9]]), 12.0, num_running=2, num_waiting=0)
    assert log.count == 4
    back = read_iterations(tmp_path / "iterations.jsonl")
    assert len(back) == 4
    for original, read in zip(steps, back, strict=False):
        assert (read.time_s, read.kind, read.step_time_ms, read.num_running, read.num_waiting) == (
            original.time_s,
            original.kind,
            original.step_time_ms,
            original.num_running,
            original.num_waiting,
        )
        assert read.batch == [list(pair) for pair in original.batch]
        assert read.extra == original.extra
    assert back[3].batch == [[64, 0], [1, 9]]
    first_line = (tmp_path / "iterations.jsonl").read_text().splitlines()[0]
    assert first_line == (
        '{"batch":[[512,0],[300,212]],"kind":"prefill","num_running":2,"num_waiting":3,'
        '"step_time_ms":25.5,"time_s":0.0}'
    )


def test_iteration_log_writes_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "iterations.jsonl"
    log = IterationLogWriter(path, chunk_lines=100)
    for i in range(150):
        log.log(i * 0.01, "decode", [(1, i)], 10.0, 1, 0)
    # The first chunk of 100 lines is on disk; the other 50 wait in the buffer.
    assert len(path.read_text().splitlines()) == 100
    log.close()
    assert len(path.read_text().splitlines()) == 150
    log.close()  # closing twice is harmless


def test_iteration_log_refuses_unknown_kind(tmp_path: Path) -> None:
    with IterationLogWriter(tmp_path) as log, pytest.raises(ValueError, match="kind"):
        log.log(0.0, "warmup", [], 1.0, 0, 0)
