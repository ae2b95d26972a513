"""``kvsim sweep``: the command's output, exit codes and one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvsim.cli.main import main
from kvsim.engines.experiment import SERVER_KEYS

TWO_GPUS = """\
sweep:
  grid: {gpu: [H20, H100]}
  goodput: {low: 0.5, high: 64, max_steps: 4}
slo: {p90_ttft_ms: 2 s}
cost: {gpu_hour: {H20: 1.0, H100: 2.25}}
"""


def test_sweep_prints_a_recommendation_and_writes_table_and_plots(
    sweep_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["sweep", str(sweep_file(TWO_GPUS)), "--output-dir", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "\nrecommended: config " in printed
    assert f"table: {out / 'sweep.parquet'}\n" in printed
    assert (out / "sweep.parquet").is_file()
    assert sorted(p.name for p in out.glob("*.png")) == ["goodput.png", "pareto.png", "slo_vs_rate.png"]
    assert (out / "summary.txt").read_text() in printed
    # Again: everything is reused, nothing simulated.
    assert (
        main(["sweep", str(sweep_file(TWO_GPUS)), "--output-dir", str(out), "--jobs", "1", "--no-plots"]) == 0
    )
    # The tiny workload meets the SLO even at the top of the range: 2 runs per configuration.
    assert "(0 simulated, 4 reused from" in capsys.readouterr().out


def test_list_prints_the_configurations(
    sweep_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Grid keys are paths themselves, so --set replaces the grid whole.
    grid = "sweep.grid={gpu: [H20, H100], server.tp: [1, 2]}"
    assert main(["sweep", str(sweep_file(TWO_GPUS)), "--list", "--set", grid]) == 0
    assert capsys.readouterr().out == (
        "   0  gpu=H20 tp=1\n   1  gpu=H20 tp=2\n   2  gpu=H100 tp=1\n   3  gpu=H100 tp=2\n4 configurations\n"
    )


def test_unknown_key_is_one_line_naming_it_and_the_valid_ones(
    sweep_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file("sweep:\n  grid: {server.tensor_parallel: [1, 2]}\n")
    assert main(["sweep", str(path), "--list"]) == 2
    assert capsys.readouterr().err == (
        "kvsim sweep: error: sweep.grid: unknown key server.tensor_parallel; "
        f"valid: {', '.join(SERVER_KEYS)}\n"
    )


def test_empty_grid_is_a_one_line_error(
    sweep_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", str(sweep_file("sweep: {grid: {}}\n")), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim sweep: error: sweep: the grid is empty")
    assert err.count("\n") == 1


def test_unknown_gpu_is_refused_before_any_run(
    sweep_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file("sweep:\n  grid: {gpu: [H20, H99]}\n")
    assert main(["sweep", str(path), "--output-dir", str(tmp_path / "out"), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim sweep: error: config 1 (gpu=H99): unknown GPU 'H99'; choose one of: ")
    assert not list((tmp_path / "out" / "runs").glob("*.json"))


def test_missing_gpu_price_is_refused(
    sweep_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file(TWO_GPUS.replace(", H100: 2.25", ""))
    assert main(["sweep", str(path), "--jobs", "1"]) == 2
    assert (
        capsys.readouterr().err == "kvsim sweep: error: cost.gpu_hour: no price for GPU 'H100'; priced: H20\n"
    )


def test_slo_no_configuration_meets_exits_1_with_the_reason(
    sweep_file: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sweep_file(TWO_GPUS.replace("p90_ttft_ms: 2 s", "p90_ttft_ms: 1 ms"))
    assert main(["sweep", str(path), "--output-dir", str(tmp_path / "out"), "--jobs", "1", "--no-plots"]) == 1
    captured = capsys.readouterr()
    assert (
        "no configuration meets the SLOs (p90_ttft_ms <= 1) at any rate tried (the lowest: 0.5 req/s)."
        in captured.out
    )
    assert "closest: config 1 (gpu=H100) at 0.5 req/s: p90_ttft_ms=" in captured.out
    assert captured.err == "kvsim sweep: no configuration to recommend (see above)\n"
    assert (tmp_path / "out" / "sweep.parquet").is_file()


def test_bad_set_is_a_one_line_error(
    sweep_file: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", str(sweep_file(TWO_GPUS)), "--set", "no-equals-sign"]) == 2
    assert capsys.readouterr().err == (
        "kvsim sweep: error: --set: expected PATH=VALUE such as workload.num_prompts=200, "
        "got 'no-equals-sign'\n"
    )
