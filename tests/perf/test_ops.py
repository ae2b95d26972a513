"""FLOP and byte counts of each op for hand-checked shapes."""

from __future__ import annotations

from kvsim.models import load_model_spec, resolve_precision
from kvsim.perf import OP_NAMES, BatchSums, op_work
from kvsim.perf.ops import allreduce_bytes

SPEC = load_model_spec("Qwen3-8B")
BF16 = resolve_precision(SPEC)


def test_op_names_are_frozen() -> None:
    assert OP_NAMES == (
        "embedding",
        "attn_norm",
        "qkv_proj",
        "qk_norm",
        "rope",
        "attention",
        "o_proj",
        "mlp_norm",
        "gate_up_proj",
        "act",
        "down_proj",
        "final_norm",
        "lm_head",
        "allreduce",
        "overhead",
    )


def test_batch_sums() -> None:
    sums = BatchSums.from_batch([(1, 2048)] * 32)
    assert sums == BatchSums(
        num_requests=32, num_tokens=32, sum_context=32 * 2049, attention_pairs=32 * 2049, is_decode=True
    )
    extend = BatchSums.from_batch([(2048, 6144)])
    assert extend.attention_pairs == 2048 * 6144 + 2048 * 2049 // 2
    assert extend.is_decode is False


def test_decode_32x2048_counts() -> None:
    work = op_work(SPEC, BF16, 1, BatchSums.from_batch([(1, 2048)] * 32))
    qkv = work["qkv_proj"]
    # M=32 tokens, N=(32+2*8)*128=6144, K=4096 per layer, 36 layers
    assert (qkv.m, qkv.n, qkv.k) == (32, 6144, 4096)
    assert qkv.flops == 36 * 2 * 32 * 6144 * 4096
    assert qkv.bytes == 36 * 2 * (32 * 4096 + 6144 * 4096 + 32 * 6144)
    gate_up = work["gate_up_proj"]
    assert (gate_up.n, gate_up.k) == (24576, 4096)
    down = work["down_proj"]
    assert (down.n, down.k) == (4096, 12288)
    attention = work["attention"]
    # 4 * 32 heads * 128 * pairs per layer; pairs = 32 * 2049
    assert attention.flops == 36 * 4 * 32 * 128 * 32 * 2049
    # Q read + O write: 2*32 tokens*32 heads*128*2 B; KV: 2*8 heads*128*2 B*(32*2049 context + 32 new)
    assert attention.bytes == 36 * (2 * 32 * 32 * 128 * 2 + 2 * 8 * 128 * 2 * (32 * 2049 + 32))
    lm_head = work["lm_head"]
    assert (lm_head.m, lm_head.n, lm_head.k) == (32, 151936, 4096)
    assert lm_head.flops == 2 * 32 * 151936 * 4096
    assert work["embedding"].bytes == 2 * 32 * 4096 * 2


def test_prefill_lm_head_runs_on_one_token_per_request() -> None:
    work = op_work(SPEC, BF16, 1, BatchSums.from_batch([(8192, 0)]))
    assert work["lm_head"].m == 1
    assert work["qkv_proj"].m == 8192
    assert work["attention"].flops == 36 * 4 * 32 * 128 * (8192 * 8193 // 2)


def test_tp_splits_heads_and_mlp() -> None:
    work = op_work(SPEC, BF16, 4, BatchSums.from_batch([(1, 100)]))
    assert work["qkv_proj"].n == (8 + 2 * 2) * 128
    assert work["gate_up_proj"].n == 2 * 12288 // 4
    assert work["lm_head"].n == 151936 // 4


def test_allreduce_bytes() -> None:
    sums = BatchSums.from_batch([(10, 0), (1, 5)])
    assert allreduce_bytes(SPEC, BF16, 1, sums) == (0, 0)
    assert allreduce_bytes(SPEC, BF16, 2, sums) == (2 * 36 * 11 * 4096 * 2 + 2 * 151936 * 2, 73)


def test_qk_norm_only_for_qwen3() -> None:
    llama = load_model_spec("Llama-3.1-8B")
    work = op_work(llama, resolve_precision(llama), 1, BatchSums.from_batch([(4, 0)]))
    assert work["qk_norm"].flops == 0 and work["qk_norm"].kernels == 0
