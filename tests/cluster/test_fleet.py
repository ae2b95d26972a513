"""Whole fleets: a one-instance fleet is ``kvsim sim``, routers' decisions reach the run directory,
per-instance and fleet metrics add up, and the ``cluster:`` section and CLI flags resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvsim.cli.main import main
from kvsim.cluster import run_cluster
from kvsim.cluster.output import CLUSTER_PNG, write_cluster_run
from kvsim.core.errors import ConfigError
from kvsim.engines.experiment import resolve_config, write_run
from kvsim.metrics.writers import format_metrics

SMALL = {
    "workload": {"gsp_num_groups": 4, "gsp_prompts_per_group": 6, "gsp_output_len": 64, "request_rate": 8}
}
HICACHE = {
    "server": {"enable_hierarchical_cache": True, "max_total_tokens": 6000, "hicache_ratio": 2.0},
    "workload": SMALL["workload"],
}
L3_KVCM = {
    "server": {
        "enable_hierarchical_cache": True,
        "max_total_tokens": 6000,
        "hicache_storage_backend": "kvcm",
    },
    "workload": {**SMALL["workload"], "max_concurrency": 5},
}


def _fleet_config(base: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    config = resolve_config(None, base)
    config["cluster"] = cluster
    return config


def _without_fleet_keys(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("instances", "router")}


@pytest.mark.parametrize("base", [SMALL, HICACHE, L3_KVCM], ids=["plain", "hicache", "l3-kvcm"])
def test_one_instance_fleet_is_kvsim_sim(tmp_path: Path, base: dict[str, Any]) -> None:
    single, single_dir = write_run(resolve_config(None, base), tmp_path / "sim", plots=False)
    fleet, fleet_dir = write_cluster_run(_fleet_config(base, instances=1), tmp_path / "fleet", plots=False)
    sim_text = (single_dir / "metrics.json").read_text()
    fleet_metrics = json.loads((fleet_dir / "metrics.json").read_text())
    # Byte-identical apart from the fleet's own keys, and its one instance has the same numbers.
    assert format_metrics(_without_fleet_keys(fleet_metrics)) == sim_text
    instance = {
        k: v
        for k, v in fleet_metrics["instances"][0].items()
        if k not in ("instance", "gpu", "tp", "busy_s", "busy_fraction")
    }
    assert format_metrics(instance) == sim_text
    # requests.jsonl: the same lines plus the router's choice.
    sim_lines = (single_dir / "requests.jsonl").read_text().splitlines()
    fleet_lines = (fleet_dir / "requests.jsonl").read_text().splitlines()
    assert [line.replace('"instance":0,', "") for line in fleet_lines] == sim_lines
    assert fleet.metrics["instances"][0]["busy_s"] == single.stats.busy_s
    # iterations.jsonl: the same steps, each tagged with its instance.
    fleet_steps = [json.loads(line) for line in (fleet_dir / "iterations.jsonl").read_text().splitlines()]
    for step in fleet_steps:
        assert step["extra"].pop("instance") == 0
        if not step["extra"]:
            del step["extra"]
    sim_steps = [json.loads(line) for line in (single_dir / "iterations.jsonl").read_text().splitlines()]
    assert fleet_steps == sim_steps
    if (single_dir / "kvcm_events.jsonl").exists():
        assert (fleet_dir / "kvcm_events.jsonl").read_text() == (single_dir / "kvcm_events.jsonl").read_text()


def test_round_robin_fleet_assigns_in_turn_and_sums(tmp_path: Path) -> None:
    fleet, run_dir = write_cluster_run(
        _fleet_config(SMALL, instances=3, router="round_robin"), tmp_path / "rr", plots=True
    )
    assert fleet.assignments == {rid: rid % 3 for rid in range(24)}
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert [row["instance"] for row in rows] == [rid % 3 for rid in range(24)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["router"] == "round_robin"
    assert [entry["instance"] for entry in metrics["instances"]] == [0, 1, 2]
    assert [entry["completed"] for entry in metrics["instances"]] == [8, 8, 8]
    assert metrics["completed"] == 24
    for key in ("prefill_steps", "decode_steps", "max_total_tokens", "num_retractions"):
        assert metrics[key] == sum(entry[key] for entry in metrics["instances"])
    steps = [json.loads(line) for line in (run_dir / "iterations.jsonl").read_text().splitlines()]
    assert sorted({step["extra"]["instance"] for step in steps}) == [0, 1, 2]
    assert len(steps) == metrics["prefill_steps"] + metrics["decode_steps"]
    assert (run_dir / CLUSTER_PNG).stat().st_size > 0
    config = (run_dir / "config.resolved.yaml").read_text()
    assert (
        "cluster:\n  instances: 3\n  router: round_robin\n  router_params: {}\n  instance_overrides: []\n"
        in config
    )


def test_idle_instance_and_global_concurrency_limit() -> None:
    # Session affinity with 4 groups on 8 instances leaves some instances idle; the concurrency
    # limit is the client's, across the fleet.
    config = _fleet_config(SMALL, instances=8, router="session_affinity")
    config["workload"]["max_concurrency"] = 3
    result = run_cluster(config)
    assert result.metrics["completed"] == 24
    used = sorted(set(result.assignments.values()))
    idle = [e for e in result.metrics["instances"] if e["completed"] == 0]
    assert len(idle) == 8 - len(used) and len(idle) >= 4
    assert all(e["prefill_steps"] == 0 and e["busy_fraction"] == 0.0 for e in idle)
    events = sorted([(r.send_s, 1) for r in result.records] + [(r.finish_s, -1) for r in result.records])
    in_flight = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        in_flight += delta
        peak = max(peak, in_flight)
    assert peak == 3


def test_cache_aware_beats_round_robin_on_shared_prefixes() -> None:
    hits = {}
    for router in ("round_robin", "cache_aware"):
        result = run_cluster(_fleet_config(SMALL, instances=4, router=router))
        hits[router] = sum(r.cached_tokens for r in result.records)
    assert hits["cache_aware"] > hits["round_robin"]


def test_cluster_section_is_validated() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key cluster\.size; valid: instances, router, router_params"
    ):
        resolve_config(None, {"cluster": {"size": 2}})
    with pytest.raises(ConfigError, match="unknown router 'nope'"):
        run_cluster(_fleet_config(SMALL, instances=2, router="nope"))


def test_cli_instances_and_router_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "sim",
            "--instances",
            "2",
            "--router",
            "least_load",
            "--gsp-num-groups",
            "2",
            "--gsp-prompts-per-group",
            "4",
            "--gsp-output-len",
            "32",
            "--no-plots",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "router: least_load, instances: 2" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["router"], len(metrics["instances"]), metrics["completed"]) == ("least_load", 2, 8)


def test_instance_overrides_give_each_instance_its_hardware() -> None:
    config = _fleet_config(
        SMALL,
        instances=2,
        router="round_robin",
        instance_overrides=[None, {"gpu": "H200", "server": {"tp": 2}}],
    )
    result = run_cluster(config)
    first, second = result.metrics["instances"]
    assert (first["gpu"], first["tp"], second["gpu"], second["tp"]) == ("H20", 1, "H200", 2)
    assert second["max_total_tokens"] != first["max_total_tokens"]
    assert result.metrics["max_total_tokens"] == first["max_total_tokens"] + second["max_total_tokens"]
    with pytest.raises(ConfigError, match=r"instance_overrides\[0\]: unknown section 'workload'"):
        run_cluster(_fleet_config(SMALL, instances=2, instance_overrides=[{"workload": {"seed": 2}}]))
