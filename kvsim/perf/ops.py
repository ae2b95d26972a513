"""The ops of one forward step and their work: FLOPs and bytes moved, per op, for a batch on one GPU.

A batch is a list of ``(extend_len, past_len)`` per request: ``extend_len`` new tokens run through the
model on top of ``past_len`` tokens already in the KV cache (a decode step is ``extend_len == 1``). The op
names are frozen; per-layer ops are already multiplied by the layer count. ``lm_head`` runs on one token
per request (SGLang prunes hidden states to each request's last token before the LM head).

Everything here is exact integer arithmetic on the batch's sums, so the counts can be checked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.models.spec import ModelSpec, Precision

OP_NAMES: tuple[str, ...] = (
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

GEMM_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")
ELEMENTWISE_OPS = ("embedding", "attn_norm", "qk_norm", "rope", "mlp_norm", "act", "final_norm")

#: Eagerly launched kernels per decoder layer (norm, qkv, q/k norm, rope, attention, o, add+norm,
#: gate_up, act, down, KV store) and outside the layers (embedding, final norm, lm_head, sampling).
KERNELS_PER_LAYER = 11
KERNELS_OUTSIDE_LAYERS = 4


@dataclass(frozen=True, slots=True)
class BatchSums:
    """The sums of a batch that every op's work depends on."""

    num_requests: int  # B
    num_tokens: int  # T = sum(extend)
    sum_context: int  # sum(past + extend): KV tokens attention reads
    attention_pairs: int  # sum(extend * past + extend * (extend + 1) / 2): causal query-key pairs
    is_decode: bool  # every request extends by exactly one token

    @classmethod
    def from_batch(cls, batch: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> BatchSums:
        """Compute the sums of ``[(extend_len, past_len), ...]``."""
        tokens = context = pairs = 0
        decode = True
        for extend, past in batch:
            tokens += extend
            context += past + extend
            pairs += extend * past + extend * (extend + 1) // 2
            decode = decode and extend == 1
        return cls(len(batch), tokens, context, pairs, decode and len(batch) > 0)


@dataclass(frozen=True, slots=True)
class OpWork:
    """Work of one op summed over layers: floating-point operations, bytes moved, kernel launches."""

    flops: int
    bytes: int
    kernels: int
    m: int = 0  # GEMM shape, for table lookups (per layer)
    n: int = 0
    k: int = 0


def _gemm(m: int, n: int, k: int, in_bytes: int, w_bytes: int, out_bytes: int, layers: int) -> OpWork:
    return OpWork(
        flops=layers * 2 * m * n * k,
        bytes=layers * (m * k * in_bytes + n * k * w_bytes + m * n * out_bytes),
        kernels=layers,
        m=m,
        n=n,
        k=k,
    )


def _stream(bytes_per_layer: int, flops_per_layer: int, layers: int) -> OpWork:
    return OpWork(flops=layers * flops_per_layer, bytes=layers * bytes_per_layer, kernels=layers)


def op_work(spec: ModelSpec, precision: Precision, tp: int, sums: BatchSums) -> dict[str, OpWork]:
    """Return the work of every compute op (all of :data:`OP_NAMES` but ``allreduce`` and ``overhead``).

    Tensor parallelism splits heads, the MLP width and the vocabulary over ``tp`` GPUs; norms and the
    residual stream are replicated. KV heads are replicated when there are fewer of them than GPUs.
    """
    L = spec.num_layers
    T, B = sums.num_tokens, sums.num_requests
    h, hd = spec.hidden_size, spec.head_dim
    a, w, kvb = precision.activation_bytes, precision.weight_bytes, precision.kv_bytes
    q_heads = spec.num_attention_heads // tp
    kv_heads = max(spec.num_key_value_heads // tp, 1)
    inter = spec.intermediate_size // tp
    qkv_out = (q_heads + 2 * kv_heads) * hd
    vocab = -(-spec.vocab_size // tp)
    # Fused add + RMSNorm reads the input and the residual and writes both back.
    norm_bytes = 4 * T * h * a
    norm_flops = 4 * T * h
    work = {
        "embedding": OpWork(flops=0, bytes=2 * T * h * a, kernels=1),
        "attn_norm": _stream(norm_bytes, norm_flops, L),
        "qkv_proj": _gemm(T, qkv_out, h, a, w, a, L),
        "qk_norm": _stream(2 * T * (q_heads + kv_heads) * hd * a, 4 * T * (q_heads + kv_heads) * hd, L)
        if spec.qk_norm
        else OpWork(0, 0, 0),
        "rope": _stream(2 * T * (q_heads + kv_heads) * hd * a, 3 * T * (q_heads + kv_heads) * hd, L),
        "attention": _stream(
            # read Q, write O, read the whole context's K and V, write the new tokens' K and V
            2 * T * q_heads * hd * a + 2 * kv_heads * hd * kvb * (sums.sum_context + T),
            # QK^T and PV: two multiply-adds per (query, key) pair per head dimension
            4 * q_heads * hd * sums.attention_pairs,
            L,
        ),
        "o_proj": _gemm(T, h, q_heads * hd, a, w, a, L),
        "mlp_norm": _stream(norm_bytes, norm_flops, L),
        "gate_up_proj": _gemm(T, 2 * inter, h, a, w, a, L),
        "act": _stream(3 * T * inter * a, 4 * T * inter, L),
        "down_proj": _gemm(T, h, inter, a, w, a, L),
        "final_norm": OpWork(flops=norm_flops, bytes=norm_bytes, kernels=1),
        # The LM head is never quantized in SGLang's fp8 checkpoints.
        "lm_head": _gemm(B, vocab, h, a, a, a, 1),
    }
    return work


def allreduce_bytes(spec: ModelSpec, precision: Precision, tp: int, sums: BatchSums) -> tuple[int, int]:
    """Bytes each GPU contributes to tensor-parallel collectives, and how many collectives run.

    Two all-reduces of the hidden states per layer (after ``o_proj`` and ``down_proj``) and one gather of
    the vocabulary-parallel logits; nothing when ``tp == 1``.
    """
    if tp == 1:
        return 0, 0
    hidden = sums.num_tokens * spec.hidden_size * precision.activation_bytes
    logits = sums.num_requests * spec.vocab_size * precision.activation_bytes
    return 2 * spec.num_layers * hidden + logits, 2 * spec.num_layers + 1
