"""Model descriptions: bundled specs of common dense models, Hugging Face config loading, derived sizes."""

from kvsim.models.spec import (
    DTYPE_CHOICES,
    KV_CACHE_DTYPE_CHOICES,
    QUANTIZATION_CHOICES,
    ModelSpec,
    Precision,
    kv_bytes_per_token,
    load_model_spec,
    model_names,
    resolve_precision,
    spec_from_hf_config,
    weight_bytes,
)

__all__ = [
    "DTYPE_CHOICES",
    "KV_CACHE_DTYPE_CHOICES",
    "QUANTIZATION_CHOICES",
    "ModelSpec",
    "Precision",
    "kv_bytes_per_token",
    "load_model_spec",
    "model_names",
    "resolve_precision",
    "spec_from_hf_config",
    "weight_bytes",
]
