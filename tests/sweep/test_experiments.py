"""The sweep files under experiments/sweeps load and expand as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsim.engines.experiment import SECTIONS
from kvsim.sweep import load_sweep
from tests.conftest import REPO_ROOT, shared_path

SWEEPS = REPO_ROOT / "experiments" / "sweeps"


def test_gsp_goodput_sweep_has_eight_configurations() -> None:
    spec = load_sweep(SWEEPS / "gsp_goodput.yaml")
    configurations = spec.configurations()
    assert len(configurations) == 8
    assert configurations[0].describe() == "gpu=H20 max_running_requests=32 enable_mixed_chunk=False"
    assert spec.slo is not None and spec.slo.describe() == "p90_ttft_ms <= 1000, p90_tpot_ms <= 40"
    assert spec.goodput is not None and (spec.goodput.low, spec.goodput.high) == (0.5, 128.0)
    assert configurations[0].knob.path == "workload.request_rate"


def test_mooncake_capacity_sweep_scales_the_trace() -> None:
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    spec = load_sweep(SWEEPS / "mooncake_capacity.yaml", {"workload.dataset_path": str(trace)})
    configurations = spec.configurations()
    assert len(configurations) == 24  # 3 GPUs x 2 TP degrees x 4 host-memory sizes
    assert configurations[-1].describe() == "gpu=H200 tp=2 l2=1000GB"
    assert configurations[-1].config["server"]["hicache_size"] == 1000
    knob = configurations[0].knob
    # The first 1,000 requests span 330 s of the trace: 999 gaps in 330 s.
    assert knob.path == "workload.mooncake_slowdown_factor"
    assert knob.native_rate == 999 / 330.0
    assert knob.value_for(knob.native_rate / 4) == 4.0
    assert spec.cost is not None and spec.cost.gpu_hour == {"H20": 1.0, "H100": 2.25, "H200": 3.0}


def test_sweep_files_document_how_to_run_them() -> None:
    for path in sorted(SWEEPS.glob("*.yaml")):
        text = Path(path).read_text(encoding="utf-8")
        assert f"kvsim sweep experiments/sweeps/{path.name}" in text, path.name


def test_router_comparison_sweep_crosses_instances_and_routers() -> None:
    if "cluster" not in SECTIONS:
        pytest.skip("experiment files have no cluster: section yet (the clusters issue)")
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    spec = load_sweep(SWEEPS / "router_comparison.yaml", {"workload.dataset_path": str(trace)})
    configurations = spec.configurations()
    assert [c.describe() for c in configurations][:3] == [
        "instances=2 router=round_robin",
        "instances=2 router=least_load",
        "instances=2 router=cache_aware",
    ]
    assert len(configurations) == 6
    assert configurations[5].config["cluster"] == {"instances": 4, "router": "cache_aware"}
