"""Reader of KVCM optimizer-schema traces (the JSONL that KVCM's ``trace_anonymous_tool`` writes).

Each line is one serialized schema trace. Its kind follows from its fields, as in KVCM's loader:

- ``input_len``, ``output_len`` and ``total_keys`` -> a **dialog turn**: read ``keys``, then write
  ``total_keys`` (the prompt's keys followed by those of the output);
- ``query_type`` and ``block_mask`` -> a **get** (a read only);
- anything else -> a **write** of ``keys``.

A ``type`` field of ``"dialog"``, ``"get"`` or ``"write"`` (newer KVCM files) takes precedence.
Common fields: ``instance_id``, ``trace_id``, ``timestamp_us``, ``tokens``, ``keys``. When ``keys`` is
empty and ``tokens`` is not, keys are derived from the tokens with KVCM's block hash at the replay's
block size (the server does the same). A get covers ``len(tokens)`` prompt tokens when tokens are
present, else ``len(keys) * block_size``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from kvsim.cache.keys import block_keys
from kvsim.core import UserInputError
from kvsim.workloads.cache_trace import (
    CacheAccess,
    int64_list,
    is_int,
    is_number,
    iter_json_lines,
    parse_block_mask,
)

#: Default tokens per block when a trace gives keys without saying how many tokens they cover.
SCHEMA_BLOCK_SIZE = 16

_KINDS = ("dialog", "get", "write")


def _keys(record: dict[str, object], field: str, block_size: int) -> tuple[list[int], int | None] | str:
    """Return ``(keys, number of tokens or None)`` of ``record[field]`` (falling back to ``tokens``)."""
    keys = int64_list(record.get(field, []))
    if keys is None:
        return f"{field} must be a list of 64-bit integers"
    tokens = int64_list(record.get("tokens", []))
    if tokens is None:
        return "tokens must be a list of 64-bit integers"
    if not keys and tokens and field == "keys":
        keys = block_keys(tokens, block_size)
    return keys, (len(tokens) if tokens else None)


def _parse(record: object, block_size: int) -> CacheAccess | str:
    """Turn one JSON record into an access, or return a message saying what is wrong."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("instance_id", "timestamp_us") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    instance = record["instance_id"]
    if not isinstance(instance, str) or not instance:
        return f"instance_id must be a non-empty string, got {instance!r}"
    stamp = record["timestamp_us"]
    if not is_number(stamp):
        return f"timestamp_us must be a finite number, got {stamp!r}"
    kind = record.get("type")
    if kind is not None and kind not in _KINDS:
        return f"type must be one of {', '.join(_KINDS)}, got {kind!r}"
    if kind is None:
        if all(k in record for k in ("input_len", "output_len", "total_keys")):
            kind = "dialog"
        elif "query_type" in record and "block_mask" in record:
            kind = "get"
        else:
            kind = "write"
    read = _keys(record, "keys", block_size)
    if isinstance(read, str):
        return read
    keys, n_tokens = read
    time_s = float(stamp) / 1e6
    if kind == "write":
        return CacheAccess(time_s, instance, 0, (), keys)
    mask = parse_block_mask(record.get("block_mask"))
    if isinstance(mask, str):
        return mask
    query_type = record.get("query_type", "prefix_match")
    if not isinstance(query_type, str):
        return f"query_type must be a string, got {query_type!r}"
    if kind == "get":
        length = n_tokens if n_tokens is not None else len(keys) * block_size
        return CacheAccess(time_s, instance, length, keys, (), mask, query_type)
    input_len = record.get("input_len")
    if not is_int(input_len) or input_len < 0:
        return f"input_len must be an integer >= 0, got {input_len!r}"
    total = _keys(record, "total_keys", block_size)
    if isinstance(total, str):
        return total
    written = total[0] or keys
    return CacheAccess(time_s, instance, input_len, keys, written, mask, query_type)


def iter_optimizer_schema(
    path: str | os.PathLike[str], block_size: int = SCHEMA_BLOCK_SIZE
) -> Iterator[CacheAccess]:
    """Stream the accesses of an optimizer-schema trace in file order.

    Args:
        path: The JSONL trace.
        block_size: Tokens per block (to derive keys from tokens and to size reads without tokens).

    Yields:
        One :class:`CacheAccess` per line: dialog turns read and write, gets only read, writes only write.

    Raises:
        UserInputError: The file is missing or unreadable, or a line is malformed (file and line named).
    """
    if not is_int(block_size) or block_size < 1:
        raise UserInputError(f"block_size must be an integer >= 1, got {block_size!r}")
    for line_no, record in iter_json_lines(path, "optimizer_schema trace"):
        parsed = _parse(record, block_size)
        if isinstance(parsed, str):
            raise UserInputError(f"{path}, line {line_no}: {parsed}")
        yield parsed._replace(line=line_no)
