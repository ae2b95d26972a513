"""Step-time prediction: how long one forward step of a batch takes on one GPU (or a TP group).

``StepTimePredictor(deployment).predict([(extend_len, past_len), ...])`` returns a :class:`StepTime` with a
per-op breakdown in milliseconds whose sum is the step time, and the source that served each op.

Version 0 composes a roofline per op: ``max(flops / (peak * compute_efficiency), bytes / (bandwidth *
memory_efficiency), kernel_latency)`` per kernel, with the profile's empirical factors. Decode steps run
under CUDA graphs (one graph launch per step); other steps pay a small idle gap per eagerly launched
kernel. ``overhead`` is that GPU launch cost only; the scheduler's CPU time belongs to the engine.
Tensor-parallel all-reduces go over NVLink (PCIe where the GPU has none) as a ring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvsim.core.errors import UserInputError
from kvsim.hardware.profile import GpuProfile, load_profile
from kvsim.models.spec import (
    ModelSpec,
    Precision,
    kv_bytes_per_token,
    load_model_spec,
    resolve_precision,
    weight_bytes,
)
from kvsim.perf.ops import (
    ELEMENTWISE_OPS,
    GEMM_OPS,
    KERNELS_OUTSIDE_LAYERS,
    KERNELS_PER_LAYER,
    OP_NAMES,
    BatchSums,
    OpWork,
    allreduce_bytes,
    op_work,
)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model served on a GPU type with a tensor-parallel degree and precision settings."""

    model: ModelSpec
    gpu: GpuProfile
    tp: int
    precision: Precision

    @classmethod
    def create(
        cls,
        model: str | ModelSpec,
        gpu: str | GpuProfile,
        tp: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        kv_cache_dtype: str = "auto",
    ) -> Deployment:
        """Resolve names and flags into a validated deployment (one-line errors for bad input)."""
        spec = load_model_spec(model) if isinstance(model, str) else model
        profile = load_profile(gpu) if isinstance(gpu, str) else gpu
        if tp < 1:
            raise UserInputError(f"--tp: must be >= 1, got {tp}")
        if spec.num_attention_heads % tp:
            raise UserInputError(
                f"--tp {tp} does not divide {spec.name}'s {spec.num_attention_heads} attention heads"
            )
        kv = spec.num_key_value_heads
        if kv % tp and tp % kv:
            raise UserInputError(f"--tp {tp} and {spec.name}'s {kv} KV heads: one must divide the other")
        precision = resolve_precision(spec, dtype, quantization, kv_cache_dtype)
        profile.peak_flops("fp8" if precision.weight_dtype == "fp8" else precision.activation_dtype)
        deployment = cls(spec, profile, tp, precision)
        if deployment.weight_bytes_per_gpu >= profile.memory_bytes:
            raise UserInputError(
                f"{spec.name} needs {deployment.weight_bytes_per_gpu / 1024**3:.1f} GiB of weights per GPU "
                f"at --tp {tp}, more than one {profile.name}'s {profile.memory_gib:.1f} GiB"
            )
        return deployment

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Bytes of weights each GPU of the TP group holds."""
        return weight_bytes(self.model, self.precision) / self.tp

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token on one GPU."""
        return kv_bytes_per_token(self.model, self.precision, self.tp)


@dataclass(frozen=True, slots=True)
class StepTime:
    """A predicted forward step: total milliseconds, per-op milliseconds and each op's source."""

    step_time_ms: float
    ops: dict[str, float]
    sources: dict[str, str]
    profile: str

    def to_dict(self) -> dict[str, object]:
        """The JSON shape ``kvsim step-time --json`` prints."""
        return {
            "step_time_ms": self.step_time_ms,
            "ops": dict(self.ops),
            "sources": dict(self.sources),
            "profile": self.profile,
        }


class StepTimePredictor:
    """Predicts forward-step times for one :class:`Deployment`."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        gpu = deployment.gpu
        roof = gpu.roofline
        compute_dtype = (
            "fp8" if deployment.precision.weight_dtype == "fp8" else deployment.precision.activation_dtype
        )
        self._gemm_flops = gpu.peak_flops(compute_dtype) * roof.compute_efficiency
        # Attention and the LM head run at 16-bit tensor throughput even with fp8 weights.
        self._half_flops = gpu.peak_flops(deployment.precision.activation_dtype) * roof.compute_efficiency
        self._bandwidth = gpu.memory_bandwidth * roof.memory_efficiency
        self._latency = roof.kernel_latency_s
        self._sources = {op: "roofline" for op in OP_NAMES}

    # ---- public API ------------------------------------------------------------------------------------
    def predict(self, batch: Sequence[tuple[int, int]]) -> StepTime:
        """Predict one forward step of ``batch`` (a sequence of ``(extend_len, past_len)``)."""
        validate_batch(batch)
        self.check_fits(batch)
        return self.predict_sums(BatchSums.from_batch(batch))

    def predict_sums(self, sums: BatchSums) -> StepTime:
        """Predict from precomputed batch sums (the engine's fast path; no validation)."""
        dep = self.deployment
        work = op_work(dep.model, dep.precision, dep.tp, sums)
        ops: dict[str, float] = {}
        for name, item in work.items():
            flops_rate = self._half_flops if name in ("attention", "lm_head") else self._gemm_flops
            ops[name] = self._roofline_s(item, flops_rate) * 1e3
        ops["allreduce"] = self._allreduce_s(sums) * 1e3
        ops["overhead"] = self._overhead_s(sums) * 1e3
        ordered = {name: ops[name] for name in OP_NAMES}
        return StepTime(sum(ordered.values()), ordered, dict(self._sources), dep.gpu.name)

    def check_fits(self, batch: Iterable[tuple[int, int]]) -> None:
        """Refuse a batch whose KV cache and weights cannot fit in one GPU's memory."""
        dep = self.deployment
        tokens = sum(extend + past for extend, past in batch)
        need = tokens * dep.kv_bytes_per_token
        free = dep.gpu.memory_bytes - dep.weight_bytes_per_gpu
        if need > free:
            raise UserInputError(
                f"batch needs {need / 1024**3:.1f} GiB of KV cache for {tokens} tokens, but one "
                f"{dep.gpu.name} has {free / 1024**3:.1f} GiB left after "
                f"{dep.weight_bytes_per_gpu / 1024**3:.1f} GiB of {dep.model.name} weights"
            )

    # ---- pieces --------------------------------------------------------------------------------------
    def _roofline_s(self, work: OpWork, flops_rate: float) -> float:
        if work.kernels == 0:
            return 0.0
        seconds = max(work.flops / flops_rate, work.bytes / self._bandwidth)
        return max(seconds, work.kernels * self._latency)

    def _allreduce_s(self, sums: BatchSums) -> float:
        dep = self.deployment
        nbytes, count = allreduce_bytes(dep.model, dep.precision, dep.tp, sums)
        if count == 0:
            return 0.0
        # A ring all-reduce moves 2 (tp - 1) / tp of the buffer over each GPU's link.
        transfer = 2 * (dep.tp - 1) / dep.tp * nbytes / dep.gpu.tp_link_bandwidth
        return transfer + count * dep.gpu.roofline.collective_latency_s

    def _overhead_s(self, sums: BatchSums) -> float:
        roof = self.deployment.gpu.roofline
        if sums.is_decode:
            return roof.cuda_graph_launch_s
        kernels = self.deployment.model.num_layers * KERNELS_PER_LAYER + KERNELS_OUTSIDE_LAYERS
        return kernels * roof.kernel_gap_s


def validate_batch(batch: Sequence[tuple[int, int]]) -> None:
    """Refuse empty batches and non-positive extend or negative past lengths."""
    if len(batch) == 0:
        raise UserInputError("batch: at least one request is needed")
    for index, (extend, past) in enumerate(batch):
        if extend <= 0:
            raise UserInputError(f"batch item {index}: extend_len must be > 0, got {extend}")
        if past < 0:
            raise UserInputError(f"batch item {index}: past_len must be >= 0, got {past}")


__all__ = [
    "ELEMENTWISE_OPS",
    "GEMM_OPS",
    "Deployment",
    "StepTime",
    "StepTimePredictor",
    "validate_batch",
]
