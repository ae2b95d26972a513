"""Tests of the workload data model, the truncation rule and the shared input checks."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.core import UserInputError
from kvsim.workloads.base import (
    Request,
    Workload,
    build_requests,
    check_int,
    check_positive_float,
    check_ratio,
    freeze,
    truncate_lengths,
)


def make_request(request_id: int = 0, tokens: list[int] | None = None, **overrides: object) -> Request:
    token_ids = np.array(tokens if tokens is not None else [5, 6, 7], dtype=np.int64)
    fields: dict[str, object] = {
        "request_id": request_id,
        "arrival_s": 0.5,
        "input_len": len(token_ids),
        "output_len": 4,
        "token_ids": token_ids,
    }
    fields.update(overrides)
    return Request(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("input_len", "output_len", "max_context_len", "expected"),
    [
        (100, 50, 200, (100, 50)),  # fits: unchanged
        (150, 50, 200, (150, 50)),  # exactly max_context_len: unchanged
        (150, 100, 200, (150, 50)),  # output clipped to the room left
        (300, 50, 200, (199, 1)),  # prompt cut to leave one output token
        (200, 1, 200, (199, 1)),
        (1, 1, 2, (1, 1)),
    ],
)
def test_truncate_lengths(
    input_len: int, output_len: int, max_context_len: int, expected: tuple[int, int]
) -> None:
    """The prompt is cut first (keeping one output token), then the output takes what is left."""
    assert truncate_lengths(input_len, output_len, max_context_len) == expected


def test_build_requests_truncates_keeping_the_prefix_and_counts() -> None:
    prompts = [freeze(np.arange(10, dtype=np.int64)), freeze(np.arange(3, dtype=np.int64))]
    requests, truncated = build_requests(prompts, [5, 2], np.array([0.0, 1.0]), max_context_len=8)
    assert truncated == 1
    assert [(r.request_id, r.input_len, r.output_len) for r in requests] == [(0, 7, 1), (1, 3, 2)]
    assert requests[0].token_ids.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert not requests[0].token_ids.flags.writeable


def test_request_rejects_token_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        make_request(input_len=4)


def test_request_equality_compares_tokens() -> None:
    assert make_request() == make_request()
    assert make_request() != make_request(tokens=[5, 6, 8])
    assert make_request() != make_request(output_len=5)
    assert hash(make_request()) == hash(make_request())
    assert len({make_request(), make_request()}) == 1


def test_workload_iterates_and_totals() -> None:
    workload = Workload(name="t", requests=[make_request(0), make_request(1, tokens=[1, 2])])
    assert len(workload) == 2
    assert [r.request_id for r in workload] == [0, 1]
    assert workload.total_input_tokens == 5
    assert workload.total_output_tokens == 8


def test_freeze_makes_arrays_read_only() -> None:
    array = freeze(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1


def test_checks_refuse_bad_values_with_one_line_naming_them() -> None:
    assert check_int("n", 3) == 3
    assert check_int("n", np.int64(3)) == 3
    for bad, pattern in [(0, "n must be >= 1, got 0"), (True, "n must be an integer"), (2.0, "integer")]:
        with pytest.raises(UserInputError, match=pattern):
            check_int("n", bad)
    assert check_ratio("r", 0) == 0.0
    with pytest.raises(UserInputError, match=r"r must be in \[0, 1\], got 1.5"):
        check_ratio("r", 1.5)
    assert check_positive_float("rate", float("inf"), allow_inf=True) == float("inf")
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserInputError, match="rate must be"):
            check_positive_float("rate", bad)
