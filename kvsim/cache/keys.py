"""Block keys: KVCM's chained 64-bit prefix hash over token ids.

A KV-cache *block* covers ``block_size`` consecutive tokens. Its key must identify the whole prefix that
ends with it (the attention state of a block depends on every earlier token), so KVCM hashes tokens with a
running 64-bit state that is never reset between blocks and emits the state after each full block:
key ``i`` depends on the tokens of blocks ``0..i``. A trailing partial block gets no key.

The step function is RTP-LLM's ``HashUtil`` combine (boost-style ``hash_combine`` on 64 bits), with the
previous state read as a *signed* int64 so that ``h >> 32`` sign-extends. Everything wraps modulo 2**64
and keys are reported as signed int64, exactly as the reference C++ does; the reference's test vectors
are checked in ``tests/cache/test_block_keys.py``.

Clients may also send their own ``block_keys``: the server treats those as opaque int64 and never
rehashes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsim.cache.errors import invalid

_MASK64 = (1 << 64) - 1
_SIGN_BIT = 1 << 63
_HIGH32 = 0xFFFF_FFFF_0000_0000
_GOLDEN = 0x9E37_79B9_7F4A_7C15
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def _as_int_list(values: Sequence[int] | np.ndarray, field: str) -> list[int]:
    """Return ``values`` as a list of Python ints in the int64 range, or raise INVALID_ARGUMENT."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iu":
            raise invalid(field, f"must be a 1-D integer array, got dtype {values.dtype} ndim {values.ndim}")
        out: list[int] = values.tolist()
    else:
        out = list(values)
        if out and not set(map(type, out)) <= {int}:
            # Accept numpy scalars and other exact integers; reject floats, bools and strings.
            try:
                out = [_exact_int(v) for v in out]
            except TypeError as exc:
                raise invalid(field, str(exc)) from None
    if out and (min(out) < INT64_MIN or max(out) > INT64_MAX):
        raise invalid(field, "values must fit in a signed 64-bit integer")
    return out


def _exact_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"values must be integers, got {type(value).__name__}")
    return int(value)


def block_keys(token_ids: Sequence[int] | np.ndarray, block_size: int) -> list[int]:
    """Return the chained block keys of ``token_ids``, one per *full* block of ``block_size`` tokens.

    Args:
        token_ids: token ids (any int64 values, negative allowed).
        block_size: tokens per block; must be > 0.

    Returns:
        ``len(token_ids) // block_size`` signed int64 keys; key ``i`` depends on tokens
        ``0 .. (i+1)*block_size - 1``.

    Raises:
        CacheError: INVALID_ARGUMENT for ``block_size <= 0`` or non-integer / out-of-range tokens.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise invalid("block_size", f"must be an integer > 0, got {block_size!r}")
    tokens = _as_int_list(token_ids, "token_ids")
    n_blocks = len(tokens) // block_size
    keys: list[int] = []
    h = 0  # the running state, kept unsigned (0 .. 2**64-1)
    mask, sign, high, golden = _MASK64, _SIGN_BIT, _HIGH32, _GOLDEN
    pos = 0
    for _ in range(n_blocks):
        for v in tokens[pos : pos + block_size]:
            # (h >> 32) of the *signed* state: shift the unsigned value, then refill the top 32 bits.
            shifted = (h >> 32) | high if h & sign else h >> 32
            h ^= ((v & mask) + golden + ((h << 12) & mask) + shifted) & mask
        pos += block_size
        keys.append(h - (1 << 64) if h & sign else h)
    return keys


def chained_keys(block_ids: Sequence[int] | np.ndarray) -> list[int]:
    """Chain per-block ids (e.g. Qwen-Bailian ``hash_ids``) into prefix keys with the same step.

    This is :func:`block_keys` with ``block_size=1``: key ``i`` depends on ``block_ids[0..i]``.
    """
    return block_keys(block_ids, 1)


def storage_key(instance_id: str, spec_name: str, key: int) -> str:
    """Return the storage object name of one (spec, block): ``"<instance>/<spec>/<hex of uint64 key>"``.

    The hex is lowercase without padding; negative keys show their two's-complement 16 hex digits.
    """
    return f"{instance_id}/{spec_name}/{key & _MASK64:x}"
