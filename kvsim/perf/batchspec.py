"""The batch SPEC syntax of ``kvsim step-time``: comma-separated ``[COUNTx]EXTEND:PAST`` items.

``32x1:2048`` is 32 requests decoding at 2048 tokens of context; ``1x8192:0`` one 8192-token prefill;
``1x2048:6144`` a 2048-token extend on a 6144-token cached prefix. Items combine: ``4x1:1000,1x512:0``.
"""

from __future__ import annotations

import re

from kvsim.core.errors import UserInputError

_ITEM = re.compile(r"^(?:(\d+)x)?(\d+):(\d+)$")
#: Refuse absurd expansions early rather than building a list of millions of tuples.
MAX_REQUESTS = 1_000_000


def parse_batch_spec(spec: str) -> list[tuple[int, int]]:
    """Parse a SPEC into ``[(extend_len, past_len), ...]``; a malformed item names itself and the reason."""
    if not spec or not spec.strip():
        raise UserInputError("--batch: empty SPEC; expected items like 32x1:2048 or 1x8192:0")
    batch: list[tuple[int, int]] = []
    for position, raw in enumerate(spec.split(","), start=1):
        item = raw.strip()
        match = _ITEM.match(item)
        if not match:
            raise UserInputError(
                f"--batch item {position} {item!r}: expected [COUNTx]EXTEND:PAST with whole numbers"
            )
        count = int(match.group(1)) if match.group(1) is not None else 1
        extend, past = int(match.group(2)), int(match.group(3))
        if count <= 0:
            raise UserInputError(f"--batch item {position} {item!r}: COUNT must be > 0")
        if extend <= 0:
            raise UserInputError(f"--batch item {position} {item!r}: EXTEND must be > 0")
        if len(batch) + count > MAX_REQUESTS:
            raise UserInputError(f"--batch: more than {MAX_REQUESTS} requests")
        batch.extend([(extend, past)] * count)
    return batch
