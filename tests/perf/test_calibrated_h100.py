"""The calibrated predictor on the H100's kvsim-calibrate tables: sources, grid values, backends, the CLI."""

from __future__ import annotations

import json
import time

import pytest

from kvsim.cli.main import main
from kvsim.core.errors import UserInputError
from kvsim.hardware import load_profile
from kvsim.perf import OP_NAMES, BatchSums, Deployment, HostCopyModel, StepTimePredictor, parse_batch_spec
from kvsim.perf.ops import GEMM_OPS

H100 = load_profile("H100")
#: the FA3 correction the H100's fitted.yaml reuses from the H200 for its FlashAttention prefill rows
FA3 = H100.extra["attention_backend_factors"]["torch_sdpa_flash->fa3"]


@pytest.fixture(scope="module")
def h100() -> StepTimePredictor:
    return StepTimePredictor(Deployment.create("Qwen3-8B", "H100"))


@pytest.fixture(scope="module")
def h100_triton() -> StepTimePredictor:
    """The H100 predictor on the backend that gets every attention row as measured (no stated factor)."""
    return StepTimePredictor(Deployment.create("Qwen3-8B", "H100", attention_backend="triton"))


def test_step_time_cli_reports_tables_for_gemms_and_prefill_attention(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["step-time", "--model", "Qwen3-8B", "--gpu", "H100", "--batch", "1x8192:0", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["profile"] == "H100"
    for op in (*GEMM_OPS, "attention"):
        assert result["sources"][op] == "table", op
    assert sum(result["ops"].values()) == pytest.approx(result["step_time_ms"], rel=1e-12)
    low, high = result["step_time_ms_range"]
    assert low < result["step_time_ms"] < high


def test_gemm_grid_points_are_the_table(h100: StepTimePredictor) -> None:
    # gemm.csv: 8192,6144,4096,bf16,0.524512 (Qwen3-8B qkv) and 8192,4096,12288,bf16,1.024608 (down)
    result = h100.predict(parse_batch_spec("1x8192:0"))
    assert list(result.ops) == list(OP_NAMES)
    assert result.ops["qkv_proj"] == pytest.approx(36 * 0.524512, rel=1e-12)
    assert result.ops["down_proj"] == pytest.approx(36 * 1.024608, rel=1e-12)
    # gemm.csv: 8192,6144,4096,fp8,0.291552 (Qwen3-8B-FP8 qkv)
    fp8 = StepTimePredictor(Deployment.create("Qwen3-8B-FP8", "H100")).predict([(8192, 0)])
    assert fp8.sources["qkv_proj"] == "table"
    assert fp8.ops["qkv_proj"] == pytest.approx(36 * 0.291552, rel=1e-12)


def test_prefill_grid_point_and_the_fa3_factor(
    h100: StepTimePredictor, h100_triton: StepTimePredictor
) -> None:
    # prefill_attention.csv: 1,8192,32,8,128,1,bf16,1.700576,torch_sdpa_flash
    assert h100_triton.predict([(8192, 0)]).ops["attention"] == pytest.approx(36 * 1.700576, rel=1e-12)
    assert h100.predict([(8192, 0)]).ops["attention"] == pytest.approx(36 * 1.700576 * FA3, rel=1e-12)


def test_decode_attention_is_the_triton_table(h100: StepTimePredictor) -> None:
    # decode_attention.csv: 32,2048,32,8,128,bf16,0.101120,triton,1; 2047 cached + 1 new = 2048 read
    result = h100.predict([(1, 2047)] * 32)
    assert result.sources["attention"] == "table"
    assert result.ops["attention"] == pytest.approx(36 * 0.10112, rel=1e-12)


def test_extend_over_a_cached_prefix(h100_triton: StepTimePredictor) -> None:
    # extend_attention.csv: 1,2048,16384,32,8,128,bf16,1.684736 (served through the prefill table's fit)
    per_layer = h100_triton.predict([(2048, 16384)]).ops["attention"] / 36
    assert per_layer == pytest.approx(1.684736, rel=0.15)


def test_elementwise_grid_point_and_host_bound_widths(h100: StepTimePredictor) -> None:
    # elementwise.csv: silu_and_mul,8192,12288,bf16,0.211616
    result = h100.predict([(8192, 0)])
    assert result.sources["act"] == "table" and result.sources["rope"] == "fitted"
    assert result.ops["act"] == pytest.approx(36 * 0.211616, rel=1e-12)
    # the 128-wide RMSNorm rows all timed this host and were dropped: q/k norms read the nearest width
    widths = {r["width"] for r in H100.tables["elementwise"].rows if r["op"] == "rmsnorm"}
    assert widths == {4096, 5120}
    assert result.sources["qk_norm"] == "table"


def test_copies_are_the_table() -> None:
    # copy.csv: h2d,67108864,contiguous,1,1.283744 (timed as served; floor 0)
    assert HostCopyModel(H100).seconds("h2d", 67108864) == pytest.approx(1.283744e-3, rel=1e-12)


def test_every_bundled_model_at_every_measured_tp_is_served_from_tables() -> None:
    from kvsim.models.spec import model_names

    served = 0
    for name in model_names():
        for tp in (1, 2, 4, 8):
            try:
                predictor = StepTimePredictor(Deployment.create(name, "H100", tp=tp))
            except UserInputError:
                continue  # heads not divisible, or weights too large for one GPU at this TP
            for batch in ([(512, 0)], [(1, 1000)] * 8):
                sources = predictor.predict(batch).sources
                assert {sources[op] for op in (*GEMM_OPS, "attention")} == {"table"}, (name, tp)
            served += 1
    assert served >= 40


def test_predict_sums_stays_fast(h100: StepTimePredictor) -> None:
    """The engine calls predict_sums once per step: it must stay in the microseconds (memo warm)."""
    sums = [BatchSums(b, b, b * 2000, b * 2000, True) for b in range(1, 257)]
    sums += [BatchSums(1, n, n + 3000, n * 3000 + n * (n + 1) // 2, False) for n in (512, 2048, 8192)]
    for item in sums:
        h100.predict_sums(item)
    start = time.perf_counter()
    for _ in range(20):
        for item in sums:
            h100.predict_sums(item)
    per_call = (time.perf_counter() - start) / (20 * len(sums))
    assert per_call < 100e-6
