"""The shapes the microbenchmarks measure, derived from kvsim's bundled model specs.

GEMMs are the five projections of a dense decoder layer as one GPU of a tensor-parallel group runs them
(``x[M, K] @ W[N, K]^T``; SGLang shards QKV and gate/up by columns, O and down by rows, the LM head by
vocabulary): ``qkv`` (N = (heads + 2 kv_heads) head_dim / tp, K = hidden), ``o`` (N = hidden,
K = heads head_dim / tp), ``gate_up`` (N = 2 intermediate / tp, K = hidden), ``down`` (N = hidden,
K = intermediate / tp) and ``lm_head`` (N = vocab / tp, K = hidden). KV heads are replicated when there are
fewer of them than GPUs, as SGLang does. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvsim.models.spec import ModelSpec, load_model_spec, model_names

#: Tensor-parallel degrees whose per-GPU shapes are measured.
TP_DEGREES = (1, 2, 4, 8)
#: Token counts (GEMM M): powers of two from 1 to 16384.
M_GRID = tuple(2**i for i in range(15))
#: Models measured first (the brief's priority: the project's reference models).
CORE_MODELS = ("Qwen3-8B", "Qwen3-32B")
GEMM_OPS = ("qkv", "o", "gate_up", "down", "lm_head")

#: A tiny Qwen3-shaped model for ``--quick`` (CPU) runs: every code path, nothing heavy.
QUICK_MODEL = ModelSpec(
    name="tiny-qwen3",
    architecture="Qwen3ForCausalLM",
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    vocab_size=512,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
    qk_norm=True,
)
QUICK_M_GRID = (1, 4, 16, 64)
QUICK_TP_DEGREES = (1, 2)


@dataclass(frozen=True, slots=True)
class GemmShape:
    """One weight matrix to measure: ``n`` x ``k`` in ``dtype``; ``shape_of`` names where it comes from."""

    n: int
    k: int
    dtype: str
    shape_of: str


@dataclass(frozen=True, slots=True)
class HeadConfig:
    """Attention heads one GPU runs: query heads, KV heads, head dimension; ``label`` names the source."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    label: str


def tp_supported(spec: ModelSpec, tp: int) -> bool:
    """Whether SGLang can shard ``spec`` over ``tp`` GPUs (the same rule as ``Deployment.create``)."""
    kv = spec.num_key_value_heads
    return spec.num_attention_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


def projection_shapes(spec: ModelSpec, tp: int) -> dict[str, tuple[int, int]]:
    """The ``(N, K)`` of each projection on one GPU of a ``tp``-way group."""
    kv_heads = max(spec.num_key_value_heads // tp, 1)
    heads = spec.num_attention_heads // tp
    hidden, inter = spec.hidden_size, spec.intermediate_size
    return {
        "qkv": ((heads + 2 * kv_heads) * spec.head_dim, hidden),
        "o": (hidden, heads * spec.head_dim),
        "gate_up": (2 * inter // tp, hidden),
        "down": (hidden, inter // tp),
        "lm_head": (-(-spec.vocab_size // tp), hidden),
    }


def gemm_shapes(
    specs: Iterable[ModelSpec], tps: Sequence[int] = TP_DEGREES, fp8: bool = False
) -> list[GemmShape]:
    """Distinct weight shapes of ``specs`` over ``tps``, in the order given (first label wins).

    bf16 shapes come from every model; with ``fp8`` the fp8-quantized models add their linear layers in
    fp8 (the LM head of an fp8 checkpoint stays 16-bit, so it is not repeated).
    """
    seen: set[tuple[int, int, str]] = set()
    shapes: list[GemmShape] = []
    for spec in specs:
        quantized = spec.quantization == "fp8"
        if quantized and not fp8:
            continue
        for tp in tps:
            if not tp_supported(spec, tp):
                continue
            for op, (n, k) in projection_shapes(spec, tp).items():
                dtype = "fp8" if quantized and op != "lm_head" else "bf16"
                key = (n, k, dtype)
                if key in seen:
                    continue
                seen.add(key)
                label = f"{spec.name}:{op}" if tp == 1 else f"{spec.name}:{op}:tp{tp}"
                shapes.append(GemmShape(n, k, dtype, label))
    return shapes


def bundled_specs(names: Iterable[str] | None = None) -> list[ModelSpec]:
    """Specs of ``names`` (default: every bundled model), core models first."""
    chosen = list(names) if names is not None else model_names()
    ordered = [n for n in CORE_MODELS if n in chosen] + [n for n in chosen if n not in CORE_MODELS]
    return [load_model_spec(n) for n in ordered]


def head_configs(specs: Iterable[ModelSpec], tps: Sequence[int] = TP_DEGREES) -> list[HeadConfig]:
    """Distinct per-GPU attention head configurations of ``specs`` over ``tps``, in the order given."""
    seen: set[tuple[int, int, int]] = set()
    configs: list[HeadConfig] = []
    for spec in specs:
        for tp in tps:
            if not tp_supported(spec, tp):
                continue
            key = (spec.num_attention_heads // tp, max(spec.num_key_value_heads // tp, 1), spec.head_dim)
            if key in seen:
                continue
            seen.add(key)
            label = spec.name if tp == 1 else f"{spec.name}:tp{tp}"
            configs.append(HeadConfig(*key, label))
    return configs
