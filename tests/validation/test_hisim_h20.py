"""The HiSim H20 reproduction: its configs, its published values, its error math and the quick mode."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kvsim.engines.experiment import resolve_config
from kvsim.perf.ops import BatchSums
from kvsim.perf.predictor import Deployment, StepTimePredictor
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """scripts/run_hisim_h20.py, loaded by path (scripts/ is not a package)."""
    path = REPO_ROOT / "scripts" / "run_hisim_h20.py"
    spec = importlib.util.spec_from_file_location("run_hisim_h20", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_experiment_files_hold_the_published_settings(script: ModuleType) -> None:
    sweep = script.load_sweep()
    assert sweep["rates"] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32] and sweep["num_prompts"] == 100
    for model, slug in sweep["models"].items():
        for case, pattern in sweep["cases"].items():
            config = resolve_config(script.EXPERIMENTS / pattern.format(slug=slug))
            server, workload = config["server"], config["workload"]
            assert config["model"] == model and config["gpu"] == "H20"
            assert server["disable_overlap_schedule"] is True
            if case == "no_cache":
                assert (workload["dataset_name"], workload["num_prompts"]) == ("random", 100)
                assert (workload["random_input_len"], workload["random_output_len"]) == (2000, 512)
                assert workload["random_range_ratio"] == 0.5
            else:
                assert workload["dataset_name"] == "generated-shared-prefix"
                assert workload["gsp_num_groups"] * workload["gsp_prompts_per_group"] == 100
                # The no_cache workload's means: prompts 1,500 tokens, outputs 384.
                assert workload["gsp_system_prompt_len"] + workload["gsp_question_len"] == 1500
                assert workload["gsp_output_len"] == 384
            if case == "l2":
                assert server["enable_hierarchical_cache"] is True and server["max_total_tokens"] == 16384
            else:
                assert "enable_hierarchical_cache" not in server


def test_published_values_name_their_source(script: ModuleType) -> None:
    sweep = script.load_sweep()
    rates = [float(r) for r in sweep["rates"]]
    points = script.load_published(rates)
    assert {(p.model, p.case) for p in points} == {(m, c) for m in sweep["models"] for c in sweep["cases"]}
    assert all(p.source.startswith("§3.2") and p.rate in rates for p in points)
    # "rates: all" expands to every rate: the hit ratio of each of the 6 curves at 11 rates.
    assert sum(p.metric == "prefix_hit_ratio" for p in points) == 6 * 11
    eight_tpot = [
        p for p in points if (p.model, p.case, p.metric) == ("Qwen3-8B", "no_cache", "mean_tpot_ms")
    ]
    assert [(p.rate, p.real, p.hisim) for p in eight_tpot] == [
        (1.0, 11.0, 11.0),
        (4.0, 56.0, 56.0),
        *[(r, 62.0, 61.0) for r in (8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0)],
    ]


def test_point_errors_and_the_fit_subset(script: ModuleType) -> None:
    assert script.point_error("mean_ttft_ms", 3.0, 2.0) == 0.5
    assert script.point_error("prefix_hit_ratio", 0.25, 0.5) == -0.25  # absolute, in ratio units
    assert script.point_error("prefix_hit_ratio", 0.0, 0.0) == 0.0
    fit = script.load_sweep()["fit"]

    def point(case: str, metric: str, rate: float) -> object:
        return script.Point("Qwen3-8B", case, metric, rate, 1.0, None, "§3.2")

    assert script.in_fit_subset(point("no_cache", "mean_ttft_ms", 4.0), fit)
    assert not script.in_fit_subset(point("no_cache", "mean_ttft_ms", 8.0), fit)  # above max_rate
    assert not script.in_fit_subset(point("l1", "mean_ttft_ms", 1.0), fit)  # another case
    assert not script.in_fit_subset(point("no_cache", "prefix_hit_ratio", 1.0), fit)  # never fitted


def test_prefill_scale_multiplies_prefill_steps_only(script: ModuleType) -> None:
    deployment = Deployment.create("Qwen3-8B", "H20")
    plain = StepTimePredictor(deployment)
    scaled = script._scaled_predictor(1.5)(deployment)
    prefill = BatchSums.from_batch([(1500, 0)])
    decode = BatchSums.from_batch([(1, 1500)] * 8)
    assert scaled.predict_sums(prefill).step_time_ms == plain.predict_sums(prefill).step_time_ms * 1.5
    assert scaled.predict_sums(decode).step_time_ms == plain.predict_sums(decode).step_time_ms
    step = scaled.predict_sums(prefill)
    assert sum(step.ops.values()) == pytest.approx(step.step_time_ms, rel=1e-12)


def test_fit_searches_the_grid_on_the_subset(script: ModuleType) -> None:
    sweep = script.load_sweep()
    sweep["fit"] = {**sweep["fit"], "grid": {"start": 1.0, "stop": 1.2, "step": 0.2}}
    points = script.load_published([float(r) for r in sweep["rates"]])
    fit, rows = script.fit_prefill_scale(sweep, points, workers=1, quick=True)
    assert [scale for scale, _ in fit.curve] == [1.0, 1.2]
    assert fit.value in (1.0, 1.2) and fit.subset_points == 7
    # The subset's points are at rates 1 and 4: one run per scale and rate.
    assert sorted((r["prefill_scale"], r["rate"]) for r in rows) == [
        (1.0, 1.0),
        (1.0, 4.0),
        (1.2, 1.0),
        (1.2, 4.0),
    ]


def test_quick_mode_end_to_end(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "hisim_h20.md"
    assert script.main(["--quick", "--report", str(report), "--jobs", "1"]) == 0
    assert f"report: {report}" in capsys.readouterr().out
    text = report.read_text()
    assert "**Quick mode: a pipeline check, not a validation.**" in text
    assert "| model | case | mean TTFT | mean TPOT | mean ITL | mean E2E | input throughput |" in text
    assert "### Qwen3-32B-FP8, L1+L2 hits (GSP, HiCache)" in text
    assert "Not fitted in this run" in text
    assets = tmp_path / "hisim_h20"
    for name in ("qwen3_8b.png", "qwen3_32b_fp8.png"):
        assert (assets / name).read_bytes()[:4] == b"\x89PNG"
        assert f"](hisim_h20/{name})" in text
    with (assets / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    # 2 models x 3 cases x 2 rates, 10 prompts each (GSP: 2 groups x 5).
    assert len(rows) == 12
    assert {r["completed"] for r in rows} == {"10"}
    assert {(r["rate"], r["prefill_scale"]) for r in rows} == {("1", "1"), ("16", "1")}


def test_the_committed_report_and_its_plots_exist() -> None:
    report = REPO_ROOT / "docs" / "validation" / "hisim_h20.md"
    text = report.read_text()
    assert "Generated by `python scripts/run_hisim_h20.py`; do not edit by hand." in text
    for name in ("qwen3_8b.png", "qwen3_32b_fp8.png", "results.csv"):
        assert (report.parent / "hisim_h20" / name).is_file()
