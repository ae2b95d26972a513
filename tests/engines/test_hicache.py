"""HiCache on hand-built sequences: tier transitions, each write policy's backups, load-back costs, timing.

Copies are priced by a toy copy function (1 ms per run plus 1 ns per byte) on a 4-layer model with 1000
KV bytes per token and layer, so every cost below can be checked by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.engines.driver import EngineDriver
from kvsim.engines.sglang.config import HiCacheSettings, ResolvedServer, ServerArgs
from kvsim.engines.sglang.hicache import L2Transfers, TransferModel
from kvsim.engines.sglang.scheduler import ScheduledBatch, SGLangScheduler
from kvsim.workloads.base import Request, Workload

LAYERS = 4
KV_BYTES_PER_TOKEN = 4000  # 1000 per layer
PROMPT_A = np.arange(10_000, 10_600)  # 600 tokens
PROMPT_B = np.arange(50_000, 50_700)  # 700 tokens


def toy_copy(direction: str, nbytes: float, chunks: int) -> float:
    """1 ms per contiguous run plus 1 ns per byte, in both directions."""
    return chunks * 1e-3 + nbytes * 1e-9


def backup_s(tokens: int, runs: int = 1) -> float:
    return runs * 1e-3 + tokens * KV_BYTES_PER_TOKEN * 1e-9


def load_layer_s(tokens: int, runs: int = 1) -> float:
    return runs * 1e-3 + tokens * (KV_BYTES_PER_TOKEN // LAYERS) * 1e-9


def scheduler(
    policy: str = "write_through",
    pool: int = 1000,
    host: int = 3000,
    chunk: int | None = None,
    page_size: int = 1,
    layout: str = "layer_first",
    overlap: bool = True,
) -> SGLangScheduler:
    args = ServerArgs(
        page_size=page_size,
        enable_hierarchical_cache=True,
        hicache_write_policy=policy,
        disable_overlap_schedule=not overlap,
    )
    settings = HiCacheSettings(host, policy, "kernel", layout)
    server = ResolvedServer(args, pool, 64, chunk, 0.88, 40960, hicache=settings)
    transfer = TransferModel(LAYERS, KV_BYTES_PER_TOKEN, toy_copy, layout, page_size)
    return SGLangScheduler(server, transfer=transfer)


def req(rid: int, tokens: np.ndarray, output_len: int = 1) -> Request:
    return Request(rid, 0.0, len(tokens), output_len, np.asarray(tokens, dtype=np.int64))


def step(sched: SGLangScheduler, now: float, end: float) -> ScheduledBatch:
    batch = sched.schedule(now)
    assert batch is not None
    sched.complete(batch, end)
    return batch


def tiers(sched: SGLangScheduler, tokens: np.ndarray) -> tuple[str, ...]:
    """Tiers of the node that ends exactly at ``tokens`` (read without touching statistics)."""
    tree = sched.pool.tree
    result = tree.match_prefix(tokens, None)
    assert result.length == len(tokens)
    return tree.tiers_of(result.last_node)


def sizes(sched: SGLangScheduler) -> tuple[int, int]:
    tree = sched.pool.tree
    return tree.tier_size("device"), tree.tier_size("host")


def test_evicted_to_host_matched_and_loaded_back_write_through() -> None:
    sched = scheduler()
    hicache = sched.hicache
    assert hicache is not None
    sched.add_request(req(0, PROMPT_A), 0.0)
    first = step(sched, 0.0, 1.0)
    assert (first.extend, first.l2) == ([600], L2Transfers())
    # Write-through: the prompt is on both tiers at once, locked until its 600-token copy completes.
    assert tiers(sched, PROMPT_A) == ("device", "host")
    assert sizes(sched) == (600, 600)
    assert hicache.evictable_tokens == 0

    # Before the copy completes (1 s + 3.4 ms) the locked prompt cannot make room for B: no batch. With
    # HiCache that does not mark the batch full (nothing runs), and the scheduler asks to be woken then.
    sched.add_request(req(1, PROMPT_B), 1.001)
    assert sched.schedule(1.001) is None
    assert sched.batch_is_full is False
    assert sched.next_wakeup_s(1.001) == pytest.approx(1.0 + backup_s(600))
    # After it, the scheduler notices the completion: A is evicted from L1 and stays on L2.
    second = step(sched, 1.01, 2.0)
    assert second.extend == [700]
    assert second.l2 == L2Transfers(backup_tokens=600, backup_s=pytest.approx(backup_s(600)))
    assert tiers(sched, PROMPT_A) == ("host",)
    assert sizes(sched) == (700, 1300)
    assert hicache.evicted_tokens == 600

    # C shares A's 600 tokens: the match finds no device prefix and a 600-token host hit.
    prompt_c = np.concatenate([PROMPT_A, np.arange(90_000, 90_050)])
    state = sched.add_request(req(2, prompt_c), 3.0)
    assert hicache.match_tiers(prompt_c, 649, 3.0)[::2] == (0, 600)
    third = step(sched, 3.0, 4.0)
    # Loading 600 tokens needs room: B (700, backed up) leaves L1. A is computed from position 600.
    assert (third.extend, third.past) == ([50], [600])
    assert third.l2 is not None
    assert third.l2.load_tokens == 600
    assert third.l2.load_layer_s == pytest.approx(load_layer_s(600))  # 1 ms + 600 x 1000 B x 1 ns
    assert third.l2.load_s == pytest.approx(LAYERS * load_layer_s(600))
    assert (third.l2.backup_tokens, third.l2.backup_s) == (700, pytest.approx(backup_s(700)))
    assert (state.cached_tokens, state.cached_host) == (600, 600)
    assert tiers(sched, PROMPT_A) == ("device", "host")
    assert tiers(sched, PROMPT_B) == ("host",)
    assert sizes(sched) == (650, 1350)
    assert (hicache.loaded_tokens, hicache.backed_up_tokens) == (600, 1350)
    sched.pool.tree.check_invariants()


def test_write_through_selective_backs_up_on_the_second_insert_pass() -> None:
    sched = scheduler("write_through_selective")
    sched.add_request(req(0, PROMPT_A, output_len=2), 0.0)
    step(sched, 0.0, 1.0)
    # One insert pass (the end of prefill): below the threshold of 2, nothing goes to host.
    assert tiers(sched, PROMPT_A) == ("device",)
    decode = step(sched, 1.0, 2.0)
    assert decode.kind == "decode" and decode.l2 == L2Transfers()
    # The request finished: SGLang's insert at finish is the second pass, so the copy starts now.
    assert tiers(sched, PROMPT_A) == ("device", "host")
    assert sched.pool.tree.match_prefix(PROMPT_A, None).last_node.lock_ref == 1  # the copy's lock
    sched.add_request(req(1, PROMPT_B), 2.5)
    assert step(sched, 2.5, 3.0).l2 == L2Transfers(backup_tokens=600, backup_s=pytest.approx(backup_s(600)))


def test_chunk_inserts_do_not_count_as_hits() -> None:
    sched = scheduler("write_through", chunk=400)
    sched.add_request(req(0, PROMPT_A), 0.0)
    step(sched, 0.0, 1.0)  # the first 400-token chunk
    assert tiers(sched, PROMPT_A[:400]) == ("device",)
    step(sched, 1.0, 2.0)  # the last 200 tokens: a complete pass backs up both nodes
    assert tiers(sched, PROMPT_A[:400]) == ("device", "host")
    assert tiers(sched, PROMPT_A) == ("device", "host")
    assert sched.hicache is not None and sched.hicache.backed_up_tokens == 600


def test_write_back_copies_only_eviction_victims_and_the_scheduler_waits() -> None:
    sched = scheduler("write_back")
    sched.add_request(req(0, PROMPT_A), 0.0)
    step(sched, 0.0, 1.0)
    assert tiers(sched, PROMPT_A) == ("device",)
    assert sched.pool.evictable_tokens == 600  # no copy in flight, nothing locked
    sched.add_request(req(1, PROMPT_B), 1.0)
    second = step(sched, 1.0, 2.0)
    # B's 700 tokens evict A, which is copied to host first; the copy blocks the scheduler.
    expected = backup_s(600)
    assert second.l2 == L2Transfers(
        backup_tokens=600, backup_s=pytest.approx(expected), blocking_s=pytest.approx(expected)
    )
    assert tiers(sched, PROMPT_A) == ("host",)
    assert tiers(sched, PROMPT_B) == ("device",)
    prompt_c = np.concatenate([PROMPT_A, np.arange(90_000, 90_050)])
    state = sched.add_request(req(2, prompt_c), 2.0)
    third = step(sched, 2.0, 3.0)
    # Loading A evicts B, which is written back in turn.
    assert third.extend == [50] and state.cached_host == 600
    assert third.l2 is not None
    assert (third.l2.load_tokens, third.l2.backup_tokens) == (600, 700)
    assert third.l2.blocking_s == pytest.approx(backup_s(700))


def test_full_host_pool_evicts_host_only_leaves_lru_first() -> None:
    sched = scheduler(host=1100)
    hicache = sched.hicache
    assert hicache is not None
    sched.add_request(req(0, PROMPT_A), 0.0)
    step(sched, 0.0, 1.0)
    sched.add_request(req(1, PROMPT_B), 1.01)
    step(sched, 1.01, 2.0)
    # B's 700-token backup found 500 free host slots: SGLang's evict_host(700) dropped A (host-only).
    assert hicache.host_evicted_tokens == 600
    assert sched.pool.tree.match_prefix(PROMPT_A, None).length == 0
    assert sizes(sched) == (700, 700)
    prompt_c = np.concatenate([PROMPT_A, np.arange(90_000, 90_050)])
    state = sched.add_request(req(2, prompt_c), 3.0)
    assert step(sched, 3.0, 4.0).extend == [650]
    assert state.cached_tokens == 0


def test_short_host_hits_are_recomputed_and_the_node_returns_to_device() -> None:
    sched = scheduler()
    prefix = np.arange(10_000, 10_008)  # 8 tokens: under the load-back threshold of 10
    sched.add_request(req(0, prefix), 0.0)
    step(sched, 0.0, 1.0)
    sched.add_request(req(1, np.arange(50_000, 50_995)), 1.01)
    step(sched, 1.01, 2.0)
    assert tiers(sched, prefix) == ("host",)
    prompt = np.concatenate([prefix, np.arange(90_000, 90_020)])
    state = sched.add_request(req(2, prompt), 2.01)
    batch = step(sched, 2.01, 3.0)
    assert (batch.extend, batch.past, state.cached_tokens) == ([28], [0], 0)
    assert batch.l2 is not None and batch.l2.load_tokens == 0
    # The recomputed prefix is inserted over the host-only node: it is on device again, not duplicated.
    assert tiers(sched, prefix) == ("device", "host")
    assert sched.pool.tree.tier_size("device") == 28
    sched.pool.tree.check_invariants()


def test_load_back_runs_one_per_node_or_one_per_page() -> None:
    # A prefix split into two nodes (a 200-token system part, then a 400-token question part).
    for layout, runs in (("layer_first", 2), ("page_first", 150)):
        # (Page-first backups are one run per page too: 1 s between steps lets every copy complete.)
        sched = scheduler(page_size=4, layout=layout)
        sched.add_request(req(0, PROMPT_A[:200]), 0.0)
        step(sched, 0.0, 1.0)
        sched.add_request(req(1, PROMPT_A), 2.0)
        step(sched, 2.0, 3.0)
        sched.add_request(req(2, np.arange(50_000, 50_900)), 4.0)
        step(sched, 4.0, 5.0)
        assert tiers(sched, PROMPT_A[:200]) == ("host",) and tiers(sched, PROMPT_A) == ("host",)
        prompt = np.concatenate([PROMPT_A, np.arange(90_000, 90_050)])
        sched.add_request(req(3, prompt), 6.0)
        batch = step(sched, 6.0, 7.0)
        assert batch.l2 is not None and batch.l2.load_tokens == 600
        assert batch.l2.load_layer_s == pytest.approx(load_layer_s(600, runs)), layout


class _FixedPredictor:
    """Every step takes ``gpu_ms`` of GPU time."""

    def __init__(self, gpu_ms: float) -> None:
        self.gpu_ms = gpu_ms

    def predict_sums(self, sums: object) -> object:
        class _Step:
            step_time_ms = self.gpu_ms

        return _Step()


def _driver(sched: SGLangScheduler, gpu_ms: float = 8.0) -> EngineDriver:
    return EngineDriver(sched, _FixedPredictor(gpu_ms), Workload("test", []))  # type: ignore[arg-type]


def test_step_time_pipelines_the_load_per_layer() -> None:
    # 4 layers of 2 ms compute; CPU time 1 ms + 6 us per request.
    batch = ScheduledBatch(kind="prefill", num_requests=1, num_tokens=50)
    cpu_s = 1.006e-3
    for load_layer, expected_gpu in (
        (1e-3, 9e-3),  # L < C: one layer's copy, then compute: L + 4 C
        (5e-3, 22e-3),  # L > C: compute trails the copies: 4 L + C
    ):
        driver = _driver(scheduler())
        batch.l2 = L2Transfers(load_tokens=600, load_layer_s=load_layer)
        assert driver._step_time_s(batch) == pytest.approx(expected_gpu)
    # Without overlap scheduling the CPU time adds up; a write-back wait adds to it.
    sched = scheduler(overlap=False)
    driver = _driver(sched)
    batch.l2 = L2Transfers(load_tokens=600, load_layer_s=5e-3, blocking_s=2e-3)
    assert driver._step_time_s(batch) == pytest.approx(22e-3 + cpu_s + 2e-3)
    assert driver._l2_extra(batch.l2)["l2_stall_ms"] == pytest.approx(22 - 8 + 2)


def test_overlap_scheduling_gives_the_load_the_previous_step_as_a_head_start() -> None:
    sched = scheduler()
    driver = _driver(sched)
    plain = ScheduledBatch(kind="decode", num_requests=1, num_tokens=1, l2=L2Transfers())
    assert driver._step_time_s(plain) == pytest.approx(8e-3)
    driver.env.run(until=8e-3)  # the next step is scheduled while this one ran: 8 ms head start
    loaded = ScheduledBatch(kind="prefill", num_requests=1, num_tokens=50)
    loaded.l2 = L2Transfers(load_tokens=600, load_layer_s=5e-3)
    # max(4 C, L + 4 C - H, 4 L + C - H) = max(8, 5, 14) ms
    assert driver._step_time_s(loaded) == pytest.approx(14e-3)
    # A write-back wait hides behind the GPU time with overlap scheduling, up to the GPU time.
    driver.env.run(until=30e-3)  # idle in between: no head start
    loaded.l2 = L2Transfers(load_tokens=600, load_layer_s=5e-3, blocking_s=30e-3)
    assert driver._step_time_s(loaded) == pytest.approx(1.006e-3 + 30e-3)


def test_runs_without_hicache_carry_no_l2_numbers() -> None:
    args = ServerArgs()
    sched = SGLangScheduler(ResolvedServer(args, 1000, 64, None, 0.88, 40960))
    assert sched.hicache is None
    sched.add_request(req(0, PROMPT_A), 0.0)
    assert step(sched, 0.0, 1.0).l2 is None
    settings = HiCacheSettings(3000, "write_through", "kernel", "layer_first")
    with pytest.raises(ValueError, match="TransferModel"):
        SGLangScheduler(ResolvedServer(args, 1000, 64, None, 0.88, 40960, hicache=settings))


def test_the_driver_wakes_up_when_a_backup_unlocks_the_cache() -> None:
    sched = scheduler()
    first = Request(0, 0.0, 600, 1, PROMPT_A.astype(np.int64))
    second = Request(1, 0.009, 700, 1, PROMPT_B.astype(np.int64))
    driver = EngineDriver(sched, _FixedPredictor(8.0), Workload("test", [first, second]))  # type: ignore[arg-type]
    records = {r.request_id: r for r in driver.run().records}
    # A's prefill ends at 8 ms and its backup at 8 + 3.4 ms; B (sent at 9 ms) waits for it, then 8 ms.
    assert records[0].first_token_s == pytest.approx(8e-3)
    assert records[1].first_token_s == pytest.approx(8e-3 + backup_s(600) + 8e-3)
    assert (records[1].cached_tokens_device, records[1].cached_tokens_host) == (0, 0)
