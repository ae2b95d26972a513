"""Tests of the request and iteration records."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.metrics import IterationRecord, RequestRecord

from .conftest import make_record


def test_derived_latencies() -> None:
    record = make_record(0, 1.0, [1.25, 1.5, 2.0])
    assert record.ttft_s == 0.25
    assert record.e2e_latency_s == 1.0
    assert record.tpot_s == 0.375  # (1.0 - 0.25) / 2
    assert make_record(1, 0.0, [0.5]).tpot_s is None


def test_time_order_is_enforced() -> None:
    with pytest.raises(ValueError, match="arrival <= send <= first_token <= finish"):
        RequestRecord(
            0, arrival_s=1.0, send_s=0.5, first_token_s=2.0, finish_s=3.0, input_len=1, output_len=1
        )
    with pytest.raises(ValueError, match="arrival <= send <= first_token <= finish"):
        RequestRecord(
            0, arrival_s=0.0, send_s=0.0, first_token_s=2.0, finish_s=1.0, input_len=1, output_len=1
        )


def test_lengths_are_checked() -> None:
    with pytest.raises(ValueError, match="output_len >= 1"):
        RequestRecord(0, 0.0, 0.0, 0.0, 0.0, input_len=5, output_len=0)
    with pytest.raises(ValueError, match="cached_tokens <= input_len"):
        RequestRecord(0, 0.0, 0.0, 0.0, 0.0, input_len=5, output_len=1, cached_tokens=6)


def test_equality_compares_token_times() -> None:
    assert make_record(0, 0.0, [0.1, 0.2]) == make_record(0, 0.0, [0.1, 0.2])
    assert make_record(0, 0.0, [0.1, 0.2]) != make_record(0, 0.0, [0.1, 0.3])
    assert make_record(0, 0.0, [0.1, 0.2]) != make_record(0, 0.0, [0.1, 0.2], with_times=False)


def test_iteration_record_kind_and_tokens() -> None:
    step = IterationRecord(1.5, "mixed", [(512, 0), (1, 700)], 30.0, num_running=2, num_waiting=4)
    assert step.num_tokens == 513
    with pytest.raises(ValueError, match="kind"):
        IterationRecord(0.0, "warmup", [], 1.0, 0, 0)  # type: ignore[arg-type]
    assert np.isclose(step.step_time_ms, 30.0)
