"""Reader of Mooncake traces (kvcache-ai/Mooncake, FAST'25 release).

Each line is one request::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ..., 2354]}

``timestamp`` is in milliseconds from the trace start; ``hash_ids`` are prefix-chained hashes of
512-token blocks (equal ids mean an equal prefix up to and including that block); the last block is
partial, so ``len(hash_ids) == ceil(input_length / 512)``.

Replay follows ``bench_serving --dataset-name mooncake``: take the first ``num_prompts`` records in
file order, sort them by timestamp (stable, so ties keep file order), and send each at
``(timestamp - first timestamp) / 1000 * slowdown_factor`` seconds; ``request_rate`` plays no part.

Prompt tokens are made up, deterministically, from the hash ids: token ``k`` of block ``h`` is a
64-bit mix of ``h * block_size + k`` reduced modulo the vocabulary. So equal ids give equal tokens in
every request and every run, different ids give (with overwhelming probability) different blocks,
and the partial last block of a request is a prefix of the same id's full block, so it matches too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from kvsim.core import UserInputError
from kvsim.workloads.base import (
    DEFAULT_VOCAB_SIZE,
    Workload,
    build_requests,
    check_context,
    check_int,
    check_positive_float,
    freeze,
)

#: Tokens per hash id in the published Mooncake traces.
MOONCAKE_BLOCK_SIZE = 512


def _hash_to_tokens(positions: np.ndarray, vocab_size: int) -> np.ndarray:
    """Hash ``uint64`` positions to token ids in ``[0, vocab_size)``, in place (``positions`` is consumed).

    The hash is SplitMix64's finalizer, a fast bijection of 64-bit integers (numpy wraps ``uint64``
    arithmetic on arrays silently, as the hash wants). The reduction to the vocabulary is Lemire's
    multiply-shift on the top 32 bits, which avoids a slow 64-bit modulo. In-place steps keep the
    temporaries to one extra array.
    """
    z = positions
    z += np.uint64(0x9E3779B97F4A7C15)
    t = z >> np.uint64(30)
    z ^= t
    z *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= np.uint64(0x94D049BB133111EB)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    z >>= np.uint64(32)
    z *= np.uint64(vocab_size)
    z >>= np.uint64(32)
    return z.view(np.int64)


def hash_id_tokens(
    hash_ids: list[int] | np.ndarray,
    input_len: int,
    block_size: int = MOONCAKE_BLOCK_SIZE,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> np.ndarray:
    """The prompt tokens of a request made of the given hash-id blocks.

    Token ``k`` of block ``h`` depends only on ``(h, k, block_size, vocab_size)``. The whole prompt is
    hashed in one vectorized pass; that costs about as much as copying cached blocks would, and a
    per-id cache of a whole trace would hold hundreds of MB (182,790 unique blocks in the
    conversation trace), so nothing is cached.

    Args:
        hash_ids: Block ids, first block first.
        input_len: Prompt length; at most ``len(hash_ids) * block_size``.
        block_size: Tokens per hash id.
        vocab_size: Token ids are in ``[0, vocab_size)``; below 2**32.

    Returns:
        Read-only ``int64`` array of ``input_len`` tokens.
    """
    if not 0 <= input_len <= len(hash_ids) * block_size:
        raise ValueError(f"input_len(={input_len}) must be in [0, {len(hash_ids)} * {block_size}]")
    if not 1 <= vocab_size < 2**32:
        raise ValueError(f"vocab_size(={vocab_size}) must be in [1, 2**32)")
    ids = np.asarray(hash_ids, dtype=np.uint64)
    bs = np.uint64(block_size)
    offsets = np.arange(block_size, dtype=np.uint64)
    full_blocks = min(len(ids), input_len // block_size)
    # Allocate exactly input_len positions: full blocks as a 2-D view, then the partial tail.
    positions = np.empty(input_len, dtype=np.uint64)
    head = positions[: full_blocks * block_size].reshape(full_blocks, block_size)
    np.add(ids[:full_blocks, None] * bs, offsets[None, :], out=head)
    tail = input_len - full_blocks * block_size
    if tail:
        positions[full_blocks * block_size :] = ids[full_blocks] * bs + offsets[:tail]
    return freeze(_hash_to_tokens(positions, vocab_size))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_record(record: object, block_size: int) -> tuple[float, int, int, list[int]] | str:
    """Return ``(timestamp_ms, input_length, output_length, hash_ids)`` or a message saying what is wrong."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    timestamp = record["timestamp"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float) or not math.isfinite(timestamp):
        return f"timestamp must be a finite number of milliseconds, got {timestamp!r}"
    input_length = record["input_length"]
    if not _is_int(input_length) or input_length < 1:
        return f"input_length must be an integer >= 1, got {input_length!r}"
    output_length = record["output_length"]
    if not _is_int(output_length) or output_length < 1:
        return f"output_length must be an integer >= 1, got {output_length!r}"
    hash_ids = record["hash_ids"]
    if not isinstance(hash_ids, list) or not all(_is_int(h) and 0 <= h < 2**63 for h in hash_ids):
        return "hash_ids must be a list of non-negative integers"
    needed = -(-input_length // block_size)
    if len(hash_ids) != needed:
        return (
            f"input_length {input_length} needs {needed} hash_ids of {block_size} tokens, got {len(hash_ids)}"
        )
    return float(timestamp), input_length, output_length, hash_ids


def read_mooncake_records(
    path: str | os.PathLike[str],
    num_prompts: int | None = None,
    block_size: int = MOONCAKE_BLOCK_SIZE,
) -> list[tuple[float, int, int, list[int]]]:
    """Parse the first ``num_prompts`` records of a Mooncake trace, in file order.

    Blank lines are skipped (as ``bench_serving`` does); reading stops once enough records are in.

    Args:
        path: The JSONL trace.
        num_prompts: How many records to read; ``None`` reads them all.
        block_size: Tokens per hash id, used to check ``hash_ids`` against ``input_length``.

    Returns:
        ``(timestamp_ms, input_length, output_length, hash_ids)`` per record.

    Raises:
        UserInputError: The file is missing or unreadable, or a line is malformed (the message names
            the file and the 1-based line number), or it holds no records.
    """
    trace = Path(path)
    if not trace.exists():
        raise UserInputError(f"mooncake trace not found: {trace}")
    if not trace.is_file():
        raise UserInputError(f"mooncake trace is not a file: {trace}")
    records: list[tuple[float, int, int, list[int]]] = []
    line_no = 0
    try:
        with trace.open(encoding="utf-8") as lines:
            for line_no, line in enumerate(lines, start=1):
                if num_prompts is not None and len(records) >= num_prompts:
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UserInputError(f"{trace}, line {line_no}: not valid JSON ({err.msg})") from None
                parsed = _parse_record(record, block_size)
                if isinstance(parsed, str):
                    raise UserInputError(f"{trace}, line {line_no}: {parsed}")
                records.append(parsed)
    except UnicodeDecodeError:
        # Text is decoded in chunks, so the bad byte lies somewhere after the last line read.
        raise UserInputError(f"{trace}: not UTF-8 text (after line {line_no})") from None
    except OSError as err:
        raise UserInputError(f"cannot read mooncake trace {trace}: {err.strerror}") from None
    if not records:
        raise UserInputError(f"mooncake trace {trace} holds no requests")
    return records


def read_mooncake(
    path: str | os.PathLike[str],
    *,
    num_prompts: int | None,
    max_context_len: int,
    mooncake_slowdown_factor: float = 1.0,
    block_size: int = MOONCAKE_BLOCK_SIZE,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Workload:
    """Load a Mooncake trace as a workload (see the module docstring for the replay rules).

    Args:
        path: The JSONL trace.
        num_prompts: Use the first N records of the file; ``None`` uses all of them.
        max_context_len: Requests are truncated to fit (see
            :func:`~kvsim.workloads.base.truncate_lengths`) and counted in ``truncated_requests``.
        mooncake_slowdown_factor: Multiplies every trace time; 2.0 replays at half the speed.
        block_size: Tokens per hash id (512 in the published traces).
        vocab_size: Token ids are in ``[0, vocab_size)``.

    Returns:
        The workload, requests in arrival order.
    """
    if num_prompts is not None:
        num_prompts = check_int("num_prompts", num_prompts)
    max_context_len = check_context(max_context_len)
    slowdown = check_positive_float("mooncake_slowdown_factor", mooncake_slowdown_factor)
    block_size = check_int("block_size", block_size)
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)
    if vocab_size >= 2**32:
        raise UserInputError(f"vocab_size must be < 2**32, got {vocab_size}")

    records = read_mooncake_records(path, num_prompts, block_size)
    timestamps = np.array([r[0] for r in records], dtype=np.float64)
    order = np.argsort(timestamps, kind="stable")
    arrivals = (timestamps[order] - timestamps[order[0]]) / 1000.0 * slowdown
    prompts = [hash_id_tokens(records[i][3], records[i][1], block_size, vocab_size) for i in order]
    output_lens = [records[i][2] for i in order]

    requests, truncated = build_requests(prompts, output_lens, arrivals, max_context_len)
    params: dict[str, Any] = {
        "dataset_path": str(path),
        "num_prompts": num_prompts,
        "num_records": len(records),
        "mooncake_slowdown_factor": slowdown,
        "block_size": block_size,
        "max_context_len": max_context_len,
        "vocab_size": vocab_size,
    }
    return Workload(name="mooncake", requests=requests, truncated_requests=truncated, params=params)
