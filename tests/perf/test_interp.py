"""Log-space table interpolation: exact at grid points, log-log between them, nearest-grid outside."""

from __future__ import annotations

import math

import pytest

from kvsim.perf.interp import GroupedTable, LogCurve, leave_one_out

# A GEMM-like curve: time over m with work m (values picked to be awkward in binary).
GEMM = [
    (1.0, 1.0, 1.0, 0.0312),
    (1.0, 8.0, 8.0, 0.029472),
    (1.0, 64.0, 64.0, 0.034016),
    (1.0, 512.0, 512.0, 0.051648),
]


def test_grid_points_return_the_table_value_exactly() -> None:
    table = GroupedTable(GEMM)
    for g, x, w, t in GEMM:
        assert table(g, x, w) == t


def test_between_grid_points_log_time_is_linear_in_log_x() -> None:
    table = GroupedTable(GEMM)
    # halfway between m=8 and m=64 in log space: the geometric mean of t/m, times m
    m = math.sqrt(8 * 64)
    expected = m * math.sqrt((0.029472 / 8) * (0.034016 / 64))
    assert table(1.0, m, m) == pytest.approx(expected, rel=1e-12)


def test_above_the_grid_the_last_efficiency_is_held() -> None:
    table = GroupedTable(GEMM)
    assert table(1.0, 2048.0, 2048.0) == pytest.approx(0.051648 * 4, rel=1e-12)


def test_below_the_grid_the_first_time_is_a_floor() -> None:
    curve = LogCurve([(8.0, 8.0, 2.0), (64.0, 64.0, 4.0)])
    assert curve(2.0, 2.0) == 2.0  # less work than the smallest point: its time
    assert curve(2.0, 80.0) == pytest.approx(80.0 * 2.0 / 8.0)  # more work: its efficiency


def test_groups_interpolate_in_log_g_and_clamp_to_the_nearest_outside() -> None:
    points = [(1.0, 10.0, 10.0, 1.0), (4.0, 10.0, 10.0, 4.0)]
    table = GroupedTable(points)
    assert table(2.0, 10.0, 10.0) == pytest.approx(2.0, rel=1e-12)
    assert table(0.5, 10.0, 10.0) == 1.0
    assert table(16.0, 10.0, 10.0) == 4.0


def test_repeated_measurements_are_combined_geometrically() -> None:
    curve = LogCurve([(8.0, 8.0, 1.0), (8.0, 8.0, 4.0), (16.0, 16.0, 4.0)])
    assert curve(8.0, 8.0) == pytest.approx(2.0, rel=1e-12)


def test_guided_table_interpolates_the_ratio_to_its_guide() -> None:
    # rows measured at 1.1x the guide at x=1 and 1.3x at x=4; the guide supplies the shape in between
    points = [(1.0, 1.0, 1.0, 11.0, 10.0), (1.0, 4.0, 4.0, 65.0, 50.0)]
    table = GroupedTable(points)
    assert table.guided
    assert table(1.0, 1.0, 1.0, 10.0) == 11.0  # exact at a grid point
    assert table(1.0, 2.0, 2.0, 30.0) == pytest.approx(30.0 * math.sqrt(1.1 * 1.3), rel=1e-12)
    assert table(1.0, 8.0, 8.0, 100.0) == pytest.approx(130.0, rel=1e-12)  # outside: ratio held
    with pytest.raises(ValueError, match="needs the guide"):
        table(1.0, 2.0, 2.0)


def test_leave_one_out_predicts_each_point_from_the_rest() -> None:
    errors = leave_one_out(GEMM)
    assert errors[-1] == pytest.approx(0.034016 / 64 * 512 / 0.051648 - 1, rel=1e-12)
    assert errors[0] == pytest.approx(0.029472 / 0.0312 - 1, rel=1e-12)  # below the grid: held time
    assert leave_one_out([(1.0, 1.0, 1.0, 1.0)]) == [None]


def test_bad_points_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        LogCurve([(0.0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="all be guided or all unguided"):
        GroupedTable([(1.0, 1.0, 1.0, 1.0), (1.0, 2.0, 2.0, 2.0, 2.0)])
