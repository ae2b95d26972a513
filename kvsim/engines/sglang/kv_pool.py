"""The device KV pool of a simulated SGLang server: a token budget shared by the radix prefix cache and
the requests' private KV.

SGLang keeps every token's KV in one pool of ``max_total_tokens`` slots. Tokens that belong to the radix
cache are either locked (some running request uses them) or evictable; the rest of a running request's
KV (the part not yet inserted into the tree, and its decoded tokens) is private to it. kvsim only counts
slots, it never tracks slot indices: ``free = total - tree_size - private``.

With ``disable_radix_cache`` the tree stays empty and every request's KV is private, as in SGLang's
``ChunkCache``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kvsim.cache.radix import RadixNode, RadixTree


class KVPool:
    """Token-slot accounting over one :class:`~kvsim.cache.radix.RadixTree` (the L1 prefix cache)."""

    def __init__(self, total_tokens: int, page_size: int = 1, enable_prefix_cache: bool = True) -> None:
        self.total_tokens = total_tokens
        self.page_size = page_size
        self.enable_prefix_cache = enable_prefix_cache
        self.tree = RadixTree(policy="lru")
        self.private_tokens = 0
        self.evicted_tokens = 0

    # ---- sizes --------------------------------------------------------------------------------------
    @property
    def free_tokens(self) -> int:
        """Slots nobody holds."""
        return self.total_tokens - self.tree.total_size() - self.private_tokens

    @property
    def evictable_tokens(self) -> int:
        """Slots held by the cache but by no running request."""
        return self.tree.evictable_size()

    @property
    def available_tokens(self) -> int:
        """Slots an allocation could get, evicting cache if needed."""
        return self.free_tokens + self.tree.evictable_size()

    # ---- allocation -----------------------------------------------------------------------------------
    def allocate(self, num_tokens: int) -> bool:
        """Take ``num_tokens`` private slots, evicting unlocked cache leaves (LRU) when short.

        Returns False, leaving everything unchanged, when even a full eviction cannot make room.
        """
        shortfall = num_tokens - self.free_tokens
        if shortfall > 0:
            if shortfall > self.tree.evictable_size():
                return False
            self.evicted_tokens += self.tree.evict(shortfall).num_blocks
        self.private_tokens += num_tokens
        return True

    def release(self, num_tokens: int) -> None:
        """Give back private slots."""
        self.private_tokens -= num_tokens
        assert self.private_tokens >= 0, "released more KV than was allocated"

    # ---- prefix cache -----------------------------------------------------------------------------------
    def match(self, tokens: np.ndarray, max_len: int, now: float) -> tuple[int, RadixNode | None]:
        """Longest cached prefix of ``tokens[:max_len]``, rounded down to whole pages."""
        if not self.enable_prefix_cache or max_len <= 0:
            return 0, None
        max_len -= max_len % self.page_size
        result = self.tree.match_prefix(tokens[:max_len], now)
        length = result.length - result.length % self.page_size
        if length != result.length:
            result = self.tree.match_prefix(tokens[:length], None)
            length = result.length
        return length, (result.last_node if length > 0 else None)

    def lock(self, node: RadixNode | None) -> None:
        """Protect ``node`` and its ancestors from eviction."""
        if node is not None:
            self.tree.inc_lock(node)

    def unlock(self, node: RadixNode | None) -> None:
        """Undo one :meth:`lock`."""
        if node is not None:
            self.tree.dec_lock(node)

    def insert(
        self,
        tokens: np.ndarray,
        now: float,
        locked_len: int,
        chunked: bool = False,
        value: Sequence[Any] | None = None,
    ) -> tuple[RadixNode | None, int]:
        """Move a request's computed prefix ``tokens`` into the cache.

        The request holds private slots for ``tokens[locked_len:]``; the whole pages among them move to
        the tree, except duplicates of blocks another request inserted meanwhile, which are freed
        (SGLang frees such duplicate KV too). Returns the new last node and the new locked length; the
        caller still holds private slots for any partial page beyond it. ``chunked`` (the insert of an
        unfinished chunk) matters only to HiCache's hit counting, and ``value`` (a payload aligned with
        ``tokens`` that new nodes keep, such as the page keys an L3 tier needs) only to the HiCache pool.
        """
        if not self.enable_prefix_cache:
            return None, 0
        length = len(tokens) - len(tokens) % self.page_size
        if length <= locked_len:
            return None, locked_len
        result = self.tree.insert(tokens[:length], now)
        self.private_tokens -= length - locked_len
        return result.last_node, length
