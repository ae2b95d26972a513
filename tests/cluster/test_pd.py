"""PD disaggregation: the KV transfer's cost by hand, NIC sharing, the decode side's admission, whole
prefill/decode runs, and the ``cluster.pd`` section's errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvsim.cli.main import main
from kvsim.cluster import run_cluster
from kvsim.cluster.fleet import parse_cluster_section
from kvsim.cluster.output import write_cluster_run
from kvsim.cluster.pd import KVTransfer, TransferNetwork, parse_pd_section, transfer_seconds
from kvsim.core.errors import ConfigError, UserInputError
from kvsim.engines.experiment import build_engine, resolve_config
from kvsim.hardware import load_profile
from kvsim.perf.predictor import Deployment
from kvsim.workloads.base import Request

#: 2000 tokens of Qwen3-8B's bf16 KV (36 layers x 8 KV heads x 128 x K and V x 2 B = 147,456 B/token)
PROMPT_BYTES = 2000 * 147_456
#: ... at 50 GB/s (GB = 1e9 B) after 20 us: 0.02 ms + 294,912,000 B / 5e10 B/s = 5.91824 ms
ALONE_S = 0.00591824

SMALL = {
    "workload": {"gsp_num_groups": 4, "gsp_prompts_per_group": 5, "gsp_output_len": 32, "request_rate": 8}
}


def _pd_config(base: dict[str, Any], **pd: Any) -> dict[str, Any]:
    config = resolve_config(None, base)
    config["cluster"] = {"pd": {"prefill_instances": 1, "decode_instances": 1, **pd}}
    return config


def _collect(done: list[tuple[int, float]]) -> Any:
    def on_done(transfer: KVTransfer, time: float) -> None:
        done.append((transfer.seq, time))

    return on_done


# ---- transfer cost -----------------------------------------------------------------------------------
def test_transfer_cost_hand_computed() -> None:
    deployment = Deployment.create("Qwen3-8B", "H20", 1, "auto", None, "auto")
    assert deployment.kv_bytes_per_token == 147_456
    assert load_profile("H20").network_bandwidth == 50e9
    assert PROMPT_BYTES == 294_912_000
    assert transfer_seconds(PROMPT_BYTES, 50e9, 20e-6) == pytest.approx(ALONE_S, abs=1e-15)
    # The same transfer alone on the network: it starts moving at 20 us and ends at 5.91824 ms.
    done: list[tuple[int, float]] = []
    network = TransferNetwork([50e9, 0.0], [0.0, 50e9])
    network.submit(0, 1, PROMPT_BYTES, 50e9, 20e-6, 0.0, _collect(done))
    assert network.next_event_s() == pytest.approx(20e-6, abs=1e-18)
    network.advance(1.0)
    assert done == [(0, pytest.approx(ALONE_S, abs=1e-15))]
    assert network.moved_bytes == pytest.approx(PROMPT_BYTES, abs=1e-3)


def test_pd_run_moves_the_prompt_at_the_hand_computed_cost() -> None:
    # One 2000-token request through 1 prefill + 1 decode H20: its KV is one piece (no chunking at 2000
    # tokens), alone on the link, so the transfer takes exactly the hand-computed time.
    base = {
        "workload": {
            "dataset_name": "random",
            "num_prompts": 1,
            "random_input_len": 2000,
            "random_output_len": 8,
            "random_range_ratio": 1.0,
        }
    }
    result = run_cluster(_pd_config(base, transfer_latency_us=20, transfer_bandwidth="50 GB/s"))
    (entry,) = result.pd.requests.values()
    assert entry.transfer_bytes == PROMPT_BYTES
    assert entry.transfer_s == pytest.approx(ALONE_S, abs=1e-12)
    assert entry.transfer_start_s == entry.prefill_end_s
    (record,) = result.records
    # The first token reaches the client when the idle decode server takes the KV in.
    assert record.first_token_s == entry.transfer_end_s
    assert result.metrics["pd_transfer_bytes"] == PROMPT_BYTES
    assert result.metrics["pd_mean_transfer_ms"] == pytest.approx(5.91824, abs=1e-9)


# ---- NIC sharing -------------------------------------------------------------------------------------
def test_two_transfers_share_a_prefill_nic() -> None:
    # Prefill instance 0 sends to decode instances 1 and 2; the second transfer is submitted at 2 ms.
    # 0.02-2.02 ms: the first alone at 50 GB/s moves 1e8 B (194,912,000 B left); then both at 25 GB/s
    # until the first ends at 2.02 + 7.79648 = 9.81648 ms; the second, 1e8 B short, ends 2 ms later.
    done: list[tuple[int, float]] = []
    network = TransferNetwork([50e9, 0.0, 0.0], [0.0, 50e9, 50e9])
    network.submit(0, 1, PROMPT_BYTES, 50e9, 20e-6, 0.0, _collect(done))
    network.advance(0.002)
    network.submit(0, 2, PROMPT_BYTES, 50e9, 20e-6, 0.002, _collect(done))
    network.advance(1.0)
    assert done == [(0, pytest.approx(0.00981648, abs=1e-15)), (1, pytest.approx(0.01181648, abs=1e-15))]


def test_separate_nics_do_not_interfere_and_shares_are_max_min_fair() -> None:
    done: list[tuple[int, float]] = []
    # Two prefill instances (0, 1) each sending to its own decode instance (2, 3): both take 5.91824 ms.
    network = TransferNetwork([50e9, 50e9, 0.0, 0.0], [0.0, 0.0, 50e9, 50e9])
    network.submit(0, 2, PROMPT_BYTES, 50e9, 20e-6, 0.0, _collect(done))
    network.submit(1, 3, PROMPT_BYTES, 50e9, 20e-6, 0.0, _collect(done))
    network.advance(1.0)
    assert done == [(0, pytest.approx(ALONE_S, abs=1e-15)), (1, pytest.approx(ALONE_S, abs=1e-15))]
    # Max-min: decode instance 2 has two GPUs (100 GB/s in). 1->2 and 1->3 share instance 1's 50 GB/s
    # (25 each); 0->2 then takes the rest of its own link, 50 GB/s. 5e7 B each: 1 ms, 2 ms, 2 ms.
    done.clear()
    network = TransferNetwork([50e9, 50e9, 0.0, 0.0], [0.0, 0.0, 100e9, 50e9])
    for src, dst in ((0, 2), (1, 2), (1, 3)):
        network.submit(src, dst, 5e7, 50e9, 0.0, 0.0, _collect(done))
    network.advance(1.0)
    assert done == [
        (0, pytest.approx(0.001, abs=1e-15)),
        (1, pytest.approx(0.002, abs=1e-15)),
        (2, pytest.approx(0.002, abs=1e-15)),
    ]


# ---- decode admission --------------------------------------------------------------------------------
def _request(rid: int, input_len: int, output_len: int) -> Request:
    tokens = np.arange(rid * 10_000, rid * 10_000 + input_len, dtype=np.int64)
    return Request(rid, 0.0, input_len, output_len, tokens)


def test_decode_admission_blocks_when_full_and_admits_once_memory_frees() -> None:
    # A 3624-token decode pool, 512 tokens reserved per active request. A (1000 in) fits: 3624 >= 1512;
    # B: 2624 - 512 = 2112 >= 1512; C: 1624 - 2 x 512 = 600 < 1512 blocks, and D (10 in, needs 522,
    # which would fit) waits behind it: the prealloc queue is FIFO.
    build = build_engine(resolve_config(None, {"server": {"max_total_tokens": 3624}, **SMALL}))
    sched = build.scheduler
    sched.configure_pd("decode", 512)
    preallocated: list[tuple[int, float]] = []
    sched.on_preallocated = lambda state, now: preallocated.append((state.req.request_id, now))
    states = [
        sched.add_request(_request(rid, n, out), 0.0)
        for rid, n, out in ((0, 1000, 3), (1, 1000, 3), (2, 1000, 3), (3, 10, 3))
    ]
    assert sched.schedule(0.0) is None  # nothing landed yet: no decode step
    assert preallocated == [(0, 0.0), (1, 0.0)]
    assert [s.req.request_id for s in sched.prealloc] == [2, 3]
    assert sched.pool.free_tokens == 1624
    # A and B land; the pass takes them in (first token now) and decodes; C still does not fit.
    sched.kv_arrived(states[0])
    sched.kv_arrived(states[1])
    batch = sched.schedule(1.0)
    assert batch is not None and batch.kind == "decode" and batch.num_requests == 2
    assert (states[0].first_token_s, states[1].first_token_s) == (1.0, 1.0)
    assert preallocated == [(0, 0.0), (1, 0.0)]
    assert sched.complete(batch, 1.01) == []
    batch = sched.schedule(1.01)
    assert batch is not None and preallocated == [(0, 0.0), (1, 0.0)]
    finished = sched.complete(batch, 1.02)  # third token: A and B are done, their KV freed
    assert [s.req.request_id for s in finished] == [0, 1]
    assert sched.pool.free_tokens == 3624
    assert sched.schedule(1.02) is None
    assert preallocated == [(0, 0.0), (1, 0.0), (2, 1.02), (3, 1.02)]
    assert sched.pool.free_tokens == 3624 - 1010 and not sched.prealloc


def test_a_request_that_can_never_fit_the_decode_pool_is_refused() -> None:
    build = build_engine(resolve_config(None, {"server": {"max_total_tokens": 1500}, **SMALL}))
    build.scheduler.configure_pd("decode", 512)
    with pytest.raises(UserInputError, match="request 0 needs 1512 KV tokens, more than the whole pool"):
        build.scheduler.add_request(_request(0, 1000, 3), 0.0)


# ---- whole runs --------------------------------------------------------------------------------------
class _StepLog:
    """Keeps every step of a fleet's shared iteration log: (instance, start, kind, seconds)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, str, float]] = []

    def log(
        self,
        time_s: float,
        kind: str,
        batch: Any,
        step_time_ms: float,
        num_running: int,
        num_waiting: int,
        extra: dict[str, float],
    ) -> None:
        self.steps.append((int(extra["instance"]), time_s, kind, step_time_ms / 1e3))


def test_small_pd_run_end_to_end() -> None:
    log = _StepLog()
    result = run_cluster(_pd_config(SMALL), iteration_log=log)  # type: ignore[arg-type]
    metrics = result.metrics
    assert metrics["completed"] == 20
    assert [e["role"] for e in metrics["instances"]] == ["prefill", "decode"]
    prefill, decode = metrics["instances"]
    # The decode side never runs a prefill, the prefill side never decodes.
    assert decode["prefill_steps"] == 0 and prefill["decode_steps"] == 0
    assert {kind for index, _, kind, _ in log.steps if index == 1} == {"decode"}
    assert {kind for index, _, kind, _ in log.steps if index == 0} == {"prefill"}
    # A step ends at start + its time, the sum the simulation clock makes.
    ends = {start + seconds: seconds for index, start, _, seconds in log.steps if index == 0}
    for record in result.records:
        entry = result.pd.requests[record.request_id]
        assert (entry.prefill_instance, entry.decode_instance) == (0, 1)
        assert entry.transfer_bytes == record.input_len * 147_456
        alone = 20e-6 + record.input_len * 147_456 / 50e9
        compute = ends[entry.prefill_end_s]  # the prefill step that made its first token
        assert record.send_s <= entry.prealloc_s <= entry.prefill_end_s - compute + 1e-12
        assert entry.transfer_end_s - entry.prefill_end_s >= alone - 1e-12
        assert record.first_token_s >= entry.transfer_end_s
        # TTFT covers the wait for decode KV, the prefill step and the transfer, at least.
        assert record.first_token_s - record.send_s >= compute + alone - 1e-12
        assert record.token_times is not None and record.token_times[0] == record.first_token_s
    # The client's view: bench_serving's TTFT is first token minus send, over all requests.
    ttfts = [r.first_token_s - r.send_s for r in result.records]
    assert metrics["mean_ttft_ms"] == pytest.approx(np.mean(ttfts) * 1e3, rel=1e-12)
    waits = [e.prealloc_wait_s * 1e3 for e in result.pd.requests.values()]
    assert metrics["pd_mean_prealloc_wait_ms"] == pytest.approx(np.mean(waits), rel=1e-12)
    assert metrics["pd_transfers"] == 20
    assert metrics["total_cached_tokens"] == sum(r.cached_tokens for r in result.records) > 0
    assert metrics["prefill_steps"] == prefill["prefill_steps"] > 0


def test_chunked_prefill_sends_its_kv_chunk_by_chunk(tmp_path: Path) -> None:
    # 2176-token prompts in 1024-token chunks: the first chunks' KV leaves before the prefill ends.
    base = {**SMALL, "server": {"chunked_prefill_size": 1024}}
    result, run_dir = write_cluster_run(_pd_config(base), tmp_path / "pd", plots=True)
    entries = result.pd.requests.values()
    assert all(e.transfer_bytes == e.input_len * 147_456 for e in entries)
    assert any(e.transfer_start_s < e.prefill_end_s for e in entries)
    # The time on the network leaves out the gaps while later chunks were computed.
    spans = [(e.transfer_s, e.transfer_end_s - e.transfer_start_s) for e in entries]
    assert all(on_network <= span + 1e-12 for on_network, span in spans)
    assert any(on_network < span - 1e-3 for on_network, span in spans)
    assert result.metrics["pd_transfers"] > 20
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and "instance" not in rows[0]
    assert {(row["prefill_instance"], row["decode_instance"]) for row in rows} == {(0, 1)}
    first = result.pd.requests[0]
    assert rows[0]["transfer_ms"] == pytest.approx(first.transfer_s * 1e3, abs=1e-6)
    assert rows[0]["transfer_bytes"] == first.input_len * 147_456
    assert (run_dir / "cluster_instances.png").stat().st_size > 0
    config = (run_dir / "config.resolved.yaml").read_text()
    assert "  pd:\n    prefill_instances: 1\n    decode_instances: 1\n" in config


def test_one_token_outputs_finish_as_the_decode_side_takes_them_in() -> None:
    base = {
        "workload": {
            "dataset_name": "random",
            "num_prompts": 6,
            "random_input_len": 300,
            "random_output_len": 1,
            "random_range_ratio": 1.0,
        }
    }
    result = run_cluster(_pd_config(base, prefill_instances=2, decode_instances=2))
    assert result.metrics["completed"] == 6
    assert all(r.first_token_s == r.finish_s == result.pd.requests[r.request_id].transfer_end_s
               for r in result.records)
    assert result.metrics["decode_steps"] == 0
    assert [e["completed"] for e in result.metrics["instances"]] == [3, 3, 3, 3]


def test_decode_retraction_parks_and_resumes_without_prefill() -> None:
    # A 3000-token decode pool with no reservation takes five 500-token prompts; their 600-token
    # outputs outgrow it, so the decode server retracts and later resumes, never recomputing.
    base = {
        "workload": {
            "dataset_name": "random",
            "num_prompts": 5,
            "random_input_len": 500,
            "random_output_len": 600,
            "random_range_ratio": 1.0,
            "request_rate": "inf",
        }
    }
    config = _pd_config(base, num_reserved_decode_tokens=0)
    config["cluster"]["instance_overrides"] = [None, {"server": {"max_total_tokens": 3000}}]
    result = run_cluster(config)
    prefill, decode = result.metrics["instances"]
    assert decode["num_retractions"] > 0 and decode["prefill_steps"] == 0
    assert result.metrics["completed"] == 5
    assert all(len(r.token_times) == 600 for r in result.records)  # type: ignore[arg-type]
    assert prefill["prefill_steps"] >= 1


def test_pd_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["sim", "--pd", "1:1", "--gsp-num-groups", "2", "--gsp-prompts-per-group", "2"]
    code = main([*argv, "--gsp-output-len", "16", "--no-plots", "--output-dir", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "PD: 1 prefill (round_robin) + 1 decode (round_robin)" in text
    metrics = json.loads((out / "metrics.json").read_text())
    counts = (metrics["pd_prefill_instances"], metrics["pd_decode_instances"], metrics["completed"])
    assert counts == (1, 1, 4)
    assert main(["sim", "--pd", "2", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "--pd: expected P:D with two counts >= 1, e.g. 2:2, got '2'" in capsys.readouterr().err


# ---- configuration -----------------------------------------------------------------------------------
def test_pd_section_defaults_and_resolution() -> None:
    pd_body = {"prefill_instances": 2, "decode_instances": 3}
    section = parse_cluster_section({"router": "least_load", "pd": pd_body})
    assert section.instances == 5
    pd = section.pd
    assert pd is not None
    assert (pd.transfer_bandwidth, pd.transfer_latency_s, pd.num_reserved_decode_tokens) == (None, 2e-5, 512)
    assert (pd.prefill_router, pd.decode_router) == ("least_load", "round_robin")
    custom = parse_pd_section(
        {
            "prefill_instances": 1,
            "decode_instances": 1,
            "transfer_bandwidth": "25 GB/s",
            "transfer_latency_us": 5,
            "decode_router": "least_load",
        }
    )
    assert (custom.transfer_bandwidth, custom.transfer_latency_s, custom.decode_router) == (
        25e9,
        5e-6,
        "least_load",
    )


@pytest.mark.parametrize(
    ("pd", "extra", "message"),
    [
        (
            {"prefill_instances": 0, "decode_instances": 1},
            {},
            r"cluster\.pd\.prefill_instances: must be an integer >= 1, got 0",
        ),
        (
            {"prefill_instances": 1, "decode_instances": "2"},
            {},
            r"cluster\.pd\.decode_instances: must be an integer >= 1, got '2'",
        ),
        ({"prefill_instances": 1}, {}, r"cluster\.pd\.decode_instances: must be an integer >= 1, got None"),
        (
            {"prefill_instances": 1, "decode_instances": 1, "decode_pool": 2},
            {},
            r"cluster\.pd: unknown key 'decode_pool'; valid: prefill_instances, decode_instances, ",
        ),
        (
            {"prefill_instances": 1, "decode_instances": 1, "transfer_bandwidth": "-5 GB/s"},
            {},
            r"cluster\.pd\.transfer_bandwidth: must be > 0, got '-5 GB/s'",
        ),
        (
            {"prefill_instances": 1, "decode_instances": 1, "transfer_bandwidth": 50},
            {},
            r"cluster\.pd\.transfer_bandwidth: 50 has no unit",
        ),
        (
            {"prefill_instances": 1, "decode_instances": 1, "transfer_latency_us": -1},
            {},
            r"cluster\.pd\.transfer_latency_us: must be a number >= 0, got -1",
        ),
        (
            {"prefill_instances": 1, "decode_instances": 1, "num_reserved_decode_tokens": 1.5},
            {},
            r"cluster\.pd\.num_reserved_decode_tokens: must be an integer >= 0, got 1\.5",
        ),
        (
            {"prefill_instances": 1, "decode_instances": 1, "decode_router": "nope"},
            {},
            r"cluster\.pd\.decode_router: unknown router 'nope'",
        ),
        (
            {"prefill_instances": 2, "decode_instances": 2},
            {"instances": 3},
            r"cluster\.instances: 3 is not prefill_instances \+ decode_instances = 4",
        ),
        ([1, 1], {}, r"cluster\.pd: must be a mapping"),
    ],
)
def test_pd_section_errors(pd: Any, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cluster_section({"pd": pd, **extra})


def test_pd_fleet_refusals() -> None:
    hicache_decode = _pd_config(SMALL)
    hicache_decode["server"].update(enable_hierarchical_cache=True, max_total_tokens=6000)
    with pytest.raises(ConfigError, match="decode instances keep no prefix cache; no HiCache there"):
        run_cluster(hicache_decode)
    other_model = _pd_config(SMALL)
    other_model["cluster"]["instance_overrides"] = [None, {"model": "Qwen3-32B"}]
    with pytest.raises(ConfigError, match="every instance must serve one model with one KV format"):
        run_cluster(other_model)
    with pytest.raises(ConfigError, match=r"unknown key cluster\.pds"):
        resolve_config(None, {"cluster": {"pds": {}}})
