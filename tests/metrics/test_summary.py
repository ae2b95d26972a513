"""Tests of the bench_serving summary against a hand-computed timeline."""

from __future__ import annotations

import math

import pytest

from kvsim.metrics import LATENCY_METRICS, LATENCY_STATS, RequestRecord, summarize

from .conftest import make_record


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-9)


def test_counts_throughputs_and_cache(three_requests: list[RequestRecord]) -> None:
    s = summarize(three_requests, truncated_requests=2)
    assert s["completed"] == 3
    assert s["truncated_requests"] == 2
    assert s["total_input_tokens"] == 600
    assert s["total_output_tokens"] == 9
    # From the first send (0.0) to the last finish (0.9).
    assert s["duration"] == approx(0.9)
    assert s["request_throughput"] == approx(3 / 0.9)
    assert s["input_throughput"] == approx(600 / 0.9)
    assert s["output_throughput"] == approx(10.0)
    assert s["total_throughput"] == approx(609 / 0.9)
    assert s["concurrency"] == approx(1.4 / 0.9)  # sum of E2E (0.5 + 0.7 + 0.2) / duration
    assert s["total_cached_tokens"] == 200
    assert s["cache_hit_rate"] == approx(200 / 600)
    # Everything happens within the first one-second bucket.
    assert s["max_output_tokens_per_s"] == 9.0
    assert s["max_concurrent_requests"] == 3


def test_ttft_and_e2e(three_requests: list[RequestRecord]) -> None:
    s = summarize(three_requests)
    # TTFT 100, 300, 200 ms.
    assert s["mean_ttft_ms"] == approx(200.0)
    assert s["median_ttft_ms"] == approx(200.0)
    assert s["std_ttft_ms"] == approx(math.sqrt(20000 / 3))
    assert s["p90_ttft_ms"] == approx(280.0)
    assert s["p95_ttft_ms"] == approx(290.0)
    assert s["p99_ttft_ms"] == approx(298.0)  # linear: 200 + 0.98 * 100
    # E2E 500, 700, 200 ms.
    assert s["mean_e2e_latency_ms"] == approx(1400 / 3)
    assert s["median_e2e_latency_ms"] == approx(500.0)
    assert s["p99_e2e_latency_ms"] == approx(696.0)  # 500 + 0.98 * 200


def test_tpot_excludes_single_token_outputs(three_requests: list[RequestRecord]) -> None:
    s = summarize(three_requests)
    # r0: (0.5 - 0.1) / 4 = 100 ms; r1: (0.7 - 0.3) / 2 = 200 ms; r2 (one token) excluded.
    assert s["mean_tpot_ms"] == approx(150.0)
    assert s["median_tpot_ms"] == approx(150.0)
    assert s["std_tpot_ms"] == approx(50.0)
    assert s["p99_tpot_ms"] == approx(199.0)
    only_single = summarize([make_record(0, 0.0, [0.5]), make_record(1, 0.0, [0.7])])
    assert all(only_single[f"{stat}_tpot_ms"] == 0.0 for stat in LATENCY_STATS)
    assert only_single["mean_ttft_ms"] == approx(600.0)


def test_itl_pools_all_token_gaps(three_requests: list[RequestRecord]) -> None:
    s = summarize(three_requests)
    # Gaps: 100, 100, 100, 100 (r0) and 200, 200 (r1).
    assert s["mean_itl_ms"] == approx(800 / 6)
    assert s["median_itl_ms"] == approx(100.0)
    assert s["p90_itl_ms"] == approx(200.0)
    assert s["p95_itl_ms"] == approx(200.0)
    assert s["p99_itl_ms"] == approx(200.0)
    assert s["max_itl_ms"] == approx(200.0)


def test_records_without_token_times_add_no_itl() -> None:
    s = summarize([make_record(0, 0.0, [0.1, 0.3], with_times=False), make_record(1, 0.0, [0.1, 0.2])])
    assert s["mean_itl_ms"] == approx(100.0)
    assert s["mean_tpot_ms"] == approx(150.0)  # TPOT does not need token times


def test_start_override_changes_duration_only(three_requests: list[RequestRecord]) -> None:
    s = summarize(three_requests, start_s=-0.1)
    assert s["duration"] == approx(1.0)
    assert s["request_throughput"] == approx(3.0)
    assert s["mean_ttft_ms"] == approx(200.0)


def test_peaks_use_one_second_buckets() -> None:
    records = [
        make_record(0, 0.0, [0.5, 1.2, 1.4, 1.6]),
        make_record(1, 1.1, [1.3, 1.5, 2.5]),
        make_record(2, 3.0, [3.5]),
    ]
    s = summarize(records)
    assert s["max_output_tokens_per_s"] == 5.0  # bucket [1, 2): 1.2 1.4 1.6 1.3 1.5
    assert s["max_concurrent_requests"] == 2  # both r0 and r1 live in bucket 1


def test_empty_run_is_all_zero_and_finite() -> None:
    s = summarize([])
    assert s["completed"] == 0
    assert s["duration"] == 0.0
    assert s["request_throughput"] == 0.0
    assert all(math.isfinite(float(v)) for v in s.values())
    for metric in LATENCY_METRICS:
        assert s[f"mean_{metric}_ms"] == 0.0


def test_key_set_is_stable(three_requests: list[RequestRecord]) -> None:
    keys = set(summarize(three_requests))
    latency_keys = {f"{stat}_{metric}_ms" for metric in LATENCY_METRICS for stat in LATENCY_STATS}
    assert latency_keys <= keys
    assert keys == set(summarize([]))
    assert {"completed", "duration", "total_throughput", "cache_hit_rate", "max_itl_ms"} <= keys
