"""The record every KV-cache trace reader yields, and the line-reading helpers they share.

Cache traces differ in what one line means (a whole turn, a read, a write, a service event), but a
trace replay only needs to know, per access: when, for which instance, which block keys are read and
which are written, and how many prompt tokens the read covers. :class:`CacheAccess` carries exactly
that. Readers are generators: they parse one line at a time, so a bad line is reported (file and
1-based line number) before the rest of the file is read, and a caller may stop early.

Block masks follow KVCM (``BlockMask``): an ``int`` offset ``n`` masks indices ``< n``; a bool sequence
masks index ``i`` when ``i < len(values) and values[i]``; ``None`` masks nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from kvsim.core import UserInputError

#: A KVCM block mask: an offset, a bool per block, or nothing.
BlockMask = int | tuple[bool, ...] | None

#: Instance id given to traces that have no instances (KVCM's Qwen-Bailian converter does the same).
DEFAULT_INSTANCE = "instance"

_INT64_MIN = -(1 << 63)
_UINT64_END = 1 << 64


class CacheAccess(NamedTuple):
    """One access of a cache trace.

    Attributes:
        timestamp_s: When it happened, in seconds (any origin).
        instance: The instance (KVCM ``instance_id``) whose cache is accessed.
        input_length: Prompt tokens the read covers (the denominator of the token hit rate); 0 when
            there is no read.
        read_keys: Prefix-chained block keys looked up, first block first; empty for a pure write.
        write_keys: Block keys stored after the read; empty for a pure read. For a whole turn this is
            the same object as ``read_keys``.
        mask: The read's block mask (blocks the engine already holds), see the module docstring.
        query_type: KVCM query type of the read (``prefix_match`` unless the trace says otherwise).
        session: ``(chat_id, parent_chat_id)`` when the trace records conversations, else ``None``.
        line: 1-based line of the trace the access came from (for messages).
    """

    timestamp_s: float
    instance: str
    input_length: int
    read_keys: Sequence[int]
    write_keys: Sequence[int]
    mask: BlockMask = None
    query_type: str = "prefix_match"
    session: tuple[int, int] | None = None
    line: int = 0


def iter_json_lines(
    path: str | os.PathLike[str], what: str, *, embedded: bool = False
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed JSON value)`` for every non-blank line of ``path``.

    Args:
        path: A JSONL file.
        what: How to call the file in messages (``"qwen_bailian trace"``).
        embedded: Lines may carry a prefix before the JSON object (a logger's time and level, as in
            KVCM's ``event_publisher.log``); the object starts at the first ``{``.

    Raises:
        UserInputError: The file is missing, unreadable or not UTF-8, or a line is not JSON (the message
            names the file and the line).
    """
    trace = Path(path)
    if not trace.exists():
        raise UserInputError(f"{what} not found: {trace}")
    if not trace.is_file():
        raise UserInputError(f"{what} is not a file: {trace}")
    line_no = 0
    try:
        with trace.open(encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, start=1):
                text = line.strip()
                if not text:
                    continue
                if embedded and text[0] != "{" and "{" in text:
                    text = text[text.index("{") :]
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    raise UserInputError(f"{trace}, line {line_no}: not valid JSON ({err.msg})") from None
                yield line_no, value
    except UnicodeDecodeError:
        # Text is decoded in chunks, so the bad byte lies somewhere after the last line read.
        raise UserInputError(f"{trace}: not UTF-8 text (after line {line_no})") from None
    except OSError as err:
        raise UserInputError(f"cannot read {what} {trace}: {err.strerror}") from None


def is_int(value: object) -> TypeGuard[int]:
    """True for a JSON integer (a Python ``int`` that is not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """True for a finite JSON number (not a ``bool``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def int64_list(value: object) -> list[int] | None:
    """Return ``value`` as a list of signed 64-bit ints, or ``None`` when it is not a list of integers.

    Unsigned 64-bit values above ``INT64_MAX`` are mapped to their two's-complement int64, as KVCM does
    when it parses keys, so a key logged either way is the same key.
    """
    if not isinstance(value, list):
        return None
    out = value
    for v in value:
        if not is_int(v) or not _INT64_MIN <= v < _UINT64_END:
            return None
        if v >= 1 << 63:
            # Rare: copy once and convert every unsigned value.
            out = [x - _UINT64_END if x >= 1 << 63 else x for x in value]
            break
    return out


def parse_block_mask(value: object) -> BlockMask | str:
    """Parse a JSON block mask (offset, bool array, KVCM's ``{"offset": n}`` / ``{"bool_masks": ...}``).

    Returns:
        The mask, or a message saying what is wrong.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if "offset" in value:
            value = value["offset"]
        elif "bool_masks" in value:
            inner = value["bool_masks"]
            value = inner.get("values", []) if isinstance(inner, dict) else inner
        else:
            return "block_mask object must hold offset or bool_masks"
    if is_int(value):
        if value < 0:
            return f"block_mask offset must be >= 0, got {value}"
        return int(value)
    if isinstance(value, list) and all(isinstance(v, bool) for v in value):
        return tuple(value) if any(value) else None
    return f"block_mask must be an integer offset or a list of booleans, got {value!r}"


def masked(mask: BlockMask, index: int) -> bool:
    """True when block ``index`` is in ``mask``."""
    if mask is None:
        return False
    if isinstance(mask, int):
        return index < mask
    return index < len(mask) and mask[index]


def masked_count(mask: BlockMask, n_blocks: int, upto: int | None = None) -> int:
    """How many of the first ``upto`` (default: all ``n_blocks``) blocks are in ``mask``."""
    end = n_blocks if upto is None else min(upto, n_blocks)
    if mask is None or end <= 0:
        return 0
    if isinstance(mask, int):
        return min(mask, end)
    return sum(mask[:end])
