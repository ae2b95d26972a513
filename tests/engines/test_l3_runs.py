"""Whole runs with an L3 tier: the run directory, KVCM's event log replayed by ``kvsim optimize``,
determinism, and the Mooncake trace with two KVCM group quotas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache.optimizer.logged import replay_logged
from kvsim.cli.main import main
from kvsim.engines.experiment import KVCM_EVENTS_FILE, resolve_config, run_experiment, write_run
from kvsim.metrics import read_requests
from kvsim.workloads.publisher_log import iter_publisher_events
from tests.conftest import shared_path

# 16 groups of 8 prompts sharing 2048-token system prompts, on a 12k-token device pool and a 14.4k-token
# host pool: system prompts fall out of both and come back from KVCM, whose 4 GB group quota (about
# 27k tokens of Qwen3-8B) makes it reclaim and refuse writes.
GSP_L3: dict[str, Any] = {
    "server": {
        "max_total_tokens": 12_000,
        "page_size": 64,
        "enable_hierarchical_cache": True,
        "hicache_ratio": 1.2,
        "hicache_storage_backend": "kvcm",
        "hicache_storage_prefetch_policy": "wait_complete",
    },
    "workload": {
        "dataset_name": "generated-shared-prefix",
        "gsp_num_groups": 16,
        "gsp_prompts_per_group": 8,
        "gsp_system_prompt_len": 2048,
        "gsp_question_len": 128,
        "gsp_output_len": 64,
        "request_rate": 8,
        "seed": 3,
    },
    "kvcm": {
        "storages": [{"name": "mooncake_01", "type": "mooncake"}],
        "quota": "4 GB",
        "type_quotas": {},
        "delay_before_delete_ms": 0,
    },
}
L3_KEYS = {
    "l3_hit_ratio",
    "l3_prefetch_ratio",
    "l3_backend",
    "l3_prefetch_policy",
    "l3_storage_tiers",
    "l3_prefetches",
    "l3_prefetches_skipped",
    "l3_prefetches_revoked",
    "l3_prefetched_tokens",
    "l3_mean_prefetch_ms",
    "l3_backed_up_tokens",
    "l3_written_blocks",
    "l3_already_cached_blocks",
    "l3_refused_blocks",
    "l3_failed_blocks",
    "l3_read_bytes",
    "l3_write_bytes",
    "l3_read_busy_s",
    "l3_write_busy_s",
    "l3_queries",
    "l3_query_blocks",
    "l3_hit_blocks",
}


def test_run_directory_holds_the_kvcm_event_log_that_replays_to_the_same_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, run_dir = write_run(resolve_config(None, GSP_L3), tmp_path / "run", plots=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    kvcm_keys = {"kvcm_reclaimed_blocks", "kvcm_refusals", "kvcm_expired_writes", "kvcm_events"}
    assert set(metrics) >= L3_KEYS | kvcm_keys
    assert metrics["l3_storage_tiers"] == "mooncake_01=mooncake"
    # KVCM reclaimed and refused, and still served hits that became prompt tokens served from L3.
    assert metrics["kvcm_reclaimed_blocks"] > 0 and metrics["l3_refused_blocks"] > 0
    assert metrics["l3_hit_blocks"] > 0 and metrics["l3_hit_ratio"] > 0
    records = read_requests(run_dir)
    prompt = sum(r.input_len for r in records)
    hit_ratio = result.metrics["l3_hit_ratio"]  # metrics.json keeps 6 decimals
    assert sum(r.cached_tokens_storage or 0 for r in records) / prompt == pytest.approx(hit_ratio)
    assert sum(r.prefetched_tokens or 0 for r in records) == metrics["l3_prefetched_tokens"]
    # A request is served from L3 only what its own prefetch brought.
    assert all(0 <= (r.cached_tokens_storage or 0) <= (r.prefetched_tokens or 0) for r in records)
    assert result.config["kvcm"]["quota"] == 4_000_000_000

    # The log replays, as it happened, to exactly the hits KVCM returned during the run.
    log = run_dir / KVCM_EVENTS_FILE
    events = list(iter_publisher_events(log, 64))
    assert len(events) == metrics["kvcm_events"]
    replay, stats = replay_logged(events, 64)
    assert (replay.requests, replay.read_blocks, replay.hit_blocks) == (
        metrics["l3_queries"],
        metrics["l3_query_blocks"],
        metrics["l3_hit_blocks"],
    )
    assert stats.reclaimed_blocks > 0
    # And through the command line.
    argv = ["optimize", "--trace", str(log), "--trace-format", "publisher_log", "--policy", "logged"]
    code = main([*argv, "--block-size", "64", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["results"][0]["hit_blocks"] == metrics["l3_hit_blocks"]


def test_l3_runs_are_deterministic(tmp_path: Path) -> None:
    config = resolve_config(None, GSP_L3)
    _, first = write_run(config, tmp_path / "a", plots=False)
    _, second = write_run(config, tmp_path / "b", plots=False)
    for name in ("metrics.json", "requests.jsonl", "iterations.jsonl", KVCM_EVENTS_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_plain_stores_write_no_event_log(tmp_path: Path) -> None:
    config = resolve_config(None, GSP_L3)
    config["server"]["hicache_storage_backend"] = "file"
    config["server"]["hicache_storage_tier"] = "3fs"
    result, run_dir = write_run(config, tmp_path / "file", plots=False)
    assert not (run_dir / KVCM_EVENTS_FILE).exists()
    assert set(result.metrics) >= L3_KEYS
    assert result.metrics["l3_storage_tiers"] == "3fs"
    assert result.metrics["l3_hit_blocks"] > 0  # the file store has no quota: nothing is reclaimed


def test_random_prompts_never_hit_l3() -> None:
    config = resolve_config(
        None,
        {
            "server": GSP_L3["server"],
            "workload": {
                "dataset_name": "random",
                "num_prompts": 40,
                "random_input_len": 1500,
                "request_rate": 8,
            },
        },
    )
    metrics = run_experiment(config).metrics
    assert metrics["l3_written_blocks"] > 0
    assert (metrics["l3_hit_blocks"], metrics["l3_hit_ratio"], metrics["l3_prefetched_tokens"]) == (0, 0.0, 0)


def test_mooncake_trace_small_l2_hits_l3_and_the_quota_changes_hits_and_ttft() -> None:
    """The issue's acceptance run, cut to the first 200 records: a 100k-token device pool and a 150k-token
    host pool on Qwen3-8B / H20, KVCM on a 3FS tier. With a 100 TB group quota pages prefetched from L3
    serve part of the prompts; with 100 GB (about 680k tokens) KVCM reclaims them before they are asked
    for again, and TTFT rises."""
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    runs = {}
    for quota in ("100 TB", "100 GB"):
        config = resolve_config(
            None,
            {
                "server": {
                    "page_size": 64,
                    "max_total_tokens": 100_000,
                    "enable_hierarchical_cache": True,
                    "hicache_ratio": 1.5,
                    "hicache_storage_backend": "kvcm",
                },
                "workload": {
                    "dataset_name": "mooncake",
                    "dataset_path": str(trace),
                    "num_prompts": 200,
                    "mooncake_slowdown_factor": 10,
                },
                "kvcm": {
                    "storages": [{"name": "threefs_01", "type": "3fs"}],
                    "quota": quota,
                    "type_quotas": {},
                },
            },
        )
        runs[quota] = run_experiment(config).metrics
    big, small = runs["100 TB"], runs["100 GB"]
    assert big["l3_prefetched_tokens"] > 0 and big["l3_hit_ratio"] > 0 and big["l3_mean_prefetch_ms"] > 0
    assert big["kvcm_reclaimed_blocks"] == 0 and small["kvcm_reclaimed_blocks"] > 0
    assert small["l3_hit_ratio"] < big["l3_hit_ratio"]
    assert small["mean_ttft_ms"] > big["mean_ttft_ms"]
