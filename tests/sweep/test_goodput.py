"""Goodput bisection: the state machine, and a whole sweep on a stub whose answer is known."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from kvsim.sweep import load_sweep, run_sweep
from kvsim.sweep.goodput import GoodputSearch, GoodputSpec, round_rate
from tests.sweep.stubs import KNOWN_GOODPUT, TTFT_MS_PER_RATE

STUB = "tests.sweep.stubs:linear_latency"


def _search(spec: GoodputSpec, meets: Callable[[float], bool]) -> GoodputSearch:
    search = GoodputSearch(spec)
    while (rate := search.next_rate()) is not None:
        search.record(rate, meets(rate))
    return search


def test_bisection_brackets_the_known_answer_within_tolerance() -> None:
    spec = GoodputSpec(low=0.5, high=64.0, tolerance=0.01, max_steps=20)
    search = _search(spec, lambda rate: rate <= KNOWN_GOODPUT)
    assert search.status == "ok"
    assert search.lo is not None and search.hi is not None
    assert search.lo <= KNOWN_GOODPUT < search.hi
    assert search.hi <= search.lo * 1.01
    assert search.goodput == search.lo
    # low, high, then geometric midpoints: every probe is the mean of the current bracket.
    rates = [rate for rate, _ in search.probes]
    assert rates[:4] == [0.5, 64.0, round_rate(math.sqrt(0.5 * 64.0)), round_rate(math.sqrt(0.5 * 5.65685))]
    assert len(rates) == 11  # ln(128) / ln(1.01) ~ 488 = 2^8.9: 9 midpoints after the two ends


def test_bisection_stops_at_max_steps() -> None:
    search = _search(GoodputSpec(0.5, 64.0, tolerance=1e-9, max_steps=5), lambda rate: rate <= KNOWN_GOODPUT)
    assert len(search.probes) == 5
    assert search.status == "ok"
    assert [met for _, met in search.probes] == [True, False, False, True, True]
    assert search.goodput == round_rate(math.sqrt(round_rate(math.sqrt(0.5 * 5.65685)) * 5.65685))


def test_bisection_reports_none_and_capped() -> None:
    none = _search(GoodputSpec(0.5, 64.0), lambda rate: False)
    assert (none.status, none.goodput, len(none.probes)) == ("none", 0.0, 1)
    capped = _search(GoodputSpec(0.5, 64.0), lambda rate: True)
    assert (capped.status, capped.goodput, len(capped.probes)) == ("capped", 64.0, 2)
    with pytest.raises(RuntimeError):
        capped.record(1.0, True)


def test_sweep_goodput_on_a_stub_matches_the_known_answer(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    # p90 TTFT = 250 ms x rate / tp, SLO 1 s: the goodput is 4 req/s at tp 1 and 8 req/s at tp 2.
    body = (
        "sweep:\n  grid: {server.tp: [1, 2]}\n"
        "  goodput: {low: 0.5, high: 64, tolerance: 0.01, max_steps: 20}\n"
        "slo: {p90_ttft_ms: 1 s}\n"
    )
    result = run_sweep(load_sweep(sweep_file(body)), tmp_path / "out", jobs=1, plots=False, simulator=STUB)
    expected = {}
    for tp in (1, 2):
        answer = KNOWN_GOODPUT * tp
        expected[tp] = _search(GoodputSpec(0.5, 64.0, 0.01, 20), lambda rate, a=answer: rate <= a).goodput
    configs = result.configs.set_index("server.tp")
    assert configs.loc[1, "goodput_rps"] == expected[1]
    assert configs.loc[2, "goodput_rps"] == expected[2]
    assert expected[1] <= 4.0 < expected[1] * 1.01
    assert expected[2] <= 8.0 < expected[2] * 1.01
    assert list(configs["goodput_status"]) == ["ok", "ok"]
    # Every probe is a row; the row at the goodput met the SLO with the stub's TTFT.
    table = result.table
    at = table[(table["server.tp"] == 1) & (table["rate"] == expected[1])].iloc[0]
    assert bool(at["slo_met"])
    assert at["p90_ttft_ms"] == TTFT_MS_PER_RATE * expected[1]
    assert len(table) == result.simulated == 22  # 11 probes per configuration
