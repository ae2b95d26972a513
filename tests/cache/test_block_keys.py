"""Block keys: the reference's test vectors and input rules."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.cache import CacheError, ErrorCode, block_keys, chained_keys, storage_key


def test_reference_vectors() -> None:
    assert block_keys([1, 2, 3, 4, 5], 2) == [-8366447769517741626, 455111481605203084]
    assert block_keys(list(range(100, 116)), 4) == [
        455133539818735372,
        -2006179887927315835,
        792400745231118672,
        6878879441880428884,
    ]
    assert block_keys([-5, 7, 123456789012345], 1) == [
        -7046029254386353136,
        -8366447769517782587,
        8024673150057945703,
    ]


def test_keys_are_a_chained_prefix_hash() -> None:
    # Key i depends on every earlier block: the first key of [1,2,3,4] equals that of [1,2].
    assert block_keys([1, 2, 3, 4], 2)[0] == block_keys([1, 2], 2)[0]
    assert block_keys([9, 2, 3, 4], 2)[1] != block_keys([1, 2, 3, 4], 2)[1]


def test_trailing_partial_block_is_dropped() -> None:
    assert block_keys([1, 2, 3, 4, 5], 2) == block_keys([1, 2, 3, 4], 2)
    assert block_keys([1, 2, 3], 4) == []
    assert block_keys([], 4) == []


def test_numpy_input_matches_list_input() -> None:
    assert block_keys(np.arange(100, 116, dtype=np.int64), 4) == block_keys(list(range(100, 116)), 4)
    assert block_keys([np.int64(1), np.int32(2), 3, 4, 5], 2) == [-8366447769517741626, 455111481605203084]


def test_int64_extremes() -> None:
    lo, hi = -(2**63), 2**63 - 1
    assert len(block_keys([lo, hi], 1)) == 2


@pytest.mark.parametrize("block_size", [0, -1, 1.5, True])
def test_bad_block_size(block_size: object) -> None:
    with pytest.raises(CacheError) as err:
        block_keys([1, 2], block_size)  # type: ignore[arg-type]
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith("block_size: ")


@pytest.mark.parametrize("tokens", [[1, 2.0], [1, "2"], [2**63], [-(2**63) - 1], np.array([1.0, 2.0])])
def test_bad_tokens(tokens: object) -> None:
    with pytest.raises(CacheError) as err:
        block_keys(tokens, 1)  # type: ignore[arg-type]
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert err.value.message.startswith("token_ids: ")


def test_chained_keys_is_block_size_one() -> None:
    assert chained_keys([-5, 7, 123456789012345]) == block_keys([-5, 7, 123456789012345], 1)


def test_storage_key_is_lowercase_hex_of_uint64() -> None:
    assert storage_key("inst", "tp0", 123) == "inst/tp0/7b"
    assert storage_key("inst", "tp1", -1) == "inst/tp1/ffffffffffffffff"
    assert storage_key("inst", "tp0", 0) == "inst/tp0/0"
