"""Page keys of many prompts at once: KVCM's chained block hash, vectorised across sequences.

An L3 store names a page of KV by a key that identifies the whole prefix ending with it. kvsim uses
KVCM's own chained 64-bit hash (:func:`kvsim.cache.block_keys` with the block size set to the page
size), so the cache manager sees the very keys a real client deriving them from token ids would send.

The hash is sequential along a sequence (key ``i`` depends on every earlier token), so one sequence
cannot be vectorised; :func:`block_keys` runs it token by token in Python at about 0.3 us per token,
which would dominate a trace replay (the first 3000 Mooncake records hold 35 M prompt tokens). Here
the same step runs over *many* sequences at once: sequences are sorted longest first, and at token
position ``j`` one numpy operation advances the state of every sequence still longer than ``j``. The
cost is a few microseconds per position of the longest sequence plus a few nanoseconds per token.

:class:`PageKeyCache` computes the keys of a workload's prompts lazily, in groups of requests in
workload order (bounded so that a group's keys stay under ``max_group_keys``), and forgets a request's
keys when asked to (when it finishes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)
_SHIFT_HI = np.int64(32)
_SHIFT_LO = np.uint64(12)
#: Positions of the token windows copied out of the sequences at a time.
_WINDOW = 1024


def batch_page_keys(sequences: Sequence[np.ndarray], page_size: int) -> list[np.ndarray]:
    """The chained page keys of every sequence: ``block_keys(seq, page_size)`` for each, as ``int64``.

    Args:
        sequences: 1-D integer arrays (token ids; any int64 values).
        page_size: tokens per page (> 0); a trailing partial page gets no key.

    Returns:
        One read-only ``int64`` array per sequence, ``len(seq) // page_size`` keys long.
    """
    if page_size <= 0:
        raise ValueError(f"page_size: must be > 0, got {page_size}")
    n = len(sequences)
    pages = np.array([len(s) // page_size for s in sequences], dtype=np.int64)
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    if n == 0 or not pages.any():
        return out
    order = np.argsort(-pages, kind="stable")  # longest first: the live sequences are a prefix
    sorted_pages = pages[order]
    lengths = sorted_pages * page_size  # tokens to hash per sequence
    max_len = int(lengths[0])
    seqs = [np.asarray(sequences[i]).astype(np.int64, copy=False) for i in order.tolist()]
    # live[j] = how many sequences are longer than position j (lengths sorted descending).
    neg_lengths = -lengths
    h = np.zeros(n, dtype=np.uint64)
    tmp = np.empty(n, dtype=np.uint64)
    shifted = np.empty(n, dtype=np.int64)
    # Keys in one flat buffer, page-major: page k holds the keys of the first live_pages[k] sequences.
    live_pages = np.searchsorted(-sorted_pages, -np.arange(int(sorted_pages[0])), side="left")
    offsets = np.zeros(len(live_pages) + 1, dtype=np.int64)
    np.cumsum(live_pages, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.uint64)
    for start in range(0, max_len, _WINDOW):
        stop = min(start + _WINDOW, max_len)
        live = int(np.searchsorted(neg_lengths, -start, side="left"))  # sequences longer than start
        window = np.zeros((stop - start, live), dtype=np.int64)
        for col in range(live):
            part = seqs[col][start:stop]
            window[: len(part), col] = part
        # The step adds (token + golden): do the token part for the whole window in one operation.
        wu = window.view(np.uint64)
        wu += _GOLDEN
        bounds = np.searchsorted(neg_lengths, -np.arange(start, stop), side="left")
        for j in range(start, stop):
            a = int(bounds[j - start])
            hs = h[:a]
            t = tmp[:a]
            sh = shifted[:a]
            # h ^= (token + golden + (h << 12) + (h >> 32)), with >> arithmetic on the signed state.
            np.right_shift(hs.view(np.int64), _SHIFT_HI, out=sh)
            np.left_shift(hs, _SHIFT_LO, out=t)
            np.add(t, sh.view(np.uint64), out=t)
            np.add(t, wu[j - start, :a], out=t)
            np.bitwise_xor(hs, t, out=hs)
            if (j + 1) % page_size == 0:
                k = (j + 1) // page_size - 1
                flat[offsets[k] : offsets[k] + a] = hs
    signed = flat.view(np.int64)
    for rank, index in enumerate(order.tolist()):
        count = int(sorted_pages[rank])
        keys = signed[offsets[:count] + rank]
        keys.flags.writeable = False
        out[index] = keys
    return out


class PageKeyCache:
    """Page keys of a workload's prompts, computed in groups on first use.

    Args:
        prompts: ``request_id -> prompt tokens``, in the order requests will be sent.
        page_size: tokens per page.
        max_group_keys: a group of requests computed together holds at most this many keys (more
            requests per group amortise the per-position cost; fewer bound the memory).
    """

    def __init__(
        self, prompts: dict[int, np.ndarray], page_size: int, max_group_keys: int = 4_000_000
    ) -> None:
        self.page_size = page_size
        self._prompts = prompts
        self._order = list(prompts)
        self._position = {rid: i for i, rid in enumerate(self._order)}
        self._next = 0  # first request (in order) not computed yet
        self._keys: dict[int, np.ndarray] = {}
        self._max_group_keys = max_group_keys
        self.computed_requests = 0

    def keys(self, request_id: int) -> np.ndarray:
        """The page keys of ``request_id``'s prompt (computing its group if needed)."""
        found = self._keys.get(request_id)
        if found is not None:
            return found
        pos = self._position[request_id]
        if pos < self._next:
            # Forgotten earlier (a finished request asked again): compute it alone.
            keys = batch_page_keys([self._prompts[request_id]], self.page_size)[0]
            self._keys[request_id] = keys
            return keys
        group: list[int] = []
        total = 0
        i = self._next
        while i < len(self._order) and (i <= pos or total < self._max_group_keys):
            rid = self._order[i]
            group.append(rid)
            total += len(self._prompts[rid]) // self.page_size
            i += 1
        self._next = i
        for rid, keys in zip(
            group, batch_page_keys([self._prompts[r] for r in group], self.page_size), strict=True
        ):
            self._keys[rid] = keys
        self.computed_requests += len(group)
        return self._keys[request_id]

    def forget(self, request_id: int) -> None:
        """Drop ``request_id``'s keys (it finished); asking again recomputes them."""
        self._keys.pop(request_id, None)


__all__ = ["PageKeyCache", "batch_page_keys"]
