"""Tests of the Poisson arrival process (bench_serving's get_request timeline)."""

from __future__ import annotations

import math

import numpy as np

from kvsim.core import make_rng
from kvsim.workloads.arrivals import poisson_arrivals


def test_infinite_rate_sends_everything_at_zero() -> None:
    times = poisson_arrivals(5, math.inf, make_rng(0))
    assert times.tolist() == [0.0] * 5


def test_single_request_arrives_at_zero() -> None:
    assert poisson_arrivals(1, 3.0, make_rng(0)).tolist() == [0.0]
    assert poisson_arrivals(0, 3.0, make_rng(0)).tolist() == []


def test_poisson_rate_and_shape_on_a_large_sample() -> None:
    """Mean rate within 3 % (about 4 standard errors at n = 20,000) and exponential gaps (CV ~ 1)."""
    rate = 10.0
    times = poisson_arrivals(20_000, rate, make_rng(7))
    assert times[0] == 0.0
    assert np.all(np.diff(times) >= 0)
    gaps = np.diff(times)
    measured_rate = len(gaps) / times[-1]
    assert abs(measured_rate - rate) / rate < 0.03
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03


def test_same_generator_state_gives_same_times() -> None:
    assert np.array_equal(poisson_arrivals(50, 2.0, make_rng(3)), poisson_arrivals(50, 2.0, make_rng(3)))
