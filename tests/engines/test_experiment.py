"""Whole simulated runs: config resolution, determinism, the run directory, workload-level behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvsim.core.errors import ConfigError
from kvsim.engines.experiment import resolve_config, run_experiment, write_run

RANDOM_200 = {
    "workload": {
        "dataset_name": "random",
        "random_input_len": 2000,
        "random_output_len": 512,
        "random_range_ratio": 0.5,
        "num_prompts": 200,
        "request_rate": 4,
        "seed": 1,
    }
}


def test_default_experiment_resolves() -> None:
    config = resolve_config()
    assert config["model"] == "Qwen3-8B"
    assert config["gpu"] == "H20"
    assert config["workload"]["dataset_name"] == "generated-shared-prefix"


def test_precedence_default_file_flags(tmp_path: Path) -> None:
    file = tmp_path / "exp.yaml"
    file.write_text("gpu: H200\nworkload:\n  request_rate: 2\n  seed: 5\n")
    config = resolve_config(file, {"workload": {"seed": 9}})
    assert (config["gpu"], config["workload"]["request_rate"], config["workload"]["seed"]) == ("H200", 2, 9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servr: {}\n", "unknown section 'servr'"),
        ("server:\n  chunk_size: 5\n", "unknown key server.chunk_size; valid: tp, dtype"),
        ("workload:\n  num_promts: 5\n", "unknown key workload.num_promts"),
        ("model: [1]\n", "model must be a name"),
        ("a: [\n", "invalid YAML"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        resolve_config(file)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "nope.yaml")


def test_random_run_metrics_are_plausible() -> None:
    result = run_experiment(resolve_config(overrides=RANDOM_200))
    m = result.metrics
    assert m["completed"] == 200
    assert m["total_input_tokens"] == sum(r.input_len for r in result.workload.requests)
    assert m["total_output_tokens"] == sum(r.output_len for r in result.workload.requests)
    assert 50 < m["duration"] < 120  # 200 requests at 4 req/s arrive over ~50 s
    assert 0 < m["mean_ttft_ms"] < m["mean_e2e_latency_ms"]
    assert 5 < m["median_tpot_ms"] < 200
    assert m["cache_hit_rate"] == 0.0  # random prompts share nothing
    for record in result.records:
        assert len(record.token_times) == record.output_len
        assert record.token_times[0] == record.first_token_s
        assert record.token_times[-1] == record.finish_s


def test_shared_prefix_workload_hits_the_cache() -> None:
    result = run_experiment(resolve_config())
    groups, per_group, system = 16, 16, 2048
    # Every prompt after the first of its group reuses the system prompt (at least).
    assert result.metrics["total_cached_tokens"] >= groups * (per_group - 1) * system * 0.9
    assert result.metrics["cache_hit_rate"] > 0.8


def test_max_concurrency_limits_in_flight_requests() -> None:
    overrides = {"workload": {**RANDOM_200["workload"], "request_rate": "inf", "max_concurrency": 8}}
    result = run_experiment(resolve_config(overrides=overrides))
    events = sorted([(r.send_s, 1) for r in result.records] + [(r.finish_s, -1) for r in result.records])
    in_flight = peak = 0
    for _, delta in events:
        in_flight += delta
        peak = max(peak, in_flight)
    assert peak == 8
    assert all(r.send_s >= r.arrival_s for r in result.records)


def test_same_seed_gives_byte_identical_metrics(tmp_path: Path) -> None:
    config = resolve_config(overrides=RANDOM_200)
    write_run(config, tmp_path / "a", plots=False)
    write_run(config, tmp_path / "b", plots=False)
    for name in ("metrics.json", "requests.jsonl", "iterations.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_run_directory_contents(tmp_path: Path) -> None:
    config = resolve_config(overrides={"workload": {**RANDOM_200["workload"], "num_prompts": 20}})
    _, run_dir = write_run(config, tmp_path / "run")
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [
        "config.resolved.yaml", "iterations.jsonl", "latency_cdf.png", "metrics.json", "queues.png",
        "requests.jsonl", "run.json", "throughput.png",
    ]  # fmt: skip
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert resolved["server"]["max_total_tokens"] > 0
    assert resolved["server"]["chunked_prefill_size"] == 8192
    assert resolved["server"]["mem_fraction_static"] == 0.88


def test_failed_run_leaves_no_directory(tmp_path: Path) -> None:
    config = resolve_config(overrides={"workload": {"dataset_name": "random", "num_prompts": 0}})
    with pytest.raises(Exception, match="num_prompts"):
        write_run(config, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []
