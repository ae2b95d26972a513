"""Clocks, RNG streams, id counters and unit parsing."""

from __future__ import annotations

import pytest

from kvsim.core import IdCounter, ManualClock, SimClock, make_rng, spawn_rng
from kvsim.core.errors import ConfigError
from kvsim.core.timer import FixedTimer
from kvsim.core.units import parse_bandwidth, parse_bytes, parse_flops, parse_time


class _Loop:
    now = 12.5


def test_sim_clock_reads_now() -> None:
    assert SimClock(_Loop()).now() == 12.5


def test_manual_clock_never_goes_back() -> None:
    clock = ManualClock(1.0)
    assert clock.advance(2.0) == 3.0
    with pytest.raises(ValueError, match="before the current time"):
        clock.set(2.0)


def test_rng_is_reproducible_and_streams_are_independent() -> None:
    assert make_rng(7).integers(0, 1000, 3).tolist() == make_rng(7).integers(0, 1000, 3).tolist()
    a = spawn_rng(7, "arrivals").random()
    b = spawn_rng(7, "lengths").random()
    assert a != b
    assert spawn_rng(7, "arrivals").random() == a


def test_id_counter_is_per_instance() -> None:
    first, second = IdCounter(), IdCounter()
    assert [first.next(), first.next(), second.next()] == [0, 1, 0]
    assert first.peek() == 2


def test_fixed_timer_steps() -> None:
    timer = FixedTimer(0.5)
    assert [timer.monotonic(), timer.monotonic()] == [0.0, 0.5]


def test_units() -> None:
    assert parse_bytes("96 GiB") == 96 * 1024**3
    assert parse_bytes("60 MB") == 60e6
    assert parse_bandwidth("4.0 TB/s") == 4.0e12
    assert parse_flops("148 TFLOPS") == 148e12
    assert parse_time("3 us") == pytest.approx(3e-6)
    with pytest.raises(ConfigError, match="has no unit"):
        parse_bytes(96)
    with pytest.raises(ConfigError, match="not a bandwidth"):
        parse_bandwidth("4 TB")
