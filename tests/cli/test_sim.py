"""``kvsim sim`` as a user runs it: the report, the run directory, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvsim.cli.main import main
from tests.conftest import shared_path

SMALL = ["--dataset-name", "random", "--random-input-len", "500", "--random-output-len", "50",
         "--num-prompts", "20", "--request-rate", "8", "--no-plots"]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["sim", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sim_writes_metrics_and_prints_the_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, *SMALL, "--output-dir", str(tmp_path / "d"))
    assert code == 0
    assert "Serving Benchmark Result" in out and f"run directory: {tmp_path / 'd'}" in out
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    for key in ("completed", "total_input_tokens", "total_output_tokens", "duration", "request_throughput",
                "input_throughput", "output_throughput", "total_throughput"):  # fmt: skip
        assert key in metrics
    for metric in ("ttft", "tpot", "itl", "e2e_latency"):
        for stat in ("mean", "median", "std", "p90", "p95", "p99"):
            assert f"{stat}_{metric}_ms" in metrics
    assert metrics["completed"] == 20


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--gpu", "H200", "--num-prompts", "7", "--print-config")
    assert code == 0
    assert "gpu: H200" in out and "num_prompts: 7" in out


def test_mooncake_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = shared_path("data", "traces", "mooncake", "conversation_trace.jsonl")
    code, out, _ = _run(capsys, "--dataset-name", "mooncake", "--dataset-path", str(trace), "--num-prompts",
                        "50", "--no-plots", "--output-dir", str(tmp_path / "m"))  # fmt: skip
    assert code == 0
    assert "trace" in out
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["completed"] == 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset-name", "sharegpt"], "invalid choice: 'sharegpt'"),
        (["--num-prompts", "0", "--dataset-name", "random"], "num_prompts must be >= 1"),
        (["--random-input-len", "-5", "--dataset-name", "random"], "random_input_len must be >= 1"),
        (["--request-rate", "0"], "--request-rate: must be > 0"),
        (["--request-rate", "fast"], "--request-rate: 'fast' is not a number or inf"),
        (["--max-concurrency", "0"], "--max-concurrency: must be > 0"),
        (
            ["--dataset-name", "mooncake", "--dataset-path", "/nonexistent/trace.jsonl"],
            "/nonexistent/trace.jsonl",
        ),
        (["--config", "/nonexistent/exp.yaml"], "config file not found: /nonexistent/exp.yaml"),
        (["--gpu", "TPU"], "unknown GPU 'TPU'"),
        (["--mem-fraction-static", "1.5"], "--mem-fraction-static: must lie in (0, 1)"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    out_dir = tmp_path / "run"
    with pytest.raises(SystemExit) if message.startswith("invalid choice") else _no_raise():
        code, _, err = _run(capsys, *argv, "--no-plots", "--output-dir", str(out_dir))
        assert code == 2
        assert message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_malformed_trace_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\nnot json\n')
    code, _, err = _run(capsys, "--dataset-name", "mooncake", "--dataset-path", str(trace), "--no-plots",
                        "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert code == 2
    assert f"{trace}" in err and "line 2" in err


def test_unknown_config_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("workload:\n  nun_prompts: 3\n")
    code, _, err = _run(capsys, "--config", str(config))
    assert code == 2
    assert "unknown key workload.nun_prompts; valid: dataset_name" in err


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
