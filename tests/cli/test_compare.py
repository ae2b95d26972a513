"""``kvsim compare`` on a bench_serving JSONL written by hand: the errors, the plot, --rerun, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kvsim.cli.main import main
from kvsim.metrics.compare import COMPARED_METRICS

SMALL = ["--dataset-name", "random", "--random-input-len", "500", "--random-output-len", "50",
         "--num-prompts", "20", "--request-rate", "8", "--no-plots"]  # fmt: skip
#: Real = kvsim x factor, so every error is exact in binary: x2 gives -50%, x0.5 gives +100%.
FACTORS = {"ttft": 2.0, "itl": 2.0, "e2e_latency": 2.0, "tpot": 0.5}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated run (20 prompts), shared by the tests of this module."""
    target = tmp_path_factory.mktemp("compare") / "run"
    assert main(["sim", *SMALL, "--output-dir", str(target)]) == 0
    return target


def _factor(key: str) -> float:
    for name, factor in FACTORS.items():
        if key.endswith(f"_{name}_ms"):
            return factor
    return 1.0  # duration and throughputs: equal, error 0


def _real(run_dir: Path, **extra: object) -> dict[str, object]:
    sim = json.loads((run_dir / "metrics.json").read_text())
    real: dict[str, object] = {"backend": "sglang", "dataset_name": "random", "request_rate": 8.0}
    for key in ("completed", "total_input_tokens", "total_output_tokens"):
        real[key] = sim[key]
    for key, _ in COMPARED_METRICS:
        real[key] = sim[key] * _factor(key)
    real.update(extra)
    return real


def _jsonl(path: Path, *results: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in results), encoding="utf-8")
    return path


def test_compare_prints_exact_errors_and_writes_the_plot(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = _jsonl(tmp_path / "bench.jsonl", _real(run_dir))
    plot = tmp_path / "out" / "c.png"
    assert main(["compare", str(run_dir), str(real), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    sim = json.loads((run_dir / "metrics.json").read_text())
    lines = out.splitlines()
    for key, label in COMPARED_METRICS:
        error = {2.0: "-50.0%", 0.5: "+100.0%", 1.0: "+0.0%"}[_factor(key)]
        row = f"{label + ':':<34} {sim[key]:>12.2f} {sim[key] * _factor(key):>12.2f} {error:>9}"
        assert row in lines
    # 9 metrics at 50%, 3 at 100%, 5 at 0%: (4.5 + 3) / 17.
    assert f"{'MAPE over 17 metrics:':<34} {f'{7.5 / 17 * 100:.1f}%':>12}" in lines
    assert f"{'Successful requests:':<34} {'20':>12} {'20':>12} {'':>9}" in lines
    assert f"plot: {plot}" in lines
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_compare_json_and_line_selection(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = {key: 1.0 for key, _ in COMPARED_METRICS}
    real = _jsonl(tmp_path / "bench.jsonl", _real(run_dir), {**other, "request_rate": 1.0})
    assert main(["compare", str(run_dir), str(real), "--line", "1", "--json", "--no-plot"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["line"] == 1 and payload["plot"] is None
    errors = {row["key"]: row["error"] for row in payload["metrics"]}
    assert errors["mean_ttft_ms"] == -0.5
    assert errors["p99_tpot_ms"] == 1.0
    assert errors["input_throughput"] == 0.0
    assert payload["mape"] == 7.5 / 17
    assert not (run_dir / "compare.png").exists()


def test_compare_notes_a_different_pool(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = _jsonl(tmp_path / "bench.jsonl", _real(run_dir, server_info={"max_total_num_tokens": 50000}))
    assert main(["compare", str(run_dir), str(real), "--no-plot"]) == 0
    sim_pool = json.loads((run_dir / "metrics.json").read_text())["max_total_tokens"]
    err = capsys.readouterr().err
    assert f"note: KV pool: kvsim {sim_pool} tokens, real server 50000" in err


def test_rerun_follows_the_real_settings(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = _real(
        run_dir,
        request_rate=16.0,
        random_input_len=400,
        random_output_len=40,
        random_range_ratio=1.0,
        server_info={
            "disable_overlap_schedule": True,
            "chunked_prefill_size": 4096,
            "max_total_num_tokens": 1,
        },
        input_lens=[400] * 12,
        output_lens=[40] * 12,
    )
    path = _jsonl(tmp_path / "bench.jsonl", real)
    log = tmp_path / "server.log"
    log.write_text("[x] max_total_num_tokens=60000, chunked_prefill_size=4096\n", encoding="utf-8")
    rerun = tmp_path / "rerun"
    argv = [
        "compare",
        str(run_dir),
        str(path),
        "--rerun",
        "--server-log",
        str(log),
        "--output-dir",
        str(rerun),
    ]
    assert main([*argv, "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert f"kvsim run: {rerun}" in out and "note: re-simulated into" in err
    config = yaml.safe_load((rerun / "config.resolved.yaml").read_text())
    assert config["server"]["max_total_tokens"] == 60000  # the log wins over server_info
    assert config["server"]["disable_overlap_schedule"] is True
    assert config["server"]["chunked_prefill_size"] == 4096
    workload = config["workload"]
    assert (workload["request_rate"], workload["num_prompts"]) == (16.0, 12)
    assert (workload["random_input_len"], workload["random_output_len"], workload["random_range_ratio"]) == (
        400,
        40,
        1.0,
    )
    metrics = json.loads((rerun / "metrics.json").read_text())
    assert metrics["completed"] == 12 and metrics["total_input_tokens"] == 12 * 400
    assert metrics["max_total_tokens"] == 60000


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        ("missing_run", [], "run directory not found"),
        ("missing_real", [], "bench_serving result not found"),
        ("bad_json", [], "result 1 is not valid JSON"),
        ("ok", ["--line", "3"], "--line 3 is out of range"),
        ("ok", ["--line", "0"], "--line: must be >= 1, got 0"),
        ("ok", ["--output-dir", "x"], "--output-dir only applies with --rerun"),
        ("no_metrics", [], "no metrics.json; is it a kvsim run directory?"),
        ("bad_log", [], "no 'max_total_num_tokens=N' line"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: str,
    extra: list[str],
    message: str,
) -> None:
    target = run_dir
    real = _jsonl(tmp_path / "bench.jsonl", _real(run_dir))
    if make == "missing_run":
        target = tmp_path / "nope"
    elif make == "missing_real":
        real = tmp_path / "nope.jsonl"
    elif make == "bad_json":
        real.write_text("{oops\n", encoding="utf-8")
    elif make == "no_metrics":
        target = tmp_path / "empty"
        target.mkdir()
    elif make == "bad_log":
        log = tmp_path / "server.log"
        log.write_text("no pool here\n", encoding="utf-8")
        extra = ["--server-log", str(log)]
    assert main(["compare", str(target), str(real), "--no-plot", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim compare: error: ") and message in err
    assert err.count("\n") == 1
