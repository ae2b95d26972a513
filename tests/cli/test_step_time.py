"""``kvsim step-time`` and ``kvsim profiles`` as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvsim.cli.main import main
from tests.conftest import REPO_ROOT


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_step_time_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "step-time", "--model", "Qwen3-8B", "--gpu", "H20", "--batch", "32x1:2048", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"step_time_ms", "step_time_ms_range", "ops", "sources", "profile"}
    assert result["profile"] == "H20"
    assert sum(result["ops"].values()) == pytest.approx(result["step_time_ms"], rel=1e-12)
    low, high = result["step_time_ms_range"]
    assert low < result["step_time_ms"] < high
    assert set(result["sources"].values()) <= {"table", "fitted", "roofline", "aic"}


def test_done_when_h200_prefill_reports_tables(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "step-time", "--model", "Qwen3-8B", "--gpu", "H200", "--batch", "1x8192:0", "--json"
    )
    assert code == 0
    result = json.loads(out)
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head", "attention"):
        assert result["sources"][op] == "table"
    low, high = result["step_time_ms_range"]
    assert low < result["step_time_ms"] < high


def _broken_profile(tmp_path: Path) -> Path:
    folder = tmp_path / "H200-copy"
    shutil.copytree(REPO_ROOT / "kvsim" / "hardware" / "profiles" / "H200", folder)
    (folder / "gemm.csv").unlink()
    return folder


def test_missing_table_is_refused_and_allow_roofline_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = str(_broken_profile(tmp_path))
    code, out, err = _run(capsys, "step-time", "--gpu", folder, "--batch", "1x512:0", "--json")
    assert code == 2 and out == ""
    assert "gemm.csv does not exist" in err and "--allow-roofline" in err
    code, out, err = _run(
        capsys, "step-time", "--gpu", folder, "--batch", "1x512:0", "--json", "--allow-roofline"
    )
    assert code == 0
    assert json.loads(out)["sources"]["qkv_proj"] == "roofline"
    assert "warning: gemm served from the roofline" in err


def test_step_time_explain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "step-time", "--batch", "1x8192:0", "--explain")
    assert code == 0
    assert "gate_up_proj" in out and "total" in out


def test_profiles_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "profiles", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["name"] for row in rows] == ["A100", "H100", "H20", "H20-3e", "H200", "L40S"]
    h20 = rows[2]
    assert h20["memory_gib"] == 96.0
    assert h20["sources"]["gemm"] in {"table", "fitted", "roofline"}
    assert "calibrated_by" in h20
    h200 = rows[4]
    assert h200["sources"]["gemm"] == "table"
    assert 0 < h200["validation_median_rel_err"]["gemm"] < 0.05
    assert rows[0]["validation_median_rel_err"]["gemm"] is None  # A100: roofline, nothing measured


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nope", "--batch", "1:0"], "unknown model 'nope'; choose one of:"),
        (["--gpu", "nope", "--batch", "1:0"], "unknown GPU 'nope'; choose one of:"),
        (["--batch", "1x2"], "--batch item 1 '1x2'"),
        (["--batch", "1x0:0"], "EXTEND must be > 0"),
        (["--tp", "0", "--batch", "1:0"], "--tp: must be >= 1"),
        (["--tp", "3", "--batch", "1:0"], "--tp 3 does not divide"),
        (["--batch", "512x1:8192"], "batch needs"),
        (["--model", "Qwen3-8B-FP8", "--quantization", "none", "--batch", "1:0"], "conflicts"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, "step-time", *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_are_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvsim.cli.main", "step-time", "--dtype", "int3", "--batch", "1:0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "invalid choice: 'int3'" in proc.stderr
