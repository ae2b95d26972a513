"""Model specifications: the architecture numbers every size and FLOP count in kvsim derives from.

A :class:`ModelSpec` is loaded either from kvsim's own spec files (``kvsim/models/specs/*.yaml``, found by a
short name such as ``Qwen3-8B`` or ``Qwen3-8B-FP8``) or from a Hugging Face ``config.json`` file. Only dense
decoder-only transformers with full attention are modelled; MoE, MLA and sliding-window models are refused
with a one-line :class:`~kvsim.core.NotSupportedError` rather than mis-simulated.

Precision follows SGLang's server flags: ``--dtype`` (``auto``, ``bfloat16``, ``float16``) sets the
activation and unquantized weight dtype, ``--quantization fp8`` stores the linear layers' weights in fp8
(embedding and LM head stay 16-bit, as SGLang's fp8 checkpoints do), and ``--kv-cache-dtype``
(``auto``, ``fp8_e4m3``) sets the KV cache element size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kvsim.core.errors import NotSupportedError, UserInputError

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1, "fp8_e4m3": 1}
DTYPE_CHOICES = ("auto", "bfloat16", "float16")
QUANTIZATION_CHOICES = ("none", "fp8")
KV_CACHE_DTYPE_CHOICES = ("auto", "fp8_e4m3")

_SPEC_KEYS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
    "qk_norm",
    "attention_bias",
    "torch_dtype",
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A dense decoder-only transformer as the simulator sees it (per model, before tensor parallelism)."""

    name: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    qk_norm: bool = False
    attention_bias: bool = False
    torch_dtype: str = "bfloat16"
    quantization: str = "none"
    hf_id: str = ""

    # ---- parameter counts -------------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        """Width of the query projection output (heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of one of the key or value projection outputs (KV heads x head_dim)."""
        return self.num_key_value_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        """Parameters of the linear layers of one decoder layer (QKV, O, gate/up, down; biases included)."""
        qkv = self.hidden_size * (self.q_size + 2 * self.kv_size)
        if self.attention_bias:
            qkv += self.q_size + 2 * self.kv_size
        o_proj = self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return qkv + o_proj + mlp

    @property
    def norm_params_per_layer(self) -> int:
        """Parameters of one layer's norms (two RMSNorms, plus the per-head q/k norms where present)."""
        return 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def embedding_params(self) -> int:
        """Parameters of the token embedding table."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Parameters of the LM head (zero extra parameters when tied to the embedding)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Total parameter count."""
        return (
            self.num_layers * (self.linear_params_per_layer + self.norm_params_per_layer)
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size  # final norm
        )


@dataclass(frozen=True, slots=True)
class Precision:
    """Resolved precision settings of a deployment (what SGLang's flags amount to)."""

    activation_dtype: str
    weight_dtype: str  # dtype of linear weights: the activation dtype, or "fp8" when quantized
    kv_cache_dtype: str

    @property
    def activation_bytes(self) -> int:
        """Bytes per activation element."""
        return DTYPE_BYTES[self.activation_dtype]

    @property
    def weight_bytes(self) -> int:
        """Bytes per linear-layer weight element."""
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def kv_bytes(self) -> int:
        """Bytes per KV-cache element."""
        return DTYPE_BYTES[self.kv_cache_dtype]


def resolve_precision(
    spec: ModelSpec, dtype: str = "auto", quantization: str | None = None, kv_cache_dtype: str = "auto"
) -> Precision:
    """Turn SGLang-style precision flags into a :class:`Precision` for ``spec``.

    ``quantization=None`` means the flag was not given: the spec's own quantization applies. A ``-FP8``
    spec with ``quantization="none"`` is a contradiction and is refused.
    """
    if dtype not in DTYPE_CHOICES:
        raise UserInputError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    if quantization is not None and quantization not in QUANTIZATION_CHOICES:
        raise UserInputError(
            f"--quantization: {quantization!r} is not one of {', '.join(QUANTIZATION_CHOICES)}"
        )
    if kv_cache_dtype not in KV_CACHE_DTYPE_CHOICES:
        raise UserInputError(
            f"--kv-cache-dtype: {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPE_CHOICES)}"
        )
    if spec.quantization == "fp8" and quantization == "none":
        raise UserInputError(
            f"--quantization none conflicts with {spec.name}, whose checkpoint is fp8-quantized"
        )
    activation = spec.torch_dtype if dtype == "auto" else dtype
    if activation not in ("bfloat16", "float16"):
        raise NotSupportedError(f"{spec.name}: activation dtype {activation!r} is not supported yet")
    quant = spec.quantization if quantization is None else quantization
    weight = "fp8" if quant == "fp8" else activation
    kv = activation if kv_cache_dtype == "auto" else kv_cache_dtype
    return Precision(activation_dtype=activation, weight_dtype=weight, kv_cache_dtype=kv)


def weight_bytes(spec: ModelSpec, precision: Precision) -> int:
    """Bytes of all weights: linear layers at the weight dtype, embedding, LM head and norms at 16 bit.

    fp8 checkpoints also carry one float32 scale per 128x128 weight block; those are counted too.
    """
    linear = spec.num_layers * spec.linear_params_per_layer
    other = spec.num_params - linear
    total = linear * precision.weight_bytes + other * precision.activation_bytes
    if precision.weight_dtype == "fp8":
        total += 4 * _fp8_block_scales(spec)
    return total


def _fp8_block_scales(spec: ModelSpec) -> int:
    """Number of float32 block scales of a 128x128 block-quantized checkpoint."""

    def blocks(rows: int, cols: int) -> int:
        return -(-rows // 128) * -(-cols // 128)

    h, i = spec.hidden_size, spec.intermediate_size
    per_layer = (
        blocks(spec.q_size + 2 * spec.kv_size, h) + blocks(h, spec.q_size) + 2 * blocks(i, h) + blocks(h, i)
    )
    return spec.num_layers * per_layer


def kv_bytes_per_token(spec: ModelSpec, precision: Precision, tp: int = 1) -> int:
    """KV-cache bytes one token occupies on one GPU (keys and values of every layer).

    With tensor parallelism each GPU keeps ``max(kv_heads / tp, 1)`` KV heads: SGLang replicates KV heads
    when there are fewer of them than GPUs.
    """
    kv_heads = max(spec.num_key_value_heads // tp, 1)
    return 2 * spec.num_layers * kv_heads * spec.head_dim * precision.kv_bytes


# ---- loading ------------------------------------------------------------------------------------------


def _spec_dir() -> resources.abc.Traversable:
    return resources.files("kvsim.models") / "specs"


@cache
def _bundled_raw() -> dict[str, dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = {}
    for entry in sorted(_spec_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
            raw[data["name"]] = data
    return raw


def model_names() -> list[str]:
    """Names of the bundled model specs, sorted."""
    return sorted(_bundled_raw())


def _from_bundled(name: str) -> ModelSpec:
    raw = _bundled_raw()
    lowered = {key.lower(): key for key in raw}
    key = lowered.get(name.lower())
    if key is None:
        raise UserInputError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    data = dict(raw[key])
    base = data.pop("base", None)
    if base is not None:
        merged = dict(raw[base])
        merged.update(data)
        data = merged
    fields = {k: data[k] for k in _SPEC_KEYS if k in data}
    return ModelSpec(
        name=data["name"],
        architecture=data["architecture"],
        quantization=data.get("quantization", "none"),
        hf_id=data.get("hf_id", ""),
        **fields,
    )


def spec_from_hf_config(config: dict[str, Any], name: str) -> ModelSpec:
    """Build a :class:`ModelSpec` from a Hugging Face ``config.json`` dictionary.

    Raises :class:`~kvsim.core.NotSupportedError` for MoE, MLA and sliding-window models.
    """
    archs = config.get("architectures") or ["unknown"]
    arch = str(archs[0])
    if any(k in config for k in ("num_experts", "num_local_experts", "n_routed_experts")) or "Moe" in arch:
        raise NotSupportedError(f"{name}: mixture-of-experts models ({arch}) are not supported yet")
    if "kv_lora_rank" in config or "Deepseek" in arch:
        raise NotSupportedError(f"{name}: multi-head latent attention ({arch}) is not supported yet")
    layer_types = config.get("layer_types") or []
    if config.get("use_sliding_window") or any("sliding" in str(t) for t in layer_types):
        raise NotSupportedError(f"{name}: sliding-window attention is not supported yet")
    missing = [
        k
        for k in (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        if k not in config
    ]
    if missing:
        raise UserInputError(f"{name}: config.json lacks {', '.join(missing)}")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    quant = config.get("quantization_config") or {}
    quant_method = str(quant.get("quant_method", "")).lower()
    if quant and quant_method != "fp8":
        raise NotSupportedError(f"{name}: quantization {quant_method!r} is not supported yet (only fp8)")
    return ModelSpec(
        name=name,
        architecture=arch,
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads", heads)),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        qk_norm=arch.startswith("Qwen3"),
        attention_bias=bool(config.get("attention_bias", arch.startswith("Qwen2"))),
        torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        quantization="fp8" if quant_method == "fp8" else "none",
        hf_id=str(config.get("_name_or_path", "")),
    )


def load_model_spec(name_or_path: str) -> ModelSpec:
    """Load a model by bundled short name (``Qwen3-8B``) or from a ``config.json`` path (file or folder)."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise UserInputError(f"model config not found: {config_path}")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserInputError(f"{config_path}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise UserInputError(f"{config_path}: expected a JSON object")
        name = path.name if path.is_dir() else path.parent.name or path.stem
        return spec_from_hf_config(config, name or "model")
    return _from_bundled(name_or_path)


def with_quantization(spec: ModelSpec, quantization: str) -> ModelSpec:
    """Return ``spec`` with its checkpoint quantization replaced (used by tests and sweeps)."""
    return replace(spec, quantization=quantization)
