"""The L3 tier's building blocks: page keys computed across many prompts at once, shared-bandwidth transfers,
and the per-token key view a radix node carries."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.cache import block_keys
from kvsim.engines.sglang.page_keys import PageKeyCache, batch_page_keys
from kvsim.engines.sglang.storage import TokenKeys
from kvsim.engines.sglang.storage_io import TransferIO
from kvsim.hardware.storage import load_storage_tier

TIER = load_storage_tier(
    {
        "name": "t",
        "read_bandwidth": "1000 B/s",
        "write_bandwidth": "500 B/s",
        "read_latency": "1 s",
        "write_latency": "0 s",
        "capacity": "unlimited",
    }
)


@pytest.mark.parametrize("page_size", [1, 3, 64])
def test_batch_page_keys_equal_kvcm_block_keys(page_size: int) -> None:
    rng = np.random.default_rng(7)
    sequences = [
        rng.integers(-(2**63), 2**63 - 1, size=int(rng.integers(0, 900)), dtype=np.int64) for _ in range(30)
    ]
    sequences.append(np.array([1, 2, 3, 4, 5], dtype=np.int64))  # the reference's first test vector
    keys = batch_page_keys(sequences, page_size)
    for sequence, got in zip(sequences, keys, strict=True):
        assert got.dtype == np.int64 and not got.flags.writeable
        assert got.tolist() == block_keys(sequence, page_size)
    assert batch_page_keys([np.array([1, 2, 3, 4, 5])], 2)[0].tolist() == [
        -8366447769517741626,
        455111481605203084,
    ]


def test_page_key_cache_computes_groups_lazily_and_forgets() -> None:
    prompts = {rid: np.arange(rid * 1000, rid * 1000 + 100, dtype=np.int64) for rid in range(5)}
    cache = PageKeyCache(prompts, 10, max_group_keys=25)
    assert cache.keys(1).tolist() == block_keys(prompts[1], 10)
    # Requests 0 and 1 (up to the one asked for), then 2 more while the group holds under 25 keys.
    assert cache.computed_requests == 3
    assert cache.keys(2).tolist() == block_keys(prompts[2], 10)
    assert cache.computed_requests == 3
    cache.forget(1)
    assert cache.keys(1).tolist() == block_keys(prompts[1], 10)  # recomputed alone
    assert cache.computed_requests == 3


def test_token_keys_give_the_pages_ending_in_a_slice() -> None:
    keys = np.arange(100, 110, dtype=np.int64)  # pages 0..9 of 4 tokens
    view = TokenKeys(keys, 4, 0, 40)
    assert len(view) == 40
    assert view[:8].page_keys().tolist() == [100, 101]
    # Tokens 6..17: pages 1 (ends at 7), 2 (11), 3 (15); page 4 ends at 19, outside.
    assert view[6:18].page_keys().tolist() == [101, 102, 103]
    assert view[6:18][2:6].page_keys().tolist() == [102]  # tokens 8..11
    assert view[8:11].page_keys().tolist() == []  # page 2 ends at token 11
    assert view[36:40].page_keys().tolist() == [109]


def test_transfers_share_a_channel_equally() -> None:
    io = TransferIO()
    done: dict[str, float] = {}
    # Both join at t=1 (1 s latency): 1000 B/s shared by two -> the 500 B transfer ends at 2 s, then
    # the 1500 B one has 1000 B left at the full rate -> 3 s.
    io.submit(TIER, "read", 500, 0.0, lambda t: done.setdefault("small", t))
    io.submit(TIER, "read", 1500, 0.0, lambda t: done.setdefault("large", t))
    # Writes have their own channel (500 B/s, no latency): 250 B in 0.5 s, unaffected by the reads.
    io.submit(TIER, "write", 250, 0.0, lambda t: done.setdefault("write", t))
    times = []
    while io.next_event_s() is not None:
        t, finished = io.step()
        times.append(t)
        for transfer in finished:
            transfer.on_done(t)
    assert done == pytest.approx({"write": 0.5, "small": 2.0, "large": 3.0})
    # Events: the write joins (no latency), the write ends, the reads join, the small read ends, the large.
    assert times == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.0])
    assert io.busy_seconds("read") == pytest.approx(2.0)
    assert io.moved_bytes("read") == pytest.approx(2000)


def test_a_cancelled_transfer_hands_its_share_back() -> None:
    io = TransferIO()
    done: dict[str, float] = {}
    first = io.submit(TIER, "read", 1000, 0.0, lambda t: done.setdefault("first", t))
    io.submit(TIER, "read", 1000, 0.0, lambda t: done.setdefault("second", t))
    t, finished = io.step()  # both join at 1 s
    assert (t, finished) == (1.0, [])
    io.advance(1.5)  # 250 B each so far
    io.cancel(first)
    t, finished = io.step()
    assert t == pytest.approx(1.5 + 750 / 1000)
    finished[0].on_done(t)
    assert done == pytest.approx({"second": 2.25})
    assert io.next_event_s() is None
