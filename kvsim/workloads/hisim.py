"""Reader of HiSim's ``hisim_collection`` request traces (Tair-KVCache HiSim, collected from SGLang).

Each line is one request as HiSim's collection hooks record it::

    {"rid": "a1", "timestamp": 1.37, "input_length": 5, "output_length": 4, "input_ids": [3, 4, 5, 6, 7],
     "output_ids": [...], "queue_end": ..., "final_prefix_cache_len": ...}

Only the prompt matters to a cache replay: ``input_ids`` are the token ids and ``timestamp`` (legacy name
``created_time``) the arrival in seconds. Token ids become prefix-chained block keys with KVCM's hash
(:func:`kvsim.cache.keys.block_keys`) at the replay's block size; a trailing partial block gets no key,
as in KVCM. The prompt length used for the token hit rate is ``len(input_ids)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from kvsim.cache.keys import block_keys
from kvsim.core import UserInputError
from kvsim.workloads.cache_trace import (
    DEFAULT_INSTANCE,
    CacheAccess,
    int64_list,
    is_int,
    is_number,
    iter_json_lines,
)

#: Default tokens per block key for token-id traces (the CLI's ``--block-size`` overrides it).
HISIM_BLOCK_SIZE = 16


def _parse(record: object, block_size: int) -> CacheAccess | str:
    """Turn one JSON record into an access, or return a message saying what is wrong."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    stamp_field = "timestamp" if "timestamp" in record else "created_time"
    missing = [k for k in (stamp_field, "input_ids") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    timestamp = record[stamp_field]
    if not is_number(timestamp):
        return f"{stamp_field} must be a finite number of seconds, got {timestamp!r}"
    tokens = int64_list(record["input_ids"])
    if tokens is None or not tokens:
        return "input_ids must be a non-empty list of 64-bit integers"
    if "input_length" in record and not is_int(record["input_length"]):
        return f"input_length must be an integer, got {record['input_length']!r}"
    keys = block_keys(tokens, block_size)
    return CacheAccess(float(timestamp), DEFAULT_INSTANCE, len(tokens), keys, keys)


def iter_hisim_collection(
    path: str | os.PathLike[str], block_size: int = HISIM_BLOCK_SIZE
) -> Iterator[CacheAccess]:
    """Stream the accesses of a ``hisim_collection`` trace in file order (one turn per line).

    Args:
        path: The JSONL trace.
        block_size: Tokens per block key.

    Yields:
        One :class:`CacheAccess` per line (instance ``"instance"``).

    Raises:
        UserInputError: The file is missing or unreadable, or a line is malformed (file and line named).
    """
    if not is_int(block_size) or block_size < 1:
        raise UserInputError(f"block_size must be an integer >= 1, got {block_size!r}")
    for line_no, record in iter_json_lines(path, "hisim_collection trace"):
        parsed = _parse(record, block_size)
        if isinstance(parsed, str):
            raise UserInputError(f"{path}, line {line_no}: {parsed}")
        yield parsed._replace(line=line_no)
