"""Exact victim orders of every replay policy on small hand-built traces.

The shared trace (4 turns, capacity 4 blocks, keys prefix-chained)::

    r0: 1 2 3      r1: 1 2 4      r2: 5 6      r3: 1 7

Parents: 2 -> 1, 3 -> 2, 4 -> 2, 6 -> 5, 7 -> 1. Each expected order is derived by hand in the test's
comment, following the policy's docstring.
"""

from __future__ import annotations

import math

import pytest

from kvsim.cache.optimizer import POLICIES, PolicyParams, make_policy, replay
from kvsim.core import UserInputError
from tests.optimizer.helpers import turns

REQUESTS = [[1, 2, 3], [1, 2, 4], [5, 6], [1, 7]]


@pytest.fixture
def trace():  # type: ignore[no-untyped-def]
    return turns(REQUESTS)


def test_lru_victims(trace) -> None:  # type: ignore[no-untyped-def]
    # After r1 the recency order is 3,1,2,4; r2 adds 5,6 -> evict 3,1; r3 misses 1 (evicted), adds 1,7
    # over 2,4,5,6 -> evict 2,4. Hits: r1 reads 1,2.
    res = replay(trace, "lru", 4, victims=True)
    assert res.victims == [3, 1, 2, 4]
    assert (res.hit_blocks, res.read_blocks, res.evicted_blocks, res.inserted_blocks) == (2, 10, 4, 8)


def test_leaf_aware_lru_victims(trace) -> None:  # type: ignore[no-untyped-def]
    # Leaves after r2: 3 (tick 3), 4 (tick 6), 6 (tick 8); 1, 2, 5 have cached children. Evict 3, then 4,
    # which makes 2 a leaf again at its own tick 5. r3 hits 1, inserts 7 under 1 -> evict 2 (tick 5).
    res = replay(trace, "leaf_aware_lru", 4, victims=True)
    assert res.victims == [3, 4, 2]
    assert (res.hit_blocks, res.evicted_blocks) == (3, 3)


def test_lfu_victims(trace) -> None:  # type: ignore[no-untyped-def]
    # Counts after r2: 1:2, 2:2, 3:1 (tick 3), 4:1 (tick 6), 5:1 (tick 7), 6:1 (tick 8) -> evict 3, 4.
    # r3: 1 -> 3, 7:1 (tick 10) -> the least (count, tick) is 5.
    res = replay(trace, "lfu", 4, victims=True)
    assert res.victims == [3, 4, 5]
    assert res.hit_blocks == 3


def test_s3fifo_victims(trace) -> None:  # type: ignore[no-untyped-def]
    # Small queue share max(1, 0.1 * 4) = 1. After r2 small = 1 2 3 4 5 6 with 1, 2 hit once: 1 and 2
    # move to main, 3 is dropped (ghost), then 4 (ghost). r3 hits 1 (main), 7 enters small; the small
    # queue (5 6 7) still holds >= its share, so 5 (never hit) goes.
    res = replay(trace, "s3fifo", 4, victims=True)
    assert res.victims == [3, 4, 5]
    assert res.hit_blocks == 3


def test_s3fifo_ghost_hit_goes_to_main() -> None:
    # Capacity 2 (small share 1). r2: small 1 2 3 -> evict 1 into the ghost queue. r3: 1 comes back from
    # the ghost straight into main; size 3 -> evict 2 (small, never hit). r4: small 3 4, main 1 -> evict 3.
    tr = turns([[1], [2], [3], [1], [4]])
    res = replay(tr, "s3fifo", 2, victims=True)
    assert res.victims == [1, 2, 3]


def test_opt_victims(trace) -> None:  # type: ignore[no-untyped-def]
    # After r2 next references: 1 -> r3, all others never. Ties at "never" go deepest first, then by
    # lower id: 3 and 4 (depth 2). r3: everything is "never"; depth 1 holds 2, 6, 7 -> 2.
    res = replay(trace, "opt", 4, victims=True)
    assert res.victims == [3, 4, 2]
    assert res.hit_blocks == 3


def test_opt_keeps_the_block_used_soonest() -> None:
    # Capacity 1: r1 inserts 2 -> 1 is next used at r3, 2 at r2: keep 2, evict 1. r2 hits 2. r3 inserts 1;
    # neither is used again, both at depth 0: the lower id, 1, goes.
    tr = turns([[1], [2], [2], [1]])
    res = replay(tr, "opt", 1, victims=True)
    assert res.victims == [1, 1]
    assert res.hit_blocks == 1


def test_ttl_expires_on_time(trace) -> None:  # type: ignore[no-untyped-def]
    timed = turns(REQUESTS, times=[0, 1, 2, 10])
    # Unbounded: at t=10 every block was last touched at t <= 2 <= 10 - 5: all expire, oldest first.
    res = replay(timed, "ttl", math.inf, PolicyParams(ttl_s=5), victims=True)
    assert res.victims == [3, 1, 2, 4, 5, 6]
    assert res.hit_blocks == 2
    # Bounded: LRU takes 3, 1 at r2 under pressure, expiry takes the rest at r3.
    res = replay(timed, "ttl", 4, PolicyParams(ttl_s=5), victims=True)
    assert res.victims == [3, 1, 2, 4, 5, 6]
    # A long ttl is plain LRU.
    assert replay(timed, "ttl", 4, PolicyParams(ttl_s=100), victims=True).victims == [3, 1, 2, 4]


def test_ttl_boundary_is_exclusive() -> None:
    # Accessed at t=0 with ttl 5: alive for a read at 4.999, gone at exactly 5.
    assert replay(turns([[1], [1]], times=[0, 4.999]), "ttl", math.inf, PolicyParams(ttl_s=5)).hit_blocks == 1
    assert replay(turns([[1], [1]], times=[0, 5.0]), "ttl", math.inf, PolicyParams(ttl_s=5)).hit_blocks == 0


def test_random_lru_with_a_full_sample_is_lru(trace) -> None:  # type: ignore[no-untyped-def]
    # 1000 draws over at most 6 cached blocks miss one with probability < 6 * (5/6)**1000: the sample
    # holds every block, so each victim is the true LRU block.
    res = replay(trace, "random_lru", 4, PolicyParams(sample_rate=0.001), victims=True)
    assert res.victims == [3, 1, 2, 4]


def test_random_lru_is_seeded(trace) -> None:  # type: ignore[no-untyped-def]
    # Two draws per victim: the victim is the older of two random cached blocks.
    first = replay(trace, "random_lru", 4, PolicyParams(seed=0, sample_rate=0.5), victims=True).victims
    again = replay(trace, "random_lru", 4, PolicyParams(seed=0, sample_rate=0.5), victims=True).victims
    assert first == again == [2, 3, 6]  # pinned: the stream spawn_rng(0, "random_lru")
    other = [
        replay(trace, "random_lru", 4, PolicyParams(seed=s, sample_rate=0.5), victims=True).victims
        for s in (1, 2, 3)
    ]
    assert other == [[1, 5, 2, 1], [3, 2, 4], [1, 5, 3, 2]]


def test_every_policy_equals_unbounded_at_infinity(trace) -> None:  # type: ignore[no-untyped-def]
    expected = replay(trace, "lru", math.inf)
    for name in POLICIES:
        res = replay(trace, name, math.inf, PolicyParams(ttl_s=1e9))
        assert (res.hit_blocks, res.evicted_blocks, res.inserted_blocks) == (
            expected.hit_blocks,
            0,
            expected.inserted_blocks,
        ), name


def test_unknown_policy_lists_the_choices(trace) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserInputError, match=r"unknown policy 'mru'; choose one of: lru, random_lru, "):
        make_policy("mru", trace, 4)


def test_bad_policy_parameters(trace) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserInputError, match="ttl must be > 0"):
        make_policy("ttl", trace, 4, PolicyParams(ttl_s=0))
    with pytest.raises(UserInputError, match="fraction must be in"):
        make_policy("s3fifo", trace, 4, PolicyParams(s3fifo_small=1.5))
