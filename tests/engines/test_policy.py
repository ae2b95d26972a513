"""Waiting-queue orders of SGLang's schedule policies, mixed chunks and overlap scheduling."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.engines.sglang.config import ResolvedServer, ServerArgs
from kvsim.engines.sglang.policy import order_waiting
from kvsim.engines.sglang.scheduler import ReqState, SGLangScheduler
from tests.engines.test_scheduler import req, run_step


def make(policy: str = "fcfs", mixed: bool = False, chunk: int | None = 8192) -> SGLangScheduler:
    args = ServerArgs(schedule_policy=policy, enable_mixed_chunk=mixed)
    return SGLangScheduler(ResolvedServer(args, 100_000, 64, chunk, 0.88, 40960), np.random.default_rng(0))


def ids(states: list[ReqState]) -> list[int]:
    return [s.req.request_id for s in states]


def warm(sched: SGLangScheduler, request_id: int, shared: int, length: int) -> None:
    """Cache a prompt of ``length`` tokens whose first ``shared`` are the common prefix 0..shared-1."""
    sched.add_request(req(request_id, length, 1, shared=shared), 0.0)
    run_step(sched)


def test_lpm_orders_by_cached_prefix_and_deprioritises_in_batch_duplicates() -> None:
    sched = make("lpm")
    warm(sched, 100, shared=300, length=400)  # caches tokens 0..299 (+ 100 unique)
    states = [
        ReqState(req(0, 500, 5), 0.0),  # nothing cached
        ReqState(req(1, 500, 5, shared=200), 0.0),  # 200 cached
        ReqState(req(2, 500, 5, shared=300), 0.0),  # 300 cached
        ReqState(req(3, 500, 5, base=1_000_000), 0.0),  # shares 500 tokens with request 0: deprioritised
    ]
    order = order_waiting("lpm", states, sched.pool, sched.rng, 1.0)
    assert ids(order) == [2, 1, 0, 3]


def test_lpm_falls_back_to_fcfs_on_long_queues() -> None:
    sched = make("lpm")
    states = [ReqState(req(i, 50, 5), 0.0) for i in range(129)]
    assert order_waiting("lpm", states, sched.pool, sched.rng, 0.0) is states


def test_dfs_weight_visits_heavier_subtrees_first() -> None:
    sched = make("dfs-weight")
    warm(sched, 100, shared=0, length=100)  # branch A: tokens 101_000_000...
    a = np.arange(101_000_000, 101_000_100)
    b = np.arange(102_000_000, 102_000_100)
    sched.add_request(req(101, 100, 1, base=102_000_000), 0.0)  # branch B
    run_step(sched)

    def on(branch: np.ndarray, rid: int) -> ReqState:
        tokens = np.concatenate([branch, np.arange(5_000_000 * (rid + 1), 5_000_000 * (rid + 1) + 50)])
        from kvsim.workloads.base import Request

        return ReqState(Request(rid, 0.0, len(tokens), 5, tokens.astype(np.int64)), 0.0)

    states = [on(a, 0), on(b, 1), on(b, 2), ReqState(req(3, 60, 5), 0.0)]
    order = order_waiting("dfs-weight", states, sched.pool, sched.rng, 1.0)
    # Branch B holds two waiting requests, branch A one; unmatched requests sit at the root, last.
    assert ids(order) == [1, 2, 0, 3]


def test_lof_and_random() -> None:
    sched = make()
    states = [ReqState(req(i, 10, out), 0.0) for i, out in enumerate((5, 50, 20, 50))]
    assert ids(order_waiting("lof", states, sched.pool, sched.rng, 0.0)) == [1, 3, 2, 0]
    first = ids(order_waiting("random", states, sched.pool, np.random.default_rng(3), 0.0))
    again = ids(order_waiting("random", states, sched.pool, np.random.default_rng(3), 0.0))
    assert first == again and sorted(first) == [0, 1, 2, 3]


def test_mixed_chunk_decodes_running_requests_with_the_prefill() -> None:
    sched = make(mixed=True, chunk=1000)
    sched.add_request(req(0, 100, 10), 0.0)
    run_step(sched)  # prefill request 0; it now decodes
    sched.add_request(req(1, 2000, 10), 1.0)
    batch, _ = run_step(sched, 1.0)
    assert batch.kind == "mixed"
    # The chunk budget shrinks by the one decoding request: 999 prompt tokens, plus request 0's token.
    assert batch.extend == [999] and batch.num_decode == 1
    assert batch.num_tokens == 1000
    assert batch.batch_list(sched.running) == [[999, 0], [1, 100]]


def test_overlap_hides_scheduler_cpu_time() -> None:
    from kvsim.engines.experiment import resolve_config, run_experiment

    base = {"workload": {"dataset_name": "random", "random_input_len": 200, "random_output_len": 20,
                         "num_prompts": 10, "request_rate": 2, "seed": 3}}  # fmt: skip
    overlap = run_experiment(resolve_config(overrides=base))
    serial = run_experiment(resolve_config(overrides={**base, "server": {"disable_overlap_schedule": True}}))
    assert serial.metrics["mean_tpot_ms"] == pytest.approx(overlap.metrics["mean_tpot_ms"] + 1.0, abs=0.05)
