"""Shared storage tiers (``cluster.shared_tiers``): one tier's bandwidth split among every engine's
transfers on it, events of all engines in one time order, per-engine totals that add up."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from kvsim.cluster import run_cluster
from kvsim.cluster.fleet import parse_cluster_section
from kvsim.core.errors import ConfigError
from kvsim.engines.experiment import resolve_config
from kvsim.engines.sglang.config import StorageSettings
from kvsim.engines.sglang.page_keys import PageKeyCache
from kvsim.engines.sglang.storage import L3Controller, L3Group, PlainStore
from kvsim.hardware.storage import StorageTier

#: 1 GB/s both ways, 10 ms latency: hand-computable times.
TIER = StorageTier("test", 1e9, 1e9, 0.01, 0.01, None)
GB = 1e9
L3_KVCM = {
    "server": {
        "enable_hierarchical_cache": True,
        "max_total_tokens": 6000,
        "hicache_storage_backend": "kvcm",
    },
    "workload": {
        "gsp_num_groups": 4,
        "gsp_prompts_per_group": 6,
        "gsp_output_len": 64,
        "request_rate": 8,
        "max_concurrency": 5,
    },
}


def _controller() -> L3Controller:
    settings = StorageSettings("file", "best_effort", 64, 1.0, 0.0, 1_000_000, "test", {})
    return L3Controller(settings, PlainStore("file", TIER, 1000), PageKeyCache({}, 64), 1000)


def test_shared_tier_splits_bandwidth_between_engines() -> None:
    a, b = _controller(), _controller()
    group = L3Group([a, b])
    done: dict[str, float] = {}
    # Engine a writes 1 GB at 0; engine b's timed event at 0.5 s starts a 0.25 GB write there.
    a.io.submit(TIER, "write", GB, 0.0, lambda t: done.__setitem__("a", t), a.io_owner or 0)
    b._push_timed(
        0.5,
        lambda t: b.io.submit(TIER, "write", 0.25 * GB, t, lambda u: done.__setitem__("b", u), 1),
    )
    group.advance(10.0)
    # a alone 0.01-0.51 (0.5 GB); both at half rate 0.51-1.01 (b's 0.25 GB done, a has 0.25 GB left);
    # a alone again until 1.26.
    assert done["b"] == pytest.approx(1.01, abs=1e-9)
    assert done["a"] == pytest.approx(1.26, abs=1e-9)
    assert a.io.moved_bytes("write", 0) == pytest.approx(GB)
    assert a.io.moved_bytes("write", 1) == pytest.approx(0.25 * GB)
    assert a.io.busy_seconds("write", 1) == pytest.approx(0.5)
    assert a.io.busy_seconds("write") == pytest.approx(1.25)
    # Per-engine metrics come from the shared IO by owner.
    assert a.metrics()["l3_write_bytes"] == round(GB)
    assert b.metrics()["l3_write_bytes"] == round(0.25 * GB)


def test_unshared_tiers_give_each_engine_the_full_bandwidth() -> None:
    a, b = _controller(), _controller()
    done: dict[str, float] = {}
    a.io.submit(TIER, "write", GB, 0.0, lambda t: done.__setitem__("a", t))
    b.io.submit(TIER, "write", 0.25 * GB, 0.5, lambda t: done.__setitem__("b", t))
    a.advance(10.0)
    b.advance(10.0)
    assert done == {"a": pytest.approx(1.01, abs=1e-9), "b": pytest.approx(0.76, abs=1e-9)}


def test_cancel_wakes_the_fleet() -> None:
    a, b = _controller(), _controller()
    group = L3Group([a, b])
    woken: list[int] = []
    group.wake = lambda: woken.append(1)
    transfer = a.io.submit(TIER, "read", GB, 0.0, lambda t: None, 0)
    group.advance(0.2)
    a.io.cancel(transfer)
    assert woken == [1]
    assert np.isclose(a.io.moved_bytes("read", 0), 0.19 * GB)


def test_shared_tiers_is_checked() -> None:
    assert parse_cluster_section({}).shared_tiers is False
    with pytest.raises(
        ConfigError, match=re.escape("cluster.shared_tiers: must be true or false, got 'yes'")
    ):
        parse_cluster_section({"shared_tiers": "yes"})
    config = resolve_config(None, {"workload": L3_KVCM["workload"]})
    config["cluster"] = {"instances": 2, "shared_tiers": True}
    with pytest.raises(ConfigError, match=re.escape("cluster.shared_tiers: needs every instance on an L3")):
        run_cluster(config)


def _fleet(shared: bool) -> dict[str, Any]:
    config = resolve_config(None, L3_KVCM)
    config["cluster"] = {"instances": 3, "kvcm_scope": "global", "shared_tiers": shared}
    return run_cluster(config).metrics


def test_shared_tier_fleet_totals_add_up_and_writes_take_longer() -> None:
    alone, shared = _fleet(False), _fleet(True)
    for metrics in (alone, shared):
        for key in ("l3_write_bytes", "l3_written_blocks"):
            assert sum(m[key] for m in metrics["instances"]) == metrics[key]
    # Sharing runs every engine's storage events in global time order: no call reaches the shared KVCM
    # manager late, unlike lazily advanced controllers.
    assert shared["kvcm_late_calls"] == 0
    assert alone["kvcm_late_calls"] > 0
    # The same tier moved by three engines at once: each engine's writes are busy for longer per byte.
    rate_alone = alone["l3_write_bytes"] / alone["l3_write_busy_s"]
    rate_shared = shared["l3_write_bytes"] / shared["l3_write_busy_s"]
    assert rate_shared < rate_alone
