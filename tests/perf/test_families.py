"""Fitted op-family formulas: the split-KV term of prefill attention and optional parameters in YAML."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvsim.hardware.tables import parse_table
from kvsim.perf.calibration import causal_pairs, table_points
from kvsim.perf.families import PrefillParams, params_from_yaml, params_to_yaml, prefill_attention_time
from kvsim.perf.predictor import _serving_backend

PRM = PrefillParams(e_max=0.35, kq_half=200.0, tiles_half=150.0, e_mem=0.7, p=14.0, t0=3e-6)


def _prefill(prm: PrefillParams, extend: int, prefix: int, requests: int = 1) -> float:
    pairs = requests * causal_pairs(extend, prefix)
    tokens, context = requests * extend, requests * (extend + prefix)
    return prefill_attention_time(pairs, tokens, context, 32, 8, 128, 2.0, 2.0, 989e12, 4.8e12, prm, requests)


def test_split_kv_speeds_up_short_extends_over_long_prefixes_only() -> None:
    split = replace(PRM, split_keys=743.0)
    # no prefix: the term is 1, prefill is untouched
    assert _prefill(split, 4096, 0) == _prefill(PRM, 4096, 0)
    # 128 new tokens over 32k cached: few query tiles, so without split-KV the GPU looks idle
    assert _prefill(split, 128, 32768) < 0.5 * _prefill(PRM, 128, 32768)
    # the prefix counts per request: a batch of four is four times one request
    assert _prefill(split, 128, 8192, requests=4) == pytest.approx(4 * _prefill(split, 128, 8192), rel=0.3)


def test_optional_parameters_may_be_left_out_of_yaml() -> None:
    values = params_to_yaml(PRM)
    assert "split_keys" not in values  # a term left off is not written
    assert params_from_yaml("attention_prefill_v1", values, "here") == PRM
    with_split = params_to_yaml(replace(PRM, split_keys=743.0))
    assert params_from_yaml("attention_prefill_v1", with_split, "here").split_keys == 743.0


def test_elementwise_rows_are_keyed_by_op_and_grouped_by_width() -> None:
    table = parse_table(
        "op,tokens,width,dtype,latency_ms,bytes\nrmsnorm,1,4096,bf16,0.004,24576\n"
        "rmsnorm,1,128,bf16,0.0039,768\nsilu_and_mul,1,12288,bf16,0.0039,73728\n",
        "elementwise",
        "e.csv",
    )
    points = table_points(table)
    assert set(points) == {("rmsnorm", "bf16"), ("silu_and_mul", "bf16")}
    assert sorted(p[0] for p in points[("rmsnorm", "bf16")]) == [128.0, 4096.0]


def test_serving_backend_prefers_the_target_then_sglangs_backends() -> None:
    assert _serving_backend("fa3", ["torch_contiguous", "fa3"]) == "fa3"
    assert _serving_backend("fa3", ["torch_contiguous", "triton_page16", "triton"]) == "triton"
    assert _serving_backend("fa3", ["torch_sdpa_flash"]) == "torch_sdpa_flash"
