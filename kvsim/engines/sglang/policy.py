"""Waiting-queue order: SGLang's schedule policies (``managers/schedule_policy.py``, ``calc_priority``).

- ``fcfs``: arrival order (retracted requests re-enter at the back).
- ``lpm``: longest cached prefix first. Requests whose cached prefix is at most 32 tokens are also matched
  against the other waiting requests (in-batch prefix caching): one that shares 32 or more tokens with an
  earlier waiting request is deprioritised, so that one request fills the cache for the others.
  With more than 128 waiting requests the policy falls back to ``fcfs``.
- ``dfs-weight``: depth-first over the radix tree, heavier subtrees (more waiting requests ending in
  them) first; requests at a node follow its children.
- ``lof``: longest output (``max_new_tokens``) first.
- ``random``: a shuffle drawn from the run's seeded generator.

All sorts are stable, so ties keep queue order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from kvsim.cache.radix import RadixNode, RadixTree
from kvsim.engines.sglang.config import PREFIX_AWARE_QUEUE_LIMIT

if TYPE_CHECKING:
    from kvsim.engines.sglang.kv_pool import KVPool
    from kvsim.engines.sglang.scheduler import ReqState

#: In-batch prefix caching thresholds (SGLang's IN_BATCH_PREFIX_CACHING_*_THRESHOLD defaults).
IN_BATCH_CHECK_THRESHOLD = 32
IN_BATCH_DEPRIORITIZE_THRESHOLD = 32


def order_waiting(
    policy: str, waiting: list[ReqState], pool: KVPool, rng: np.random.Generator, now: float
) -> list[ReqState]:
    """Return ``waiting`` in the order ``policy`` admits it."""
    if policy == "fcfs":
        return waiting
    if policy == "lof":
        return sorted(waiting, key=lambda s: -s.output_len)
    if policy == "random":
        return [waiting[i] for i in rng.permutation(len(waiting))]
    if policy == "lpm":
        if len(waiting) > PREFIX_AWARE_QUEUE_LIMIT:
            return waiting
        return _longest_prefix_first(waiting, pool, now)
    if policy == "dfs-weight":
        return _dfs_weight(waiting, pool, now)
    raise ValueError(f"unknown schedule policy {policy!r}")


def _prefix_tokens(state: ReqState) -> np.ndarray:
    # Only prompt tokens are ever cached (outputs are not inserted), so match the prompt; never its last
    # token, which must be computed to produce logits.
    return state.tokens[: min(state.input_len, state.full_len - 1)]


def _longest_prefix_first(waiting: list[ReqState], pool: KVPool, now: float) -> list[ReqState]:
    in_batch = RadixTree()
    keys: dict[int, float] = {}
    for position, state in enumerate(waiting):
        tokens = _prefix_tokens(state)
        cached, _ = pool.match(tokens, len(tokens), now)
        deprioritized = False
        if cached <= IN_BATCH_CHECK_THRESHOLD:
            shared = in_batch.match_prefix(tokens).length
            if shared >= IN_BATCH_DEPRIORITIZE_THRESHOLD:
                deprioritized = True
            else:
                in_batch.insert(tokens, now)
        keys[position] = float("inf") if deprioritized else -cached
    order = sorted(range(len(waiting)), key=lambda i: keys[i])
    return [waiting[i] for i in order]


def _dfs_weight(waiting: list[ReqState], pool: KVPool, now: float) -> list[ReqState]:
    root = pool.tree.root
    by_node: dict[int, list[ReqState]] = defaultdict(list)
    nodes: dict[int, RadixNode] = {}
    for state in waiting:
        tokens = _prefix_tokens(state)
        _, node = pool.match(tokens, len(tokens), now)
        node = node or root
        by_node[node.id].append(state)
        nodes[node.id] = node
    # A node weighs as many waiting requests as end in its subtree.
    weight: dict[int, int] = defaultdict(int)
    for node_id, states in by_node.items():
        node: RadixNode | None = nodes[node_id]
        while node is not None:
            weight[node.id] += len(states)
            node = node.parent
    ordered: list[ReqState] = []

    def visit(node: RadixNode) -> None:
        children = [c for c in node.children.values() if weight.get(c.id, 0) > 0]
        # Heaviest first; ties by node id so the order does not depend on dict history.
        children.sort(key=lambda c: (-weight[c.id], c.id))
        for child in children:
            visit(child)
        ordered.extend(by_node.get(node.id, ()))

    visit(root)
    return ordered
