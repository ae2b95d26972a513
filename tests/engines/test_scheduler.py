"""The SGLang scheduler state machine on hand-built queues: exact batches, budgets and retraction."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.engines.sglang.config import ResolvedServer, ServerArgs
from kvsim.engines.sglang.scheduler import SGLangScheduler, SimulationError
from kvsim.workloads.base import Request


def server(
    pool: int = 10_000,
    chunk: int | None = 8192,
    max_prefill: int = 16384,
    max_running: int = 64,
    page_size: int = 1,
) -> ResolvedServer:
    args = ServerArgs(max_prefill_tokens=max_prefill, page_size=page_size)
    return ResolvedServer(args, pool, max_running, chunk, 0.88, 40960)


def req(rid: int, input_len: int, output_len: int, base: int | None = None, shared: int = 0) -> Request:
    """A request whose first ``shared`` tokens are 0..shared-1 and the rest unique to ``rid``."""
    start = 1_000_000 * (rid + 1) if base is None else base
    tokens = np.concatenate([np.arange(shared), np.arange(start, start + input_len - shared)]).astype(
        np.int64
    )
    return Request(rid, 0.0, input_len, output_len, tokens)


def run_step(sched: SGLangScheduler, now: float = 0.0, dt: float = 1.0):  # type: ignore[no-untyped-def]
    batch = sched.schedule(now)
    assert batch is not None
    finished = sched.complete(batch, now + dt)
    return batch, finished


def test_prefill_then_decode_and_token_times() -> None:
    sched = SGLangScheduler(server())
    sched.add_request(req(0, 100, 3), 0.0)
    batch, finished = run_step(sched, 0.0, 1.0)
    assert batch.kind == "prefill"
    assert (batch.extend, batch.past) == ([100], [0])
    assert finished == []
    decode, _ = run_step(sched, 1.0, 0.5)
    assert decode.kind == "decode" and decode.num_requests == 1
    assert decode.sum_context == 101
    assert decode.batch_json(sched.running) == "[[1,100]]"
    last, finished = run_step(sched, 1.5, 0.5)
    assert last.sum_context == 102
    assert [s.req.request_id for s in finished] == [0]
    assert sched.token_times(finished[0]).tolist() == [1.0, 1.5, 2.0]
    # Everything is released: the prompt stays cached (100 tokens, evictable), nothing private.
    assert sched.pool.private_tokens == 0
    assert sched.pool.tree.total_size() == 100
    assert sched.pool.evictable_tokens == 100
    assert sched.schedule(2.0) is None


def test_chunked_prefill_boundaries() -> None:
    sched = SGLangScheduler(server(chunk=4096))
    sched.add_request(req(0, 10_000 - 1000, 2), 0.0)
    sizes = []
    while True:
        batch, _ = run_step(sched)
        if batch.kind != "prefill":
            break
        sizes.append((batch.extend, batch.past))
    assert sizes == [([4096], [0]), ([4096], [4096]), ([808], [8192])]


def test_chunked_request_continues_first_and_shares_the_chunk_budget() -> None:
    sched = SGLangScheduler(server(chunk=1000))
    sched.add_request(req(0, 1500, 2), 0.0)
    sched.add_request(req(1, 300, 2), 0.0)
    first, _ = run_step(sched)
    assert [s.req.request_id for s in first.reqs] == [0]
    assert first.extend == [1000]
    second, _ = run_step(sched)
    # The chunked request's last 500 tokens come first, then request 1 fits in the remaining 500.
    assert [s.req.request_id for s in second.reqs] == [0, 1]
    assert (second.extend, second.past) == ([500, 300], [1000, 0])


def test_max_prefill_tokens_admits_the_first_request_anyway() -> None:
    sched = SGLangScheduler(server(chunk=None, max_prefill=1000))
    sched.add_request(req(0, 1200, 2), 0.0)
    sched.add_request(req(1, 10, 2), 0.0)
    batch, _ = run_step(sched)
    assert batch.extend == [1200]  # the first is admitted even above the budget
    batch, _ = run_step(sched)
    assert batch.kind == "prefill" and batch.extend == [10]


def test_token_budget_stops_admission() -> None:
    # rem_total = 3000 free; request 0 takes 1000 + 1000 (output estimate); request 1 needs
    # 1000 + 1000 >= 1000 remaining -> NO_TOKEN.
    sched = SGLangScheduler(server(pool=3000))
    sched.add_request(req(0, 1000, 1000), 0.0)
    sched.add_request(req(1, 1000, 1000), 0.0)
    batch, _ = run_step(sched)
    assert [s.req.request_id for s in batch.reqs] == [0]
    assert sched.batch_is_full is True
    assert sched.num_waiting == 1


def test_running_requests_reserve_output_with_new_token_ratio() -> None:
    sched = SGLangScheduler(server(pool=5000))
    sched.add_request(req(0, 1000, 2000), 0.0)
    run_step(sched)  # prefill request 0; it now reserves min(1999, 4096) * 0.7 = 1399.3
    sched.add_request(req(1, 1000, 1000), 1.0)
    # free 4000 - 1399.3 reserved = 2600.7 > 2000 needed -> admitted
    batch, _ = run_step(sched, 1.0)
    assert [s.req.request_id for s in batch.reqs] == [1]


def test_prefix_match_locks_and_skips_cached_tokens() -> None:
    sched = SGLangScheduler(server())
    sched.add_request(req(0, 600, 2, shared=500), 0.0)
    run_step(sched)
    sched.add_request(req(1, 700, 2, shared=500), 1.0)
    batch, _ = run_step(sched, 1.0)
    assert batch.kind == "prefill"
    assert [s.req.request_id for s in batch.reqs] == [1]
    assert (batch.extend, batch.past) == ([200], [500])
    assert batch.reqs[0].cached_tokens == 500
    # 500 shared + 100 + 200 unique tokens are cached; all of it is locked by running requests.
    assert sched.pool.tree.total_size() == 800
    assert sched.pool.evictable_tokens == 0


def test_full_prompt_hit_still_computes_the_last_token() -> None:
    sched = SGLangScheduler(server())
    sched.add_request(req(0, 100, 1, base=7), 0.0)
    run_step(sched)
    sched.add_request(req(1, 100, 1, base=7), 1.0)
    batch, finished = run_step(sched, 1.0)
    assert (batch.extend, batch.past) == ([1], [99])
    assert finished[0].cached_tokens == 99


def test_retraction_picks_fewest_outputs_then_longest_prompt() -> None:
    # Pool of 330 tokens; a low conservativeness makes the scheduler admit more than decode can hold.
    resolved = ResolvedServer(ServerArgs(schedule_conservativeness=0.3), 330, 64, None, 0.88, 40960)
    sched = SGLangScheduler(resolved)
    assert sched.new_token_ratio == pytest.approx(0.21)
    sched.add_request(req(0, 100, 80), 0.0)
    run_step(sched)
    sched.add_request(req(1, 101, 80), 1.0)
    sched.add_request(req(2, 102, 50), 1.0)
    batch, _ = run_step(sched, 1.0)
    # 230 available - 79 * 0.21 reserved = 213.4 >= 101 + 80; then 32.4 left < 102 + 50 (NO_TOKEN).
    assert [s.req.request_id for s in batch.reqs] == [1]
    for _ in range(64):
        batch, _ = run_step(sched)
        assert batch.kind == "decode" and batch.num_requests == 2
    assert sched.pool.free_tokens == 1 and sched.num_retractions == 0
    # The 65th decode step needs 2 slots: both have 65 outputs, so the longer prompt (request 1) goes.
    batch, _ = run_step(sched)
    assert batch.kind == "decode" and batch.num_requests == 1
    assert sched.num_retractions == 1
    assert [s.req.request_id for s in sched.waiting] == [2, 1]
    assert sched.waiting[1].output_done == 65
    assert sched.new_token_ratio == 1.0  # min(1, (65 + 20) / 80)
    # Its prompt stays cached and evictable; its private KV (64 decoded tokens) was freed.
    assert sched.pool.evictable_tokens == 101


def test_request_larger_than_the_pool_is_refused() -> None:
    sched = SGLangScheduler(server(pool=100))
    with pytest.raises(SimulationError, match="needs 150 KV tokens, more than the whole pool of 100"):
        sched.add_request(req(0, 100, 50), 0.0)


def test_max_running_requests() -> None:
    sched = SGLangScheduler(server(max_running=2))
    for rid in range(3):
        sched.add_request(req(rid, 10, 5), 0.0)
    batch, _ = run_step(sched)
    assert [s.req.request_id for s in batch.reqs] == [0, 1]
    assert sched.schedule(1.0).kind == "decode"  # type: ignore[union-attr]
