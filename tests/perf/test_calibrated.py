"""The calibrated predictor: table and fitted sources, timing floor, fp8, bandwidth, ranges, copies."""

from __future__ import annotations

import pytest

from kvsim.core.errors import UserInputError
from kvsim.hardware import load_profile
from kvsim.perf import OP_NAMES, BatchSums, Deployment, HostCopyModel, StepTimePredictor, parse_batch_spec
from kvsim.perf.ops import GEMM_OPS

H200 = load_profile("H200")


@pytest.fixture(scope="module")
def h200() -> StepTimePredictor:
    return StepTimePredictor(Deployment.create("Qwen3-8B", "H200"))


def test_done_when_gemms_and_prefill_attention_come_from_tables(h200: StepTimePredictor) -> None:
    result = h200.predict(parse_batch_spec("1x8192:0"))
    assert list(result.ops) == list(OP_NAMES)
    assert sum(result.ops.values()) == result.step_time_ms
    for op in (*GEMM_OPS, "attention"):
        assert result.sources[op] == "table", op
    low, high = result.step_time_ms_range
    assert low < result.step_time_ms < high


def test_table_grid_point_minus_the_timing_floor(h200: StepTimePredictor) -> None:
    # gemm.csv: 8192,6144,4096,bf16,0.534208 (Qwen3-8B qkv); 36 layers, the tables' timing floor removed
    result = h200.predict([(8192, 0)])
    kernel = 0.534208e-3 - H200.table_timing_floor_s
    assert result.ops["qkv_proj"] == pytest.approx(36 * kernel * 1e3, rel=1e-12)
    # a small GEMM never drops below the profile's smallest kernel time
    assert H200.roofline.kernel_latency_s == 3e-6


def test_decode_attention_is_fitted_on_h200(h200: StepTimePredictor) -> None:
    result = h200.predict([(1, 2048)] * 32)
    assert result.sources["attention"] == "fitted"
    assert result.sources["qkv_proj"] == "table"


def test_shapes_missing_from_the_table_fall_back_to_the_fitted_model() -> None:
    llama = StepTimePredictor(Deployment.create("Llama-3.1-8B", "H200")).predict([(512, 0)])
    assert llama.sources["qkv_proj"] == "table"  # 6144 x 4096, as Qwen3-8B
    assert llama.sources["gate_up_proj"] == "fitted"  # 28672 x 4096 is not in gemm.csv
    fp8 = StepTimePredictor(Deployment.create("Qwen3-8B-FP8", "H200")).predict([(512, 0)])
    assert fp8.sources["qkv_proj"] == "fitted"  # no fp8 rows
    assert fp8.sources["lm_head"] == "table"  # the LM head stays bf16


def test_h20_is_fitted_and_memory_bound_terms_scale_with_bandwidth() -> None:
    h20 = StepTimePredictor(Deployment.create("Qwen3-8B", "H20"))
    h20e = StepTimePredictor(Deployment.create("Qwen3-8B", "H20-3e"))
    decode = [(1, 1024)] * 8
    slow, fast = h20.predict(decode), h20e.predict(decode)
    assert set(slow.sources.values()) <= {"fitted", "roofline"}
    ratio = slow.ops["gate_up_proj"] / fast.ops["gate_up_proj"]
    assert 1.1 < ratio <= 4.8 / 4.0 + 1e-9  # weight streaming is memory-bound
    prefill = [(8192, 0)]
    assert h20.predict(prefill).ops["gate_up_proj"] == pytest.approx(
        h20e.predict(prefill).ops["gate_up_proj"], rel=1e-3
    )  # compute-bound: the same tensor cores


def test_fp8_kv_cache_uses_fp8_parameters() -> None:
    bf16 = StepTimePredictor(Deployment.create("Qwen3-8B", "H20")).predict([(1, 8192)] * 16)
    fp8 = StepTimePredictor(Deployment.create("Qwen3-8B", "H20", kv_cache_dtype="fp8_e4m3")).predict(
        [(1, 8192)] * 16
    )
    assert fp8.ops["attention"] < 0.75 * bf16.ops["attention"]


def test_ranges_come_from_validation_errors(h200: StepTimePredictor) -> None:
    result = h200.predict([(4096, 0)])
    gemm_error = H200.validation_error("gemm", "table")
    assert gemm_error is not None and 0 < gemm_error < 0.05
    low, high = result.step_time_ms_range
    assert high - result.step_time_ms == pytest.approx(result.step_time_ms - low, rel=1e-9)
    assert high > result.step_time_ms * (1 + 0.5 * gemm_error)
    roofline = StepTimePredictor(Deployment.create("Qwen3-8B", H200.roofline_only())).predict([(4096, 0)])
    assert roofline.step_time_ms_range == (roofline.step_time_ms, roofline.step_time_ms)


def test_predict_sums_matches_predict_and_memoizes(h200: StepTimePredictor) -> None:
    batch = [(1, 300), (1, 900), (1, 50)]
    assert h200.predict_sums(BatchSums.from_batch(batch)) == h200.predict(batch)
    assert (4, 4, True) in h200._cache


def test_attention_backend_choices() -> None:
    fa3 = StepTimePredictor(Deployment.create("Qwen3-8B", "H200")).predict([(2048, 0)])
    triton = StepTimePredictor(Deployment.create("Qwen3-8B", "H200", attention_backend="triton")).predict(
        [(2048, 0)]
    )
    # The H200 table's backend (torch SDPA) has no rows under another backend: no factor is known.
    assert triton.ops["attention"] == fa3.ops["attention"]
    with pytest.raises(UserInputError, match="--attention-backend: 'magic'"):
        Deployment.create("Qwen3-8B", "H200", attention_backend="magic")


def test_host_copies() -> None:
    copies = HostCopyModel(H200)
    # copy.csv: h2d,67108864,contiguous,1,1.236896
    assert copies.seconds("h2d", 67108864) == pytest.approx(
        1.236896e-3 - H200.table_timing_floor_s, rel=1e-12
    )
    assert copies.seconds("h2d", 1 << 24, chunks=64) > copies.seconds("h2d", 1 << 24)
    h20 = HostCopyModel(load_profile("H20"))
    assert h20.source == "fitted"
    assert 1 / 60e9 < h20.seconds("h2d", 1 << 30) / (1 << 30) < 1 / 45e9  # about 55 GB/s
    with pytest.raises(UserInputError, match="copy direction 'up'"):
        copies.seconds("up", 10)
