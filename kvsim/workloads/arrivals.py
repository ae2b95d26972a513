"""Arrival processes for open-loop workloads.

``bench_serving`` sends its first request immediately, then sleeps an exponential gap of mean
``1 / request_rate`` after each request (a Poisson process); with ``request_rate = inf`` it never
sleeps. :func:`poisson_arrivals` reproduces that timeline in simulated seconds.
"""

from __future__ import annotations

import math

import numpy as np


def poisson_arrivals(num_requests: int, request_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process that starts with a request at t = 0.

    Args:
        num_requests: Number of arrivals, >= 0.
        request_rate: Mean requests per second, > 0; ``inf`` puts every request at t = 0.
        rng: Generator the ``num_requests - 1`` exponential gaps are drawn from.

    Returns:
        ``float64`` array of non-decreasing arrival times in seconds; the first is 0.0.
    """
    times = np.zeros(num_requests, dtype=np.float64)
    if num_requests <= 1 or math.isinf(request_rate):
        return times
    # The first request goes out at once; each later one waits one gap after its predecessor.
    gaps = rng.exponential(1.0 / request_rate, size=num_requests - 1)
    np.cumsum(gaps, out=times[1:])
    return times
