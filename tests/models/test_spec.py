"""Model specs: bundled names, derived sizes, precision flags, Hugging Face configs and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvsim.core.errors import NotSupportedError, UserInputError
from kvsim.models import (
    kv_bytes_per_token,
    load_model_spec,
    model_names,
    resolve_precision,
    weight_bytes,
)


def test_bundled_names() -> None:
    names = model_names()
    for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B"):
        assert f"Qwen3-{size}" in names
        assert f"Qwen3-{size}-FP8" in names
    for name in ("Llama-3.1-8B", "Llama-3.1-70B", "Qwen2.5-7B", "Qwen2.5-72B"):
        assert name in names
    assert len(names) == 16


def test_qwen3_8b_kv_bytes_per_token() -> None:
    spec = load_model_spec("Qwen3-8B")
    assert kv_bytes_per_token(spec, resolve_precision(spec)) == 147_456
    assert kv_bytes_per_token(spec, resolve_precision(spec, kv_cache_dtype="fp8_e4m3")) == 73_728
    # TP 2 halves the KV heads on each GPU; TP 16 replicates the 8 KV heads (one per GPU).
    assert kv_bytes_per_token(spec, resolve_precision(spec), tp=2) == 73_728
    assert kv_bytes_per_token(spec, resolve_precision(spec), tp=16) == 2 * 36 * 1 * 128 * 2


def test_qwen3_32b_kv_bytes_per_token() -> None:
    spec = load_model_spec("Qwen3-32B")
    assert kv_bytes_per_token(spec, resolve_precision(spec)) == 262_144


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("Qwen3-0.6B", 596_049_920),
        ("Qwen3-8B", 8_190_735_360),
        ("Qwen3-32B", 32_762_123_264),
        ("Llama-3.1-8B", 8_030_261_248),
        ("Llama-3.1-70B", 70_553_706_496),
        ("Qwen2.5-7B", 7_615_616_512),
    ],
)
def test_parameter_counts_match_published_sizes(name: str, params: int) -> None:
    assert load_model_spec(name).num_params == params


def test_weight_bytes_bf16_and_fp8() -> None:
    spec = load_model_spec("Qwen3-8B")
    assert weight_bytes(spec, resolve_precision(spec)) == 2 * 8_190_735_360
    fp8 = load_model_spec("Qwen3-8B-FP8")
    precision = resolve_precision(fp8)
    assert precision.weight_dtype == "fp8"
    linear = 36 * fp8.linear_params_per_layer
    other = fp8.num_params - linear
    # 128x128 block scales: qkv 48x32, o 32x32, gate and up 96x32 each, down 32x96 per layer.
    scales = 36 * (48 * 32 + 32 * 32 + 2 * 96 * 32 + 32 * 96)
    assert weight_bytes(fp8, precision) == linear + 2 * other + 4 * scales


def test_precision_flags() -> None:
    spec = load_model_spec("Qwen3-8B")
    assert resolve_precision(spec, "float16").activation_dtype == "float16"
    assert resolve_precision(spec, quantization="fp8").weight_dtype == "fp8"
    fp8 = load_model_spec("qwen3-8b-fp8")
    with pytest.raises(UserInputError, match="conflicts with Qwen3-8B-FP8"):
        resolve_precision(fp8, quantization="none")
    with pytest.raises(UserInputError, match="--dtype"):
        resolve_precision(spec, dtype="int4")


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UserInputError, match=r"unknown model 'Qwen9'; choose one of: .*Qwen3-8B"):
        load_model_spec("Qwen9")


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "m" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    return path


BASE = {
    "architectures": ["Qwen3ForCausalLM"],
    "num_hidden_layers": 36,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_hf_config_equals_bundled(tmp_path: Path) -> None:
    from_file = load_model_spec(str(_write(tmp_path, BASE)))
    bundled = load_model_spec("Qwen3-8B")
    assert from_file.num_params == bundled.num_params
    assert from_file.qk_norm is True
    assert from_file.name == "m"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"num_experts": 128}, "mixture-of-experts"),
        ({"kv_lora_rank": 512}, "multi-head latent attention"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding-window"),
    ],
)
def test_unsupported_architectures_are_refused(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(NotSupportedError, match=message):
        load_model_spec(str(_write(tmp_path, {**BASE, **extra})))


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="model config not found"):
        load_model_spec(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        load_model_spec(str(bad))
    partial = {k: v for k, v in BASE.items() if k != "hidden_size"}
    with pytest.raises(UserInputError, match="lacks hidden_size"):
        load_model_spec(str(_write(tmp_path, partial)))
