"""SGLang's decode CUDA-graph batch sizes, the default maximum, and padding in the predictor."""

from __future__ import annotations

import pytest

from kvsim.hardware import load_profile
from kvsim.perf import (
    BatchSums,
    Deployment,
    StepTimePredictor,
    cuda_graph_batch_sizes,
    default_cuda_graph_max_bs,
    padded_batch_size,
)


def test_captured_sizes() -> None:
    sizes = cuda_graph_batch_sizes(256)
    assert sizes[:8] == (1, 2, 4, 8, 12, 16, 24, 32)
    assert sizes[-1] == 256 and len(sizes) == 5 + 31
    big = cuda_graph_batch_sizes(512)
    assert big[36:] == (*range(272, 512, 16), 512)
    assert cuda_graph_batch_sizes(10) == (1, 2, 4, 8)


@pytest.mark.parametrize(
    ("gib", "tp", "expected"),
    [
        (96, 1, 256),
        (139.8, 1, 256),
        (96, 4, 512),
        (79.6, 2, 256),
        (44.4, 1, 32),
        (44.4, 8, 160),
        (180, 1, 512),
    ],
)
def test_default_max_bs(gib: float, tp: int, expected: int) -> None:
    assert default_cuda_graph_max_bs(gib, tp) == expected


def test_padding() -> None:
    sizes = cuda_graph_batch_sizes(256)
    assert padded_batch_size(3, sizes) == 4
    assert padded_batch_size(13, sizes) == 16
    assert padded_batch_size(256, sizes) == 256
    assert padded_batch_size(257, sizes) is None


def test_padded_requests_add_gemm_rows_not_kv_reads() -> None:
    predictor = StepTimePredictor(Deployment.create("Qwen3-8B", "H200"))
    three = predictor.predict([(1, 1000)] * 3)
    four = predictor.predict([(1, 1000)] * 4)
    assert three.ops["qkv_proj"] == four.ops["qkv_proj"]  # both run the 4-row graph
    assert three.ops["attn_norm"] == four.ops["attn_norm"]
    assert three.ops["attention"] < four.ops["attention"]  # only real requests read KV
    assert three.ops["overhead"] == pytest.approx(0.020)


def test_above_the_largest_graph_decode_runs_eagerly() -> None:
    profile = load_profile("H200")
    predictor = StepTimePredictor(Deployment.create("Qwen3-8B", profile))
    eager = predictor.predict_sums(BatchSums(300, 300, 300 * 100, 300 * 100, True))
    assert eager.ops["overhead"] == pytest.approx((36 * 11 + 4) * 2e-3)
    small = StepTimePredictor(Deployment.create("Qwen3-8B", profile, cuda_graph_max_bs=16))
    assert small.predict([(1, 10)] * 17).ops["overhead"] == pytest.approx((36 * 11 + 4) * 2e-3)
    off = StepTimePredictor(Deployment.create("Qwen3-8B", profile, disable_cuda_graph=True))
    assert off.deployment.cuda_graph_batch_sizes == ()
    assert off.predict([(1, 10)]).ops["overhead"] == pytest.approx((36 * 11 + 4) * 2e-3)
