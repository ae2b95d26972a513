"""The [COUNTx]EXTEND:PAST batch SPEC syntax."""

from __future__ import annotations

import pytest

from kvsim.core.errors import UserInputError
from kvsim.perf import parse_batch_spec


def test_parse_examples() -> None:
    assert parse_batch_spec("32x1:2048") == [(1, 2048)] * 32
    assert parse_batch_spec("1x8192:0") == [(8192, 0)]
    assert parse_batch_spec("1x2048:6144") == [(2048, 6144)]
    assert parse_batch_spec("2x1:10, 5:3") == [(1, 10), (1, 10), (5, 3)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty SPEC"),
        ("32x1", "item 1 '32x1': expected"),
        ("1:0,abc", "item 2 'abc': expected"),
        ("0x1:0", "COUNT must be > 0"),
        ("1x0:5", "EXTEND must be > 0"),
        ("1x-1:5", "expected"),
        ("2000000x1:1", "more than 1000000 requests"),
    ],
)
def test_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        parse_batch_spec(spec)
