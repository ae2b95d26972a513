"""The roofline step-time predictor: breakdown invariants, exact roofline values, bad input.

These tests pin the plain roofline, so they run on the H20 profile with every family switched to
``roofline`` (the bundled H20 profile is served by fitted parameters; see test_calibrated.py).
"""

from __future__ import annotations

import pytest

from kvsim.core.errors import UserInputError
from kvsim.hardware import load_profile
from kvsim.perf import OP_NAMES, Deployment, StepTimePredictor, parse_batch_spec

H20_ROOFLINE = load_profile("H20").roofline_only()


@pytest.fixture(scope="module")
def h20() -> StepTimePredictor:
    return StepTimePredictor(Deployment.create("Qwen3-8B", H20_ROOFLINE))


def test_ops_sum_to_step_time(h20: StepTimePredictor) -> None:
    result = h20.predict(parse_batch_spec("32x1:2048"))
    assert list(result.ops) == list(OP_NAMES)
    assert sum(result.ops.values()) == result.step_time_ms
    assert set(result.sources.values()) == {"roofline"}
    assert result.profile == "H20"
    assert result.step_time_ms_range == (result.step_time_ms, result.step_time_ms)


def test_decode_gemm_is_memory_bound(h20: StepTimePredictor) -> None:
    result = h20.predict([(1, 2048)] * 32)
    # 36 * 2 * (32*4096 + 6144*4096 + 32*6144) bytes at 4.0 TB/s * 0.8
    expected = 36 * 2 * (32 * 4096 + 6144 * 4096 + 32 * 6144) / (4.0e12 * 0.8) * 1e3
    assert result.ops["qkv_proj"] == pytest.approx(expected, rel=1e-12)
    assert result.ops["overhead"] == pytest.approx(0.020)  # one CUDA-graph launch
    assert result.ops["allreduce"] == 0.0


def test_prefill_gemm_is_compute_bound(h20: StepTimePredictor) -> None:
    result = h20.predict([(8192, 0)])
    expected = 36 * 2 * 8192 * 24576 * 4096 / (148e12 * 0.8) * 1e3
    assert result.ops["gate_up_proj"] == pytest.approx(expected, rel=1e-12)
    assert result.ops["overhead"] == pytest.approx((36 * 11 + 4) * 2e-3)


def test_fp8_weights_speed_up_prefill_gemms() -> None:
    bf16 = StepTimePredictor(Deployment.create("Qwen3-8B", H20_ROOFLINE)).predict([(8192, 0)])
    fp8 = StepTimePredictor(Deployment.create("Qwen3-8B-FP8", H20_ROOFLINE)).predict([(8192, 0)])
    assert fp8.ops["gate_up_proj"] == pytest.approx(bf16.ops["gate_up_proj"] / 2, rel=1e-12)
    assert fp8.ops["attention"] == bf16.ops["attention"]


def test_tp_adds_allreduce() -> None:
    result = StepTimePredictor(Deployment.create("Qwen3-32B", H20_ROOFLINE, tp=2)).predict([(1, 100)] * 8)
    nbytes = 2 * 64 * 8 * 5120 * 2 + 8 * 151936 * 2
    expected = (2 * 1 / 2 * nbytes / 450e9 + 129 * 10e-6) * 1e3
    assert result.ops["allreduce"] == pytest.approx(expected, rel=1e-12)


def test_bad_deployments() -> None:
    with pytest.raises(UserInputError, match="--tp 3 does not divide"):
        Deployment.create("Qwen3-8B", "H20", tp=3)
    with pytest.raises(UserInputError, match="--tp: must be >= 1"):
        Deployment.create("Qwen3-8B", "H20", tp=0)
    with pytest.raises(UserInputError, match="no fp8 tensor cores"):
        Deployment.create("Qwen3-8B-FP8", "A100")
    with pytest.raises(UserInputError, match="GiB of weights per GPU"):
        Deployment.create("Llama-3.1-70B", "L40S")


def test_batch_that_does_not_fit(h20: StepTimePredictor) -> None:
    with pytest.raises(UserInputError, match=r"batch needs 144.0 GiB of KV cache for 1048832 tokens"):
        h20.predict(parse_batch_spec("256x1:4096"))


def test_batch_validation(h20: StepTimePredictor) -> None:
    with pytest.raises(UserInputError, match="at least one request"):
        h20.predict([])
    with pytest.raises(UserInputError, match="batch item 1: past_len must be >= 0"):
        h20.predict([(1, 0), (1, -1)])
