"""Replay semantics, the published check values, the one-pass LRU curve, the opt bound, KVCM configs,
tiers and target capacities."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsim.cache.optimizer import (
    POLICIES,
    Job,
    PolicyParams,
    Trace,
    build_trace,
    load_trace,
    lru_curve,
    parse_config,
    replay,
    replay_config,
    run_jobs,
    smallest_capacity,
    smallest_lru_capacity,
    stack_profile,
    tier_levels,
    tier_results,
)
from kvsim.cache.optimizer.sweep import parse_tiers
from kvsim.core import ConfigError, UserInputError
from kvsim.workloads.cache_trace import CacheAccess
from tests.conftest import shared_path
from tests.optimizer.helpers import chained_traces, turns

CONVERSATION = ("data", "traces", "mooncake", "conversation_trace.jsonl")


@pytest.fixture(scope="module")
def conversation() -> Trace:
    return load_trace(shared_path(*CONVERSATION), "mooncake")


# --- semantics ------------------------------------------------------------------------------------------


def test_token_hits_are_capped_by_the_prompt() -> None:
    # Block size 4; r1's prompt is 6 tokens over 2 blocks (the last one partial): both hit -> min(8, 6).
    tr = turns([[1, 2], [1, 2]], lengths=[6, 6])
    res = replay(tr, "lru", math.inf)
    assert (res.hit_blocks, res.read_blocks, res.hit_tokens, res.read_tokens) == (2, 4, 6, 12)
    assert res.token_hit_rate == 0.5 and res.block_hit_rate == 0.5


def test_a_block_counts_only_with_its_prefix() -> None:
    # Capacity 2 evicts 1 (LRU) after r1; r2 reads 1 2 3: 2 and 3 are cached but 1 is not: k = 0.
    tr = turns([[1, 2, 3], [4], [1, 2, 3]])
    res = replay(tr, "lru", 3)
    assert res.hit_blocks == 0


def test_eviction_happens_after_the_request() -> None:
    # A request bigger than the cache still reads what was cached at its start.
    tr = turns([[1, 2], [1, 2, 3, 4, 5]])
    res = replay(tr, "lru", 2, victims=True)
    assert res.hit_blocks == 2
    assert res.victims == [1, 2, 3]


def test_read_only_refreshes_only_its_hits() -> None:
    accesses = [
        CacheAccess(0.0, "i", 0, (), [1, 2]),  # write 1 2
        CacheAccess(1.0, "i", 0, (), [3]),  # write 3: recency 1 2 3
        CacheAccess(2.0, "i", 8, [1, 9], ()),  # read: 1 hits (refreshed), 9 misses (not inserted)
        CacheAccess(3.0, "i", 0, (), [4]),  # write 4 -> capacity 3 evicts the LRU block: 2
    ]
    tr = build_trace(accesses, name="t", fmt="optimizer_schema", block_size=4)
    assert tr.read_only
    res = replay(tr, "lru", 3, victims=True)
    assert (res.hit_blocks, res.read_blocks, res.requests) == (1, 2, 1)
    assert res.victims == [2]


def test_ties_keep_file_order_and_disorder_is_noted() -> None:
    accesses = [
        CacheAccess(5.0, "i", 4, [1], [1], line=1),
        CacheAccess(1.0, "i", 4, [2], [2], line=2),
        CacheAccess(5.0, "i", 4, [1], [1], line=3),
        CacheAccess(1.0, "i", 4, [3], [3], line=4),
    ]
    tr = build_trace(accesses, name="t", fmt="mooncake", block_size=4)
    assert tr.times == [1.0, 1.0, 5.0, 5.0]
    assert [tr.keys[r[0]] for r in tr.reads] == [2, 3, 1, 1]
    assert tr.notes == ["timestamps out of order (first at line 2); accesses sorted stably by time"]


def test_instances_never_share_blocks() -> None:
    accesses = [CacheAccess(0.0, "a", 4, [7], [7]), CacheAccess(1.0, "b", 4, [7], [7])]
    tr = build_trace(accesses, name="t", fmt="optimizer_schema", block_size=4)
    assert tr.n_ids == 2 and tr.instances == ("a", "b") and tr.keys == [7, 7]
    assert replay(tr, "lru", math.inf).hit_blocks == 0


def test_capacity_must_be_positive() -> None:
    tr = turns([[1]])
    for bad in (0, -3, 2.5, float("nan"), -math.inf):
        with pytest.raises(UserInputError, match="capacity must be"):
            replay(tr, "lru", bad)


# --- check values -----------------------------------------------------------------------------------------


def test_conversation_check_values(conversation: Trace) -> None:
    assert (conversation.n_requests, conversation.n_ids, sum(map(len, conversation.reads))) == (
        12031,
        182790,
        288500,
    )
    small = replay(conversation, "lru", 6000)
    assert small.token_hit_rate == pytest.approx(0.1413, abs=1e-3)
    assert small.block_hit_rate == pytest.approx(0.1386, abs=1e-3)
    assert (small.hit_blocks, small.evicted_blocks) == (39993, 242326)
    big = replay(conversation, "lru", math.inf)
    assert big.token_hit_rate == pytest.approx(0.3736, abs=1e-3)
    assert big.block_hit_rate == pytest.approx(0.3664, abs=1e-3)
    assert (big.hit_blocks, big.evicted_blocks) == (105710, 0)


def test_conversation_curve_matches_replays(conversation: Trace) -> None:
    caps = [1, 512, 6000, 40000, math.inf]
    for res, cap in zip(lru_curve(conversation, caps), caps, strict=True):
        ref = replay(conversation, "lru", cap)
        assert (res.hit_blocks, res.hit_tokens, res.evicted_blocks) == (
            ref.hit_blocks,
            ref.hit_tokens,
            ref.evicted_blocks,
        )


@pytest.mark.slow
def test_conversation_opt_bounds_the_policies(conversation: Trace) -> None:
    opt = replay(conversation, "opt", 6000)
    assert opt.block_hit_rate == pytest.approx(0.3551, abs=1e-3)
    for name in ("lru", "leaf_aware_lru", "s3fifo"):
        assert replay(conversation, name, 6000).hit_blocks <= opt.hit_blocks


# --- properties on random prefix-chained traces ----------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chained_traces(), st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_curve_equals_separate_replays(trace: Trace, caps: list[int]) -> None:
    capacities: list[float] = [*caps, math.inf]
    for res, cap in zip(lru_curve(trace, capacities), capacities, strict=True):
        ref = replay(trace, "lru", cap)
        assert (res.hit_blocks, res.hit_tokens, res.inserted_blocks, res.evicted_blocks, res.read_blocks) == (
            ref.hit_blocks,
            ref.hit_tokens,
            ref.inserted_blocks,
            ref.evicted_blocks,
            ref.read_blocks,
        ), cap


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chained_traces(), st.integers(1, 30))
def test_opt_beats_every_policy_on_block_hits(trace: Trace, cap: int) -> None:
    best = replay(trace, "opt", cap).hit_blocks
    for name in POLICIES:
        for seed in (1, 2):
            params = PolicyParams(seed=seed, sample_rate=0.5, ttl_s=3.0)
            assert replay(trace, name, cap, params).hit_blocks <= best, (name, seed)


@settings(max_examples=60, deadline=None)
@given(chained_traces(max_requests=20), st.integers(1, 20))
def test_curve_timeline_equals_replay_timeline(trace: Trace, cap: int) -> None:
    fast = stack_profile(trace).result(cap, trace, timeline=True).timeline
    slow = replay(trace, "lru", cap, timeline=True).timeline
    assert fast is not None and slow is not None
    assert (fast.hit_blocks, fast.hit_tokens, fast.cached, fast.time_us) == (
        slow.hit_blocks,
        slow.hit_tokens,
        slow.cached,
        slow.time_us,
    )


def test_curve_refuses_read_only_traces() -> None:
    tr = build_trace(
        [CacheAccess(0.0, "i", 0, (), [1]), CacheAccess(1.0, "i", 4, [1], ())],
        name="t",
        fmt="mooncake",
        block_size=4,
    )
    with pytest.raises(ValueError, match="read-only"):
        lru_curve(tr, [1])
    # The sweep falls back to replays.
    assert run_jobs(tr, [Job("lru", 1)], curve=True, processes=1)[0].hit_blocks == 1


def test_parallel_sweep_equals_inline() -> None:
    tr = turns([[1, 2, 3], [1, 2, 4], [5, 6], [1, 7], [5, 6, 8], [1, 2, 3]])
    jobs = [Job(p, c) for p in ("lru", "s3fifo", "opt", "leaf_aware_lru") for c in (2, 4, math.inf)]
    inline = run_jobs(tr, jobs, processes=1)
    pooled = run_jobs(tr, jobs, processes=2)
    curved = run_jobs(tr, jobs, processes=2, curve=True)
    key = [(r.policy, r.capacity_blocks, r.hit_blocks, r.evicted_blocks) for r in inline]
    assert [(r.policy, r.capacity_blocks, r.hit_blocks, r.evicted_blocks) for r in pooled] == key
    assert [(r.policy, r.capacity_blocks, r.hit_blocks, r.evicted_blocks) for r in curved] == key


# --- KVCM configs -----------------------------------------------------------------------------------------


def _config(mode: int, batch: int, quota: int, instances: list[tuple[str, str]], used: float = 1.0) -> dict:  # type: ignore[type-arg]
    return {
        "trace_type": "optimizer_schema",
        "eviction_params": {"eviction_mode": mode, "eviction_batch_size_per_instance": batch},
        "instance_groups": [
            {
                "group_name": "g",
                "quota_capacity": quota,
                "used_percentage": used,
                "instances": [
                    {"instance_id": iid, "block_size": 4, "eviction_policy_type": pol}
                    for iid, pol in instances
                ],
            }
        ],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chained_traces(), st.integers(1, 30), st.sampled_from(list(POLICIES)), st.sampled_from([1, 2, 3]))
def test_config_with_one_instance_and_batch_one_is_the_plain_replay(
    trace: Trace, cap: int, policy: str, mode: int
) -> None:
    cfg = parse_config(_config(mode, 1, cap, [("instance", policy)]))
    (group,) = replay_config(trace, cfg, seed=7, victims=True)
    plain = replay(trace, policy, cap, PolicyParams(seed=7, ttl_s=300.0), victims=True)
    assert (group.hit_blocks, group.hit_tokens, group.evicted_blocks, group.victims) == (
        plain.hit_blocks,
        plain.hit_tokens,
        plain.evicted_blocks,
        plain.victims,
    )


def _two_instances() -> Trace:
    accesses = [
        CacheAccess(0.0, "A", 12, [1, 2, 3], [1, 2, 3]),
        CacheAccess(1.0, "B", 8, [11, 12], [11, 12]),
    ]
    return build_trace(accesses, name="t", fmt="optimizer_schema", block_size=4, instances={"A", "B"})


@pytest.mark.parametrize(
    ("mode", "victims"),
    [
        (1, [1, 2, 11, 12]),  # group rough: A then B evict a batch of 2 each in one round
        (2, [11, 12]),  # instance rough: the writer (B) evicts whole batches
        (3, [11]),  # instance precise: the writer evicts exactly the excess, 1
    ],
)
def test_eviction_modes(mode: int, victims: list[int]) -> None:
    # Quota 4 blocks; after B's write the group holds 5: excess 1, batch 2.
    cfg = parse_config(_config(mode, 2, 4, [("A", "lru"), ("B", "lru")]))
    (group,) = replay_config(_two_instances(), cfg, victims=True)
    assert group.victims == victims
    assert group.evicted_blocks == len(victims)


def test_used_percentage_lowers_the_quota() -> None:
    # floor(4 x 0.5) = 2 blocks: after A's write (3 blocks) precise mode evicts 1, after B's 2 more.
    cfg = parse_config(_config(3, 1, 4, [("A", "lru"), ("B", "lru")], used=0.5))
    (group,) = replay_config(_two_instances(), cfg, victims=True)
    assert group.victims == [1, 11, 12]


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="eviction_mode must be 1, 2 or 3"):
        parse_config(_config(4, 1, 4, [("A", "lru")]))
    with pytest.raises(ConfigError, match="quota_capacity must be > 0"):
        parse_config(_config(1, 1, 0, [("A", "lru")]))
    with pytest.raises(ConfigError, match="eviction_policy_type 'mru' is not one of"):
        parse_config(_config(1, 1, 4, [("A", "mru")]))
    with pytest.raises(ConfigError, match="missing field 'instance_groups'"):
        parse_config({"eviction_params": {}})


# --- tiers and targets ------------------------------------------------------------------------------------


def test_tier_levels() -> None:
    tiers = parse_tiers("HBM:2,DRAM:5,3FS:9")
    assert tiers == [("HBM", 2), ("DRAM", 5), ("3FS", 9)]
    assert tier_levels(tiers, "inclusive") == [2, 5, 9]
    assert tier_levels(tiers, "exclusive") == [2, 7, 16]
    with pytest.raises(UserInputError, match="must hold at least"):
        tier_levels(parse_tiers("HBM:5,DRAM:2"), "inclusive")
    with pytest.raises(UserInputError, match="choose one of: inclusive, exclusive"):
        tier_levels(tiers, "shared")
    for bad in ("HBM", "HBM:0", "HBM:x", "HBM:1,HBM:2"):
        with pytest.raises(UserInputError, match="--tiers"):
            parse_tiers(bad)


def test_tier_split_adds_up() -> None:
    tr = turns([[1, 2, 3], [1, 2, 4], [5, 6], [1, 7], [5, 6, 8], [1, 2, 3]])
    tiers = [("HBM", 2), ("DRAM", 3)]
    levels = tier_levels(tiers, "exclusive")
    by_level = run_jobs(tr, [Job("lru", c) for c in levels], curve=True, processes=1)
    whole, per_tier = tier_results(by_level, tiers)
    assert whole.capacity_blocks == 5
    assert [t["cumulative_hit_rate"] for t in per_tier] == [
        replay(tr, "lru", 2).token_hit_rate,
        replay(tr, "lru", 5).token_hit_rate,
    ]
    assert sum(t["hit_rate"] for t in per_tier) == pytest.approx(whole.token_hit_rate, abs=1e-15)  # type: ignore[misc]


def test_smallest_lru_capacity_is_exact(conversation: Trace) -> None:
    cap = smallest_lru_capacity(conversation, 0.3)
    assert cap == 21199
    assert (
        replay(conversation, "lru", cap).token_hit_rate
        >= 0.3
        > replay(conversation, "lru", cap - 1).token_hit_rate
    )
    assert smallest_lru_capacity(conversation, 0.5) is None


def test_smallest_capacity_by_bisection_agrees_with_lru() -> None:
    tr = turns([[1, 2, 3], [1, 2, 4], [5, 6], [1, 7], [5, 6, 8], [1, 2, 3], [5, 6, 8]])
    for target in (0.1, 0.2, 0.3, 0.4):
        exact = smallest_lru_capacity(tr, target)
        # Force the replay path by asking through a policy that equals LRU here: ttl with a huge lifetime.
        assert smallest_capacity(tr, "ttl", target, params=PolicyParams(ttl_s=1e9)) == exact
        if exact is not None:
            assert replay(tr, "lru", exact).token_hit_rate >= target
            assert exact == 1 or replay(tr, "lru", exact - 1).token_hit_rate < target
    with pytest.raises(UserInputError, match=r"must be in \(0, 1\]"):
        smallest_capacity(tr, "lru", 1.5)
