"""``kvsim optimize`` as a user runs it: the JSON contract, bad input, outputs and configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kvsim.cli.main import main
from tests.conftest import shared_path
from tests.optimizer.helpers import write_jsonl

KEYS = {
    "policy",
    "capacity_blocks",
    "token_hit_rate",
    "block_hit_rate",
    "requests",
    "read_blocks",
    "hit_blocks",
    "evicted_blocks",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["optimize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A 6-request Mooncake trace (block size 512)."""
    rows = [[0, 1, 2], [0, 1, 3], [4, 5], [0, 6], [4, 5, 7], [0, 1, 2]]
    return write_jsonl(
        tmp_path / "small.jsonl",
        [
            {"timestamp": i * 1000, "input_length": 512 * len(ids) - 100, "output_length": 8, "hash_ids": ids}
            for i, ids in enumerate(rows)
        ],
    )


def test_json_contract(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "--trace",
        str(small),
        "--trace-format",
        "mooncake",
        "--policy",
        "lru,opt",
        "--capacity-blocks",
        "3,inf",
        "--json",
    )
    assert code == 0 and err == ""
    payload = json.loads(out)
    assert set(payload) == {"results"}
    results = payload["results"]
    assert [(r["policy"], r["capacity_blocks"]) for r in results] == [
        ("lru", 3),
        ("lru", "inf"),
        ("opt", 3),
        ("opt", "inf"),
    ]
    assert all(set(r) == KEYS for r in results)
    assert results[1] == {
        "policy": "lru",
        "capacity_blocks": "inf",
        # Prompts are 512 x blocks - 100 tokens. Hits: r1 2 blocks (1024 tokens), r3 1 (512), r4 2 (1024),
        # r5 all 3, capped at its 1436-token prompt.
        "token_hit_rate": (1024 + 512 + 1024 + 1436) / (4 * 1436 + 2 * 924),
        "block_hit_rate": 8 / 16,
        "requests": 6,
        "read_blocks": 16,
        "hit_blocks": 8,
        "evicted_blocks": 0,
    }


def test_model_tiers_and_target(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--trace",
        str(small),
        "--trace-format",
        "mooncake",
        "--policy",
        "lru",
        "--tiers",
        "HBM:2,DRAM:4",
        "--placement",
        "exclusive",
        "--model",
        "Qwen3-8B",
        "--target-hit-rate",
        "0.3",
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    (res,) = payload["results"]
    gb_per_block = 147456 * 512 / 1e9  # Qwen3-8B bf16: 2 x 36 layers x 8 KV heads x 128 x 2 bytes per token
    assert res["capacity_blocks"] == 6
    assert res["capacity_gb"] == pytest.approx(6 * gb_per_block, rel=1e-12)
    assert [t["tier"] for t in res["per_tier"]] == ["HBM", "DRAM"]
    assert [t["capacity_blocks"] for t in res["per_tier"]] == [2, 4]
    assert sum(t["hit_rate"] for t in res["per_tier"]) == pytest.approx(res["token_hit_rate"], abs=1e-15)
    target = payload["target"]
    assert (target["metric"], target["hit_rate"]) == ("token_hit_rate", 0.3)
    (row,) = target["results"]
    assert row["policy"] == "lru" and isinstance(row["capacity_blocks"], int)
    assert row["capacity_gb"] == pytest.approx(row["capacity_blocks"] * gb_per_block, rel=1e-12)


def test_unreachable_target_is_null(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--trace", str(small), "--trace-format", "mooncake", "--target-hit-rate", "0.9", "--json"
    )
    assert code == 0
    assert json.loads(out) == {
        "results": [],
        "target": {
            "metric": "token_hit_rate",
            "hit_rate": 0.9,
            "results": [{"policy": "lru", "capacity_blocks": None}],
        },
    }


def test_curve_default_capacities(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--trace",
        str(small),
        "--trace-format",
        "mooncake",
        "--curve",
        "--curve-points",
        "3",
        "--json",
    )
    assert code == 0
    # 3 log-spaced points over the 8 distinct blocks, then unbounded.
    assert [r["capacity_blocks"] for r in json.loads(out)["results"]] == [1, 3, 8, "inf"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--trace-format", "parquet", "--capacity-blocks", "1"],
            "unknown trace format 'parquet'; choose one of: "
            "mooncake, qwen_bailian, publisher_log, optimizer_schema, hisim_collection",
        ),
        (
            ["--trace-format", "mooncake", "--policy", "arc", "--capacity-blocks", "1"],
            "unknown policy 'arc'; choose one of: lru, random_lru, leaf_aware_lru, lfu, ttl, s3fifo, opt, "
            "logged",
        ),
        (
            ["--trace-format", "mooncake", "--capacity-blocks", "0"],
            "capacities must be whole numbers > 0 or inf",
        ),
        (
            ["--trace-format", "mooncake", "--capacity-blocks", "-5"],
            "capacities must be whole numbers > 0 or inf",
        ),
        (["--trace-format", "mooncake", "--capacity-blocks", "lots"], "is not a number of blocks or inf"),
        (["--trace-format", "mooncake"], "--capacity-blocks is required"),
        (
            ["--trace-format", "mooncake", "--capacity-blocks", "1", "--tiers", "HBM:1"],
            "--tiers sets the capacities",
        ),
        (["--trace-format", "mooncake", "--target-hit-rate", "2"], "--target-hit-rate must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    small: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--trace", str(small), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("kvsim optimize: error: ") and message in err


def test_missing_field_and_empty_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"timestamp": 0, "input_length": 5, "output_length": 1}])
    code, _, err = run(capsys, "--trace", str(bad), "--trace-format", "mooncake", "--capacity-blocks", "1")
    assert code == 2 and err == f"kvsim optimize: error: {bad}, line 1: missing field(s) hash_ids\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    code, _, err = run(
        capsys, "--trace", str(empty), "--trace-format", "qwen_bailian", "--capacity-blocks", "1"
    )
    assert code == 2 and err.count("\n") == 1 and "holds no usable access" in err


def test_out_of_order_timestamps_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(
        tmp_path / "o.jsonl",
        [
            {"timestamp": 5000, "input_length": 512, "output_length": 1, "hash_ids": [1]},
            {"timestamp": 1000, "input_length": 512, "output_length": 1, "hash_ids": [1]},
        ],
    )
    code, out, err = run(capsys, "--trace", str(path), "--trace-format", "mooncake", "--capacity-blocks", "1")
    assert code == 0
    warning = "timestamps out of order (first at line 2); accesses sorted stably by time"
    assert err == f"kvsim optimize: warning: {warning}\n"
    assert "lru" in out


def test_output_dir(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    code, out, _ = run(
        capsys,
        "--trace",
        str(small),
        "--trace-format",
        "mooncake",
        "--policy",
        "lru,s3fifo,opt",
        "--capacity-blocks",
        "2,4,inf",
        "--output-dir",
        str(out_dir),
    )
    assert code == 0 and f"outputs written to {out_dir}" in out
    for name in ("summary.json", "hit_rate_over_time.png", "capacity_curve.png", "policy_comparison.png"):
        assert (out_dir / name).stat().st_size > 0, name
    assert (out_dir / "hit_rate_over_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["trace"]["distinct_blocks"] == 8 and len(summary["results"]) == 9
    with (out_dir / "lru_inf" / "instance_hit_rates.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    assert rows[0][:3] == ["TimestampUs", "CachedBlocksCurrentInstance", "CachedBlocksPerInstance"]
    assert rows[0][12:15] == ["AccInternalHitRate", "AccExternalHitRate", "AccHitRate"]
    assert len(rows) == 7  # header + 6 reads
    assert rows[-1][0] == "5000000" and float(rows[-1][14]) == 0.5  # cumulative block hit rate 8/16


def test_config_replay(tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "trace_file_path": small.name,  # relative to the config's folder
        "trace_type": "mooncake",
        "eviction_params": {"eviction_mode": 3, "eviction_batch_size_per_instance": 1},
        "instance_groups": [
            {
                "group_name": "g0",
                "quota_capacity": 3,
                "used_percentage": 1.0,
                "instances": [{"instance_id": "instance", "block_size": 512, "eviction_policy_type": "lru"}],
            }
        ],
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    code, out, _ = run(capsys, "--config", str(path), "--json")
    assert code == 0
    (res,) = json.loads(out)["results"]
    code, out, _ = run(
        capsys, "--trace", str(small), "--trace-format", "mooncake", "--capacity-blocks", "3", "--json"
    )
    (plain,) = json.loads(out)["results"]
    assert res == {**plain, "group": "g0"}
    # --policy and --capacity-blocks override every instance and group (a sweep over the config).
    code, out, _ = run(capsys, "--config", str(path), "--policy", "opt", "--capacity-blocks", "2,3", "--json")
    assert [(r["policy"], r["capacity_blocks"]) for r in json.loads(out)["results"]] == [
        ("opt", 2),
        ("opt", 3),
    ]


def test_table_output(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "--trace",
        str(small),
        "--trace-format",
        "mooncake",
        "--capacity-blocks",
        "inf",
        "--target-hit-rate",
        "0.2",
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "policy",
        "capacity_blocks",
        "token_hit",
        "block_hit",
        "requests",
        "hit_blocks",
        "evicted",
    ]
    assert lines[1].split() == ["lru", "inf", "0.5263", "0.5000", "6", "8", "0"]
    assert lines[2].startswith("target token_hit_rate >= 0.2: lru needs ")


def test_check_values_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    code, out, _ = run(
        capsys,
        "--trace",
        str(trace),
        "--trace-format",
        "mooncake",
        "--policy",
        "lru",
        "--capacity-blocks",
        "6000,inf",
        "--curve",
        "--json",
    )
    assert code == 0
    small, big = json.loads(out)["results"]
    assert (round(small["token_hit_rate"], 4), round(small["block_hit_rate"], 4)) == (0.1413, 0.1386)
    assert (round(big["token_hit_rate"], 4), round(big["block_hit_rate"], 4)) == (0.3736, 0.3664)
