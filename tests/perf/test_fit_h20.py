"""The committed H20 parameters against the third-party H20-3e tables in ../shared (skipped without them)."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.hardware import load_profile
from kvsim.perf import fit as fitting
from kvsim.perf.calibration import fitted_params
from kvsim.perf.validation import aic_tables, decode_arrays, gemm_arrays, prefill_arrays
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def aic() -> dict:
    shared_path("data", "third_party", "aic-h20-3e-sglang-0.5.1.post1", "gemm_perf.csv")
    return aic_tables(shared_path())


def _median_error(predicted: np.ndarray, seconds: np.ndarray) -> float:
    return float(np.median(np.abs(predicted / seconds - 1)))


@pytest.mark.parametrize("key", ["bf16", "fp8"])
def test_committed_parameters_reproduce_the_h20_3e_tables(aic: dict, key: str) -> None:
    gpu = load_profile("H20-3e")
    bw = gpu.memory_bandwidth
    _, gemm, _ = fitted_params(gpu, "gemm")
    data, seconds = gemm_arrays(aic["gemm"], key, gpu.peak_flops(key), bw)
    assert _median_error(fitting.GEMM.predict(gemm[key], data), seconds) < 0.10
    _, prefill, _ = fitted_params(gpu, "attention_prefill")
    data, seconds = prefill_arrays(aic["prefill"], key, gpu.peak_flops("bf16"), bw)
    assert _median_error(fitting.PREFILL.predict(prefill[key], data), seconds) < 0.10
    _, decode, _ = fitted_params(gpu, "attention_decode")
    data, seconds = decode_arrays(aic["decode"], key, gpu.peak_flops(key), bw)
    assert _median_error(fitting.DECODE.predict(decode[key], data), seconds) < 0.10


def test_fitting_recovers_a_curve_from_a_sample(aic: dict) -> None:
    gpu = load_profile("H20-3e")
    frame = aic["gemm"]
    frame = frame[(frame.key == "bf16") & (frame.n >= 1024) & (frame.k >= 1024)].sample(400, random_state=0)
    data, seconds = gemm_arrays(frame, "bf16", gpu.peak_flops("bf16"), gpu.memory_bandwidth)
    params, errors = fitting.fit(fitting.GEMM_PLAIN, data, seconds)
    assert np.median(np.abs(errors)) < 0.10
    assert 0.5 < params.e_max <= 1.0


def test_aic_rows_stay_in_shared_only() -> None:
    from tests.conftest import REPO_ROOT

    folders = ("kvsim", "tests", "docs", "scripts", "benchmarks")
    committed = [p for folder in folders for p in (REPO_ROOT / folder).rglob("*_perf.csv")]
    assert committed == []
