"""The calibrated predictor on the H200's kvsim-calibrate tables: sources, grid values, backends, ranges."""

from __future__ import annotations

import time

import pytest

from kvsim.core.errors import UserInputError
from kvsim.hardware import load_profile
from kvsim.perf import OP_NAMES, BatchSums, Deployment, HostCopyModel, StepTimePredictor, parse_batch_spec
from kvsim.perf.ops import GEMM_OPS

H200 = load_profile("H200")
#: the FA3 correction the H200's fitted.yaml states for its FlashAttention prefill rows
FA3 = H200.extra["attention_backend_factors"]["torch_sdpa_flash->fa3"]


@pytest.fixture(scope="module")
def h200() -> StepTimePredictor:
    return StepTimePredictor(Deployment.create("Qwen3-8B", "H200"))


@pytest.fixture(scope="module")
def h200_triton() -> StepTimePredictor:
    """The H200 predictor on the backend that gets every attention row as measured (no stated factor)."""
    return StepTimePredictor(Deployment.create("Qwen3-8B", "H200", attention_backend="triton"))


def test_done_when_gemms_and_prefill_attention_come_from_tables(h200: StepTimePredictor) -> None:
    result = h200.predict(parse_batch_spec("1x8192:0"))
    assert list(result.ops) == list(OP_NAMES)
    assert sum(result.ops.values()) == result.step_time_ms
    for op in (*GEMM_OPS, "attention"):
        assert result.sources[op] == "table", op
    low, high = result.step_time_ms_range
    assert low < result.step_time_ms < high


def test_rows_are_kernel_time_so_the_floor_is_zero(h200: StepTimePredictor) -> None:
    assert H200.table_timing_floor_s == 0.0
    # gemm.csv: 8192,6144,4096,bf16,0.508768 (Qwen3-8B qkv) and 8192,4096,12288,bf16,1.050016 (down)
    result = h200.predict([(8192, 0)])
    assert result.ops["qkv_proj"] == pytest.approx(36 * 0.508768, rel=1e-12)
    assert result.ops["down_proj"] == pytest.approx(36 * 1.050016, rel=1e-12)


def test_fp8_weights_come_from_fp8_rows() -> None:
    # gemm.csv: 8192,6144,4096,fp8,0.286048 (Qwen3-8B-FP8 qkv); the LM head stays bf16
    fp8 = StepTimePredictor(Deployment.create("Qwen3-8B-FP8", "H200")).predict([(8192, 0)])
    assert fp8.sources["qkv_proj"] == "table" and fp8.sources["lm_head"] == "table"
    assert fp8.ops["qkv_proj"] == pytest.approx(36 * 0.286048, rel=1e-12)
    assert H200.validation_error("gemm", "table", "fp8") < 0.05


def test_prefill_grid_point_and_the_fa3_factor(
    h200: StepTimePredictor, h200_triton: StepTimePredictor
) -> None:
    # prefill_attention.csv: 1,8192,32,8,128,1,bf16,1.721760,torch_sdpa_flash
    assert h200_triton.predict([(8192, 0)]).ops["attention"] == pytest.approx(36 * 1.72176, rel=1e-12)
    assert h200.predict([(8192, 0)]).ops["attention"] == pytest.approx(36 * 1.72176 * FA3, rel=1e-12)
    # measured against cuDNN attention (the FA3 stand-in) on the same H200: about half of FlashAttention-2
    assert 0.45 < FA3 < 0.6


def test_decode_attention_is_the_triton_table(h200: StepTimePredictor) -> None:
    # decode_attention.csv: 32,2048,32,8,128,bf16,0.074912,triton,1; 2047 cached + 1 new = 2048 read
    result = h200.predict([(1, 2047)] * 32)
    assert result.sources["attention"] == "table"
    assert result.ops["attention"] == pytest.approx(36 * 0.074912, rel=1e-12)


def test_attention_rows_record_their_backend() -> None:
    prefill = {r["backend"] for r in H200.tables["attention_prefill"].rows}
    decode = {r["backend"] for r in H200.tables["attention_decode"].rows}
    assert prefill == {"torch_sdpa_flash"}
    assert decode == {"triton", "torch_contiguous", "triton_page16", "triton_page64"}
    assert H200.fitted["attention_prefill"]["backend"] == "torch_sdpa_flash"
    assert H200.fitted["attention_decode"]["backend"] == "triton"


def test_attention_backend_choices(h200: StepTimePredictor, h200_triton: StepTimePredictor) -> None:
    flashinfer = StepTimePredictor(Deployment.create("Qwen3-8B", "H200", attention_backend="flashinfer"))
    prefill = [(2048, 0)]
    fa3, triton = h200.predict(prefill).ops["attention"], h200_triton.predict(prefill).ops["attention"]
    assert fa3 == pytest.approx(triton * FA3, rel=1e-12)
    # no measurement of FlashInfer: the FlashAttention rows as measured
    assert flashinfer.predict(prefill).ops["attention"] == triton
    # decode: only Triton was measured among SGLang's backends, so every deployment reads its rows
    decode = [(1, 4000)] * 16
    assert h200.predict(decode).ops["attention"] == h200_triton.predict(decode).ops["attention"]
    with pytest.raises(UserInputError, match="--attention-backend: 'magic'"):
        Deployment.create("Qwen3-8B", "H200", attention_backend="magic")


@pytest.mark.parametrize(
    ("extend", "prefix", "measured_ms"),
    [(128, 32768, 0.226240), (512, 4096, 0.133792), (2048, 16384, 1.693376), (8192, 1024, 2.103584)],
)
def test_extends_over_a_cached_prefix(
    h200_triton: StepTimePredictor, extend: int, prefix: int, measured_ms: float
) -> None:
    # extend_attention.csv rows (32 heads); before the split-KV term the first was predicted 5x too slow
    per_layer = h200_triton.predict([(extend, prefix)]).ops["attention"] / 36
    assert per_layer == pytest.approx(measured_ms, rel=0.15)


def test_elementwise_ops_from_the_table(h200: StepTimePredictor) -> None:
    # elementwise.csv: silu_and_mul,8192,12288,bf16,0.147904 (3 x 8192 x 12288 x 2 bytes, as ops.py counts)
    result = h200.predict([(8192, 0)])
    assert result.sources["act"] == "table" and result.sources["attn_norm"] == "table"
    assert result.ops["act"] == pytest.approx(36 * 0.147904, rel=1e-12)
    # SGLang fuses RoPE; the table's rope rows time torch ops, so the fitted stream model serves it
    assert result.sources["rope"] == "fitted"
    # q/k norms are 128-wide rows: they read the width-128 RMSNorm curve, far slower per byte
    assert result.ops["qk_norm"] / (2 * 40 * 128) > 2 * result.ops["attn_norm"] / (4 * 4096)


def test_shapes_missing_from_the_table_fall_back_to_the_fitted_model() -> None:
    result = StepTimePredictor(Deployment.create("Qwen3-8B", "H200", tp=16)).predict([(512, 0)])
    assert result.sources["qkv_proj"] == "fitted"  # TP 16 was not measured
    assert result.sources["attention"] == "table"  # 2 heads over 1 KV head: Qwen3-8B at TP 16 is measured


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
    # the H200 has no fp8-KV rows: the fit with 1-byte KV, at its stated prior error
    h200 = StepTimePredictor(Deployment.create("Qwen3-8B", "H200", kv_cache_dtype="fp8_e4m3"))
    assert h200.predict([(1, 8192)] * 16).sources["attention"] == "fitted"
    assert H200.validation_error("attention_decode", "fitted", "fp8") == pytest.approx(0.2)


def test_ranges_come_from_leave_one_out_errors(h200: StepTimePredictor) -> None:
    for family in ("gemm", "attention_prefill", "attention_decode", "elementwise", "host_copy"):
        error = H200.validation_error(family, "table")
        assert error is not None and 0 < error < 0.06, family
    result = h200.predict([(4096, 0)])
    gemm_error = H200.validation_error("gemm", "table")
    low, high = result.step_time_ms_range
    assert high - result.step_time_ms == pytest.approx(result.step_time_ms - low, rel=1e-9)
    assert high > result.step_time_ms * (1 + 0.5 * gemm_error)
    roofline = StepTimePredictor(Deployment.create("Qwen3-8B", H200.roofline_only())).predict([(4096, 0)])
    assert roofline.step_time_ms_range == (roofline.step_time_ms, roofline.step_time_ms)


def test_predict_sums_matches_predict_and_memoizes(h200: StepTimePredictor) -> None:
    batch = [(1, 300), (1, 900), (1, 50)]
    assert h200.predict_sums(BatchSums.from_batch(batch)) == h200.predict(batch)
    assert (4, 4, True) in h200._cache


def test_predict_sums_stays_fast(h200: StepTimePredictor) -> None:
    """The engine calls predict_sums once per step: it must stay in the microseconds (memo warm)."""
    sums = [BatchSums(b, b, b * 2000, b * 2000, True) for b in range(1, 257)]
    sums += [BatchSums(1, n, n + 3000, n * 3000 + n * (n + 1) // 2, False) for n in (512, 2048, 8192)]
    for item in sums:
        h200.predict_sums(item)
    start = time.perf_counter()
    for _ in range(20):
        for item in sums:
            h200.predict_sums(item)
    per_call = (time.perf_counter() - start) / (20 * len(sums))
    assert per_call < 100e-6  # about 5 us on a laptop; generous for loaded CI machines


def test_host_copies() -> None:
    copies = HostCopyModel(H200)
    # copy.csv: h2d,67108864,contiguous,1,1.211456 (timed as served; floor 0)
    assert copies.seconds("h2d", 67108864) == pytest.approx(1.211456e-3, rel=1e-12)
    assert copies.seconds("h2d", 1 << 24, chunks=64) > copies.seconds("h2d", 1 << 24)
    h20 = HostCopyModel(load_profile("H20"))
    assert h20.source == "fitted"
    assert 1 / 60e9 < h20.seconds("h2d", 1 << 30) / (1 << 30) < 1 / 45e9  # about 55 GB/s
    with pytest.raises(UserInputError, match="copy direction 'up'"):
        copies.seconds("up", 10)


def test_every_bundled_model_at_every_measured_tp_is_served_from_tables() -> None:
    from kvsim.models.spec import model_names

    served = 0
    for name in model_names():
        for tp in (1, 2, 4, 8):
            try:
                predictor = StepTimePredictor(Deployment.create(name, "H200", tp=tp))
            except UserInputError:
                continue  # heads not divisible, or weights too large for one GPU at this TP
            for batch in ([(512, 0)], [(1, 1000)] * 8):
                sources = predictor.predict(batch).sources
                assert {sources[op] for op in (*GEMM_OPS, "attention")} == {"table"}, (name, tp)
            served += 1
    assert served >= 50
