"""Reader of Alibaba's Qwen-Bailian usage traces (``alibaba-edu/qwen-bailian-usagetraces-anon``).

Each line is one request of one conversation turn::

    {"chat_id": 159, "parent_chat_id": 55, "timestamp": 61.114, "input_length": 521,
     "output_length": 132, "type": "text", "turn": 2, "hash_ids": [1089, 1090, 1091, 6326, ...]}

``timestamp`` is in seconds from the trace start. ``hash_ids`` hash each 16-token block *on its own*
(the trace's README: "applied to each block"), so equal ids at one position do not mean an equal prefix.
Like KVCM's converter (``ApplyPrefixHash``), the reader chains them into prefix keys with the block-key
step of :func:`kvsim.cache.keys.chained_keys`: key ``i`` depends on ids ``0..i``.

Also like KVCM (tair-kvcache PR #168), keys are cut to the *full* blocks of the prompt,
``input_length // block_size``: the last block of a prompt may carry padding and change once the first
output token fills it, so it is never reusable. ``chat_id`` / ``parent_chat_id`` (-1 = a first turn) are
kept as the access's ``session``; :func:`session_roots` maps every chat to the first turn of its
conversation.

Differences from KVCM's reader: integer timestamps are accepted (KVCM silently ignores them and uses 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from kvsim.cache.keys import chained_keys
from kvsim.core import UserInputError
from kvsim.workloads.cache_trace import (
    DEFAULT_INSTANCE,
    CacheAccess,
    int64_list,
    is_int,
    is_number,
    iter_json_lines,
)

#: Tokens per hash id in the published Qwen-Bailian traces.
BAILIAN_BLOCK_SIZE = 16


def _parse(record: object, block_size: int, full_blocks_only: bool) -> CacheAccess | str:
    """Turn one JSON record into an access, or return a message saying what is wrong."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    timestamp = record["timestamp"]
    if not is_number(timestamp):
        return f"timestamp must be a finite number of seconds, got {timestamp!r}"
    input_length = record["input_length"]
    if not is_int(input_length) or input_length < 1:
        return f"input_length must be an integer >= 1, got {input_length!r}"
    output_length = record["output_length"]
    if not is_int(output_length) or output_length < 0:
        return f"output_length must be an integer >= 0, got {output_length!r}"
    ids = int64_list(record["hash_ids"])
    if ids is None:
        return "hash_ids must be a list of 64-bit integers"
    if full_blocks_only:
        ids = ids[: input_length // block_size]
    session = None
    chat, parent = record.get("chat_id"), record.get("parent_chat_id", -1)
    if chat is not None:
        if not is_int(chat) or not is_int(parent):
            return f"chat_id and parent_chat_id must be integers, got {chat!r} and {parent!r}"
        session = (chat, parent)
    keys = chained_keys(ids) if ids else []
    return CacheAccess(
        float(timestamp), DEFAULT_INSTANCE, input_length, keys, keys, None, "prefix_match", session
    )


def iter_bailian(
    path: str | os.PathLike[str],
    block_size: int = BAILIAN_BLOCK_SIZE,
    *,
    full_blocks_only: bool = True,
) -> Iterator[CacheAccess]:
    """Stream the accesses of a Qwen-Bailian trace in file order (one read-then-write turn per line).

    Args:
        path: The JSONL trace.
        block_size: Tokens per hash id (16 in the published traces).
        full_blocks_only: Cut keys to ``input_length // block_size`` full blocks, as KVCM does.

    Yields:
        One :class:`CacheAccess` per line (instance ``"instance"``), keys prefix-chained.

    Raises:
        UserInputError: The file is missing or unreadable, or a line is malformed (the message names the
            file and the 1-based line number).
    """
    if not is_int(block_size) or block_size < 1:
        raise UserInputError(f"block_size must be an integer >= 1, got {block_size!r}")
    for line_no, record in iter_json_lines(path, "qwen_bailian trace"):
        parsed = _parse(record, block_size, full_blocks_only)
        if isinstance(parsed, str):
            raise UserInputError(f"{path}, line {line_no}: {parsed}")
        yield parsed._replace(line=line_no)


def session_roots(accesses: Iterable[CacheAccess]) -> dict[int, int]:
    """Map every ``chat_id`` to the ``chat_id`` of its conversation's first turn.

    A chat whose parent never appears (the trace is a sample) is its own root. Cycles, which a sane
    trace never holds, also end at the chat where they are detected.
    """
    parent: dict[int, int] = {}
    for access in accesses:
        if access.session is not None:
            parent[access.session[0]] = access.session[1]
    roots: dict[int, int] = {}
    for chat in parent:
        path = [chat]
        seen = {chat}
        node = chat
        while True:
            if node in roots:
                root = roots[node]
                break
            up = parent.get(node, -1)
            if up < 0 or up not in parent or up in seen:
                root = node
                break
            path.append(up)
            seen.add(up)
            node = up
        for c in path:
            roots[c] = root
    return roots
