"""Scripted storage faults: the ``faults:`` section's checks, a slowdown's effect on transfers in flight,
a plain store that is down, and whole runs where a KVCM storage outage and a slowdown show up in the L3
hit ratio, the prefetch time and TTFT."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from kvsim.core.errors import ConfigError
from kvsim.engines.experiment import resolve_config, run_experiment
from kvsim.engines.sglang.faults import FaultPlan, StorageFault, check_storages, parse_faults
from kvsim.engines.sglang.storage import PlainStore, WriteTicket
from kvsim.engines.sglang.storage_io import TransferIO
from kvsim.hardware.storage import StorageTier
from tests.engines.test_l3_runs import GSP_L3

GB = 1e9


# ------------------------------------------------------------------------------------------ the section


def test_parse_faults_resolves_defaults() -> None:
    plan = parse_faults(
        {
            "events": [
                {"storage": "nfs_01", "kind": "unavailable", "start": 60, "end": 120},
                {"storage": "nfs_01", "kind": "slow", "start": 100, "end": 200},
            ]
        }
    )
    assert plan == FaultPlan(
        (
            StorageFault("nfs_01", "unavailable", 60.0, 120.0, 1.0),
            StorageFault("nfs_01", "slow", 100.0, 200.0, 0.5),
        ),
        5.0,
    )
    assert parse_faults(plan.to_dict()) == plan
    assert not parse_faults(None) and not parse_faults({"events": []})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "faults: must be a mapping with keys probe_period, events"),
        ({"when": 1}, "faults: unknown key 'when'; valid: probe_period, events"),
        ({"probe_period": 0}, "faults.probe_period: must be > 0, got 0"),
        ({"events": {"a": 1}}, "faults.events: must be a list of events"),
        ({"events": ["x"]}, "faults.events[0]: must be a mapping with keys storage, kind, start, end"),
        (
            {"events": [{"storage": "s", "kind": "flaky", "start": 0, "end": 1}]},
            "faults.events[0].kind: 'flaky'",
        ),
        (
            {"events": [{"kind": "slow", "start": 0, "end": 1}]},
            "faults.events[0].storage: must name a storage",
        ),
        ({"events": [{"storage": "s", "kind": "slow", "start": 0}]}, "faults.events[0]: needs start and end"),
        ({"events": [{"storage": "s", "kind": "slow", "start": 5, "end": 5}]}, "end 5 must be after start 5"),
        (
            {"events": [{"storage": "s", "kind": "slow", "start": -1, "end": 5}]},
            "start: must be >= 0, got -1",
        ),
        (
            {"events": [{"storage": "s", "kind": "slow", "start": 0, "end": 5, "bandwidth_factor": 0}]},
            "faults.events[0].bandwidth_factor: must be a number in (0, 1], got 0",
        ),
        (
            {
                "events": [
                    {"storage": "s", "kind": "unavailable", "start": 0, "end": 5, "bandwidth_factor": 0.5}
                ]
            },
            "faults.events[0].bandwidth_factor: only a slow fault has one",
        ),
        (
            {"events": [{"storage": "s", "kind": "x", "start": 0, "end": 5, "after": 1}]},
            "faults.events[0]: unknown key 'after'",
        ),
        (
            {
                "events": [
                    {"storage": "s", "kind": "unavailable", "start": 0, "end": 10},
                    {"storage": "s", "kind": "unavailable", "start": 5, "end": 20},
                ]
            },
            "faults: two unavailable faults of storage 's' overlap (0-10 s and 5-20 s)",
        ),
    ],
)
def test_bad_faults_are_refused_in_one_line(body: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_faults(body)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_storage_names_the_known_ones() -> None:
    plan = parse_faults({"events": [{"storage": "nfs_9", "kind": "slow", "start": 0, "end": 1}]})
    with pytest.raises(ConfigError, match=r"unknown storage 'nfs_9'; this run's storages: a, b"):
        check_storages(plan, ("a", "b"))


# ------------------------------------------------------------------------------------------ mechanics


def tier(name: str = "t", bandwidth: float = 1 * GB, latency: float = 0.0) -> StorageTier:
    return StorageTier(name, bandwidth, bandwidth, latency, latency, None)


def test_halving_bandwidth_mid_transfer() -> None:
    """1 GB at 1 GB/s; at 0.5 s the tier halves: the last 0.5 GB take 1 s, so it ends at 1.5 s. A second
    transfer submitted while slow shares the halved rate."""
    io = TransferIO()
    t = tier(latency=0.001)
    done: list[float] = []
    io.submit(t, "read", 1 * GB, 0.0, done.append)
    io.step()  # joins at 1 ms
    io.advance(0.501)
    io.scale_bandwidth("t", 0.5)
    when, finished = io.step()
    assert when == pytest.approx(1.501, abs=1e-12) and len(finished) == 1
    io.submit(t, "write", 0.25 * GB, when, done.append)  # a channel made while slow starts slow
    io.step()
    when, _ = io.step()
    assert when == pytest.approx(1.501 + 0.001 + 0.5, abs=1e-12)
    io.scale_bandwidth("t", 1.0)
    io.submit(t, "read", 1 * GB, when, done.append)
    io.step()
    assert io.step()[0] == pytest.approx(when + 0.001 + 1.0, abs=1e-12)
    with pytest.raises(ValueError, match="factor: must be > 0"):
        io.scale_bandwidth("t", 0.0)


def test_plain_store_down_misses_and_refuses() -> None:
    store = PlainStore("file", tier(), 1024)
    keys = np.array([1, 2, 3], dtype=np.int64)
    ticket = store.start_write(keys, 0.0)
    assert store.finish_write(ticket, 0.0) == 3
    store.set_down("t", True, 1.0)
    assert store.query(keys, 0, 1.0) == []
    assert store.start_write(np.array([4], dtype=np.int64), 1.0) == WriteTicket(0, None, 1, None)
    store.set_down("t", False, 2.0)
    assert store.query(keys, 0, 2.0) == [(store.tier, 3)]
    store.faulted = True
    assert store.metrics()["l3_queries_while_down"] == 1
    assert store.storage_names() == ("t",)


# ------------------------------------------------------------------------------------------ whole runs

# GSP_L3's setup with 8 groups of 16 prompts at 2 req/s and room for everything in KVCM: system prompts
# fall out of the device and host pools and come back from KVCM's Mooncake storage.
RUN: dict[str, Any] = copy.deepcopy(GSP_L3)
RUN["server"]["hicache_storage_prefetch_policy"] = "wait_complete"
RUN["workload"].update(gsp_num_groups=8, gsp_prompts_per_group=16, request_rate=2)
RUN["kvcm"]["quota"] = "100 GB"


def run(faults: dict[str, Any] | None) -> dict[str, Any]:
    config = copy.deepcopy(RUN)
    if faults is not None:
        config["faults"] = faults
    return run_experiment(resolve_config(None, config)).metrics


def test_a_storage_outage_lowers_the_l3_hit_ratio_and_raises_ttft() -> None:
    calm = run(None)
    outage = {
        "probe_period": 1,
        "events": [{"storage": "mooncake_01", "kind": "unavailable", "start": 5, "end": 40}],
    }
    hurt = run(outage)
    assert "kvcm_storage_health_changes" not in calm
    assert hurt["kvcm_storage_health_changes"] == 2  # out at the first probe after 5 s, back after 40 s
    assert hurt["l3_refused_blocks"] > 0 and calm["l3_refused_blocks"] == 0
    assert hurt["kvcm_failed_queries"] > 0
    assert hurt["l3_hit_ratio"] < calm["l3_hit_ratio"] / 2
    assert hurt["mean_ttft_ms"] > calm["mean_ttft_ms"] * 1.2
    assert run(outage) == hurt  # deterministic


def test_a_slow_storage_lengthens_prefetches_and_ttft() -> None:
    calm = run(None)
    slow = run(
        {
            "events": [
                {"storage": "mooncake_01", "kind": "slow", "start": 0, "end": 1000, "bandwidth_factor": 0.1}
            ]
        }
    )
    assert slow["l3_mean_prefetch_ms"] > calm["l3_mean_prefetch_ms"] * 5
    assert slow["mean_ttft_ms"] > calm["mean_ttft_ms"]
    assert slow["kvcm_storage_health_changes"] == 0


def test_faults_need_an_l3_storage_and_a_known_storage() -> None:
    config = copy.deepcopy(RUN)
    config["faults"] = {"events": [{"storage": "nfs_9", "kind": "slow", "start": 0, "end": 1}]}
    with pytest.raises(ConfigError, match=r"unknown storage 'nfs_9'; this run's storages: mooncake_01"):
        run_experiment(resolve_config(None, config))
    del config["server"]["hicache_storage_backend"]
    with pytest.raises(ConfigError, match=r"faults: scripted storage faults need an L3 storage"):
        run_experiment(resolve_config(None, config))
