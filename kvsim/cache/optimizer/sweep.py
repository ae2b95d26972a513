"""Many replays at once: capacity sweeps in parallel processes, storage tiers and target hit rates.

- :func:`run_jobs` answers a list of ``(policy, capacity)`` pairs. With ``curve=True`` every LRU pair
  comes from one stack-distance pass (:mod:`~kvsim.cache.optimizer.curve`); the other pairs are
  separate replays spread over worker processes (``fork`` where available, so the trace is inherited
  rather than pickled). Results come back in job order.
- :func:`tier_results` answers ``--tiers``: a hierarchy is modelled as nested caches of the same policy.
  Tier ``t`` reaches the blocks of a cache as big as the tiers down to it: its own capacity when
  placement is *inclusive* (each tier also holds what the tiers above hold), the sum of the capacities
  down to it when *exclusive*. The hit rate credited to tier ``t`` is what that reach adds over the
  tiers above it. For LRU (and ``opt``) this is exact, because their caches nest (a smaller cache's
  content is always inside a bigger one's).
- :func:`smallest_capacity` answers ``--target-hit-rate``: the smallest capacity whose hit rate
  reaches the target; exact for LRU (binary search over the stack profile), binary search over replays
  for the other policies (exact when hit rates never fall as capacity grows, which holds for ``lru``,
  ``leaf_aware_lru`` on prefix-chained traces and ``opt``; for the others it is the capacity the search
  lands on, and the search's replays are checked).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from kvsim.cache.optimizer.curve import smallest_lru_capacity, stack_profile
from kvsim.cache.optimizer.policies import PolicyParams
from kvsim.cache.optimizer.replay import ReplayResult, replay
from kvsim.cache.optimizer.trace import Trace
from kvsim.core import UserInputError

PLACEMENTS = ("inclusive", "exclusive")
METRICS = ("token_hit_rate", "block_hit_rate")


@dataclass(frozen=True)
class Job:
    """One replay to run: a policy at a capacity (blocks or ``math.inf``)."""

    policy: str
    capacity: float


# Worker-process state (set by the pool initializer; inherited, not pickled, under fork).
_WORKER: dict[str, object] = {}


def _init_worker(trace: Trace, params: PolicyParams, timeline: bool) -> None:
    _WORKER["trace"] = trace
    _WORKER["params"] = params
    _WORKER["timeline"] = timeline


def _run_one(job: Job) -> ReplayResult:
    trace = _WORKER["trace"]
    assert isinstance(trace, Trace)
    params = _WORKER["params"]
    assert isinstance(params, PolicyParams)
    return replay(trace, job.policy, job.capacity, params, timeline=bool(_WORKER["timeline"]))


def default_processes() -> int:
    """Worker processes to use by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run_jobs(
    trace: Trace,
    jobs: Sequence[Job],
    params: PolicyParams | None = None,
    *,
    curve: bool = False,
    processes: int | None = None,
    timeline: bool = False,
) -> list[ReplayResult]:
    """Run every job; LRU jobs from the stack profile when ``curve`` (and the trace allows it).

    Args:
        trace: The trace.
        jobs: ``(policy, capacity)`` pairs.
        params: Policy knobs.
        curve: Answer LRU jobs from one stack-distance pass.
        processes: Worker processes for the other jobs (``None``: :func:`default_processes`; 1: inline).
        timeline: Keep per-read records.

    Returns:
        One result per job, in job order.
    """
    params = params or PolicyParams()
    results: list[ReplayResult | None] = [None] * len(jobs)
    pending: list[int] = []
    use_stack = curve and not trace.read_only
    for i, job in enumerate(jobs):
        if use_stack and job.policy == "lru":
            results[i] = stack_profile(trace).result(job.capacity, trace, timeline=timeline)
        else:
            pending.append(i)
    workers = default_processes() if processes is None else max(1, processes)
    workers = min(workers, len(pending))
    if workers <= 1:
        for i in pending:
            results[i] = replay(trace, jobs[i].policy, jobs[i].capacity, params, timeline=timeline)
    else:
        # The slowest jobs (opt, big capacities) first, so the pool ends evenly.
        pending.sort(key=lambda i: (jobs[i].policy != "opt", -min(jobs[i].capacity, 1e18)))
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(trace, params, timeline),
        ) as pool:
            for i, res in zip(pending, pool.map(_run_one, [jobs[i] for i in pending]), strict=True):
                results[i] = res
    return [r for r in results if r is not None]


def parse_tiers(spec: str) -> list[tuple[str, int]]:
    """Parse ``HBM:N,DRAM:N,3FS:N`` into ``[(name, blocks), ...]`` (fastest tier first).

    Raises:
        UserInputError: A malformed entry, a repeated name or a capacity that is not an integer > 0.
    """
    tiers: list[tuple[str, int]] = []
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        if not sep or not name.strip():
            raise UserInputError(f"--tiers: expected NAME:BLOCKS entries, got {part.strip()!r}")
        try:
            blocks = int(value)
        except ValueError:
            raise UserInputError(
                f"--tiers: {name.strip()} capacity must be an integer, got {value!r}"
            ) from None
        if blocks <= 0:
            raise UserInputError(f"--tiers: {name.strip()} capacity must be > 0 blocks, got {blocks}")
        if any(n == name.strip() for n, _ in tiers):
            raise UserInputError(f"--tiers: tier {name.strip()!r} appears twice")
        tiers.append((name.strip(), blocks))
    return tiers


def tier_levels(tiers: Sequence[tuple[str, int]], placement: str) -> list[int]:
    """The cache size each tier reaches (see the module docstring).

    Raises:
        UserInputError: Unknown placement, or inclusive tiers that shrink going down.
    """
    if placement not in PLACEMENTS:
        raise UserInputError(f"unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}")
    if placement == "exclusive":
        levels, total = [], 0
        for _, blocks in tiers:
            total += blocks
            levels.append(total)
        return levels
    caps = [blocks for _, blocks in tiers]
    for (upper, a), (lower, b) in itertools.pairwise(tiers):
        if b < a:
            raise UserInputError(
                f"--tiers: with inclusive placement {lower} ({b} blocks) must hold at least {upper} ({a})"
            )
    return caps


def tier_results(
    by_level: Sequence[ReplayResult], tiers: Sequence[tuple[str, int]]
) -> tuple[ReplayResult, list[dict[str, object]]]:
    """Combine the results at each tier's reach into the hierarchy's result and its per-tier split.

    Returns:
        The result of the deepest level (the whole hierarchy) and, per tier, ``tier``,
        ``capacity_blocks``, ``hit_rate`` (token hit rate the tier adds), ``block_hit_rate`` (same in
        blocks) and ``cumulative_hit_rate`` (token hit rate down to it).
    """
    per_tier: list[dict[str, object]] = []
    prev_tok = prev_blk = 0.0
    for (name, blocks), res in zip(tiers, by_level, strict=True):
        per_tier.append(
            {
                "tier": name,
                "capacity_blocks": blocks,
                "hit_rate": res.token_hit_rate - prev_tok,
                "block_hit_rate": res.block_hit_rate - prev_blk,
                "cumulative_hit_rate": res.token_hit_rate,
            }
        )
        prev_tok, prev_blk = res.token_hit_rate, res.block_hit_rate
    return by_level[-1], per_tier


def _metric(result: ReplayResult, metric: str) -> float:
    return result.token_hit_rate if metric == "token_hit_rate" else result.block_hit_rate


def smallest_capacity(
    trace: Trace,
    policy: str,
    target: float,
    metric: str = "token_hit_rate",
    params: PolicyParams | None = None,
) -> int | None:
    """The smallest capacity (blocks) whose ``metric`` reaches ``target`` under ``policy``.

    Returns:
        The capacity, or ``None`` when even an unbounded cache stays below the target.

    Raises:
        UserInputError: ``target`` outside ``(0, 1]`` or an unknown metric.
    """
    if not 0 < target <= 1:
        raise UserInputError(f"--target-hit-rate must be in (0, 1], got {target}")
    if metric not in METRICS:
        raise UserInputError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if policy == "lru" and not trace.read_only:
        return smallest_lru_capacity(trace, target, metric)
    params = params or PolicyParams()
    if _metric(replay(trace, policy, math.inf, params), metric) < target:
        return None
    # A cache that holds every block of the trace never evicts (ttl aside): the search's upper end.
    lo, hi = 1, max(1, trace.n_ids)
    if _metric(replay(trace, policy, hi, params), metric) < target:
        return None  # only ttl can get here: an unbounded cache still expires blocks
    while lo < hi:
        mid = (lo + hi) // 2
        if _metric(replay(trace, policy, mid, params), metric) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
