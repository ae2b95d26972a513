"""Step-time prediction: how long one forward step of a batch takes on one GPU (or a TP group).

``StepTimePredictor(deployment).predict([(extend_len, past_len), ...])`` returns a :class:`StepTime` with a
per-op breakdown in milliseconds whose sum is the step time, the source that served each op, and a range
from the profile's validation errors.

Each op is served by the source its GPU profile declares for the op's family:

- ``table``: measured kernel times interpolated in log space (:mod:`kvsim.perf.interp`); shapes the table
  does not hold fall back to the family's fitted model (source ``fitted``), else the roofline;
- ``fitted``: a roofline with fitted efficiency curves (:mod:`kvsim.perf.families`);
- ``roofline``: ``max(flops / (peak * compute_efficiency), bytes / (bandwidth * memory_efficiency),
  kernel_latency)`` per op with the profile's factors.

Tables measured one kernel at a time between CUDA events include the host's launch latency; the profile's
``table_timing_floor`` is subtracted from every such kernel (never below ``kernel_latency``), because
SGLang runs kernels back to back or from CUDA graphs (``kvsim calibrate``'s rows are kernel time: floor
0). Decode batches are padded to the next batch size SGLang captured a CUDA graph for (padding adds GEMM
and elementwise rows, not KV reads) and pay one graph launch; larger decode batches and every other step
run eagerly and pay an idle gap per kernel. ``overhead`` is that GPU launch cost only; the scheduler's CPU
time belongs to the engine. Attention times measured under one backend are corrected to the deployment's
backend by a factor fitted where the table has both, else one the profile states
(``attention_backend_factors``), else 1.0. Tensor-parallel all-reduces run as a ring over NVLink (PCIe
without it).

``predict_sums`` is the engine's fast path: everything but attention depends only on the (padded) token
and request counts and is memoized per count; attention is a handful of scalar operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsim.core.errors import UserInputError
from kvsim.hardware.profile import ATTENTION_BACKENDS, GpuProfile, load_profile
from kvsim.models.spec import (
    ModelSpec,
    Precision,
    kv_bytes_per_token,
    load_model_spec,
    resolve_precision,
    weight_bytes,
)
from kvsim.perf.calibration import (
    backend_factor,
    fitted_params,
    pick,
    row_guide,
    table_index,
    table_lookup,
    table_points,
)
from kvsim.perf.cuda_graph import cuda_graph_batch_sizes, default_cuda_graph_max_bs, padded_batch_size
from kvsim.perf.families import (
    allreduce_time,
    decode_attention_time,
    dtype_key,
    gemm_time,
    prefill_attention_time,
    stream_time,
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

#: op -> the profile op family that serves it (``overhead`` has none)
OP_FAMILY = {
    **dict.fromkeys(GEMM_OPS, "gemm"),
    **dict.fromkeys(ELEMENTWISE_OPS, "elementwise"),
    "attention": "attention",
    "allreduce": "communication",
}
_CACHE_LIMIT = 1 << 16
#: elementwise op -> the ``op`` of the elementwise-table rows that time it. SGLang's norms are fused
#: (add +) RMSNorm kernels and its activation a fused SiLU-and-mul, which the calibration times as such.
#: ``rope`` is absent on purpose: SGLang applies RoPE to q and k in one fused kernel, while the
#: calibration's ``rope`` rows time about a dozen unfused torch kernels; the fitted stream model serves it.
ELEMENTWISE_TABLE_OPS = {
    "embedding": "embedding",
    "attn_norm": "rmsnorm",
    "qk_norm": "rmsnorm",
    "mlp_norm": "rmsnorm",
    "act": "silu_and_mul",
    "final_norm": "rmsnorm",
}


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model served on a GPU type with a tensor-parallel degree, precision and SGLang runtime settings."""

    model: ModelSpec
    gpu: GpuProfile
    tp: int
    precision: Precision
    attention_backend: str = "fa3"
    #: largest decode batch with a CUDA graph; ``None``: SGLang's default for the GPU, 0: no graphs
    cuda_graph_max_bs: int | None = None

    @classmethod
    def create(
        cls,
        model: str | ModelSpec,
        gpu: str | GpuProfile,
        tp: int = 1,
        dtype: str = "auto",
        quantization: str | None = None,
        kv_cache_dtype: str = "auto",
        *,
        attention_backend: str = "fa3",
        cuda_graph_max_bs: int | None = None,
        disable_cuda_graph: bool = False,
        allow_roofline: bool = False,
    ) -> Deployment:
        """Resolve names and flags into a validated deployment (one-line errors for bad input).

        ``cuda_graph_max_bs=None`` takes SGLang's default for the GPU's memory and ``tp``;
        ``allow_roofline`` serves op families whose declared table or parameters are missing from the
        roofline instead of refusing the profile.
        """
        spec = load_model_spec(model) if isinstance(model, str) else model
        profile = load_profile(gpu, allow_roofline=allow_roofline) if isinstance(gpu, str) else gpu
        if tp < 1:
            raise UserInputError(f"--tp: must be >= 1, got {tp}")
        if spec.num_attention_heads % tp:
            raise UserInputError(
                f"--tp {tp} does not divide {spec.name}'s {spec.num_attention_heads} attention heads"
            )
        kv = spec.num_key_value_heads
        if kv % tp and tp % kv:
            raise UserInputError(f"--tp {tp} and {spec.name}'s {kv} KV heads: one must divide the other")
        if attention_backend not in ATTENTION_BACKENDS:
            raise UserInputError(
                f"--attention-backend: {attention_backend!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
            )
        if cuda_graph_max_bs is not None and cuda_graph_max_bs < 1:
            raise UserInputError(f"--cuda-graph-max-bs: must be >= 1, got {cuda_graph_max_bs}")
        precision = resolve_precision(spec, dtype, quantization, kv_cache_dtype)
        profile.peak_flops("fp8" if precision.weight_dtype == "fp8" else precision.activation_dtype)
        if disable_cuda_graph:
            max_bs = 0
        elif cuda_graph_max_bs is None:
            max_bs = default_cuda_graph_max_bs(profile.memory_gib, tp)
        else:
            max_bs = cuda_graph_max_bs
        deployment = cls(spec, profile, tp, precision, attention_backend, max_bs)
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

    @property
    def cuda_graph_batch_sizes(self) -> tuple[int, ...]:
        """The decode batch sizes SGLang captures CUDA graphs for in this deployment."""
        max_bs = self.cuda_graph_max_bs
        if max_bs is None:
            max_bs = default_cuda_graph_max_bs(self.gpu.memory_gib, self.tp)
        return cuda_graph_batch_sizes(max_bs) if max_bs else ()


@dataclass(frozen=True, slots=True)
class StepTime:
    """A predicted forward step: total and per-op milliseconds, each op's source, and a range.

    ``step_time_ms_range`` spreads each op by its family's median leave-one-out error (ops served by the
    plain roofline have no measured error and spread by nothing), so ``(t, t)`` for roofline-only
    profiles. It is a typical-error band, not a bound.
    """

    step_time_ms: float
    ops: dict[str, float]
    sources: dict[str, str]
    profile: str
    step_time_ms_range: tuple[float, float] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.step_time_ms_range is None:
            object.__setattr__(self, "step_time_ms_range", (self.step_time_ms, self.step_time_ms))

    def to_dict(self) -> dict[str, object]:
        """The JSON shape ``kvsim step-time --json`` prints."""
        return {
            "step_time_ms": self.step_time_ms,
            "step_time_ms_range": list(self.step_time_ms_range),
            "ops": dict(self.ops),
            "sources": dict(self.sources),
            "profile": self.profile,
        }


Kernel = Callable[[float], float]  # per-kernel seconds of a token-count-shaped op


class StepTimePredictor:
    """Predicts forward-step times for one :class:`Deployment`."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        dep, gpu, prec = deployment, deployment.gpu, deployment.precision
        spec = dep.model
        roof = gpu.roofline
        self._layers = spec.num_layers
        self._q_heads = spec.num_attention_heads // dep.tp
        self._kv_heads = max(spec.num_key_value_heads // dep.tp, 1)
        self._head_dim = spec.head_dim
        self._act_bytes = prec.activation_bytes
        self._kv_bytes = prec.kv_bytes
        self._act_key = "fp16" if prec.activation_dtype == "float16" else "bf16"
        self._gemm_dtype = "fp8" if prec.weight_dtype == "fp8" else self._act_key
        self._kv_key = dtype_key(prec.kv_cache_dtype)
        compute_dtype = "fp8" if prec.weight_dtype == "fp8" else prec.activation_dtype
        # Roofline rates (the v0 predictor, kept bit for bit for families declared ``roofline``).
        self._gemm_flops = gpu.peak_flops(compute_dtype) * roof.compute_efficiency
        # Attention and the LM head run at 16-bit tensor throughput even with fp8 weights.
        self._half_peak = gpu.peak_flops(prec.activation_dtype)
        self._half_flops = self._half_peak * roof.compute_efficiency
        self._bandwidth = gpu.memory_bandwidth * roof.memory_efficiency
        self._latency = roof.kernel_latency_s
        self._graph_sizes = dep.cuda_graph_batch_sizes
        self._cache: dict[tuple[int, int, bool], tuple[tuple[float, ...], float]] = {}

        unit = op_work(spec, prec, dep.tp, BatchSums(1, 1, 1, 1, False))
        self._sources: dict[str, str] = {}
        self._errors: dict[str, float] = {}
        self._kernels: dict[str, Kernel] = {}
        for name in GEMM_OPS:
            self._setup_gemm(name, unit[name])
        for name in ELEMENTWISE_OPS:
            self._setup_elementwise(name, unit[name], self._row_width(name))
        self._setup_allreduce()
        self._prefill, prefill_source, prefill_error = self._setup_attention("attention_prefill")
        self._decode, decode_source, decode_error = self._setup_attention("attention_decode")
        self._sources["overhead"] = "roofline"
        self._errors["overhead"] = 0.0
        base = {name: self._sources.get(name, "roofline") for name in OP_NAMES}
        self._prefill_sources = {**base, "attention": prefill_source}
        self._decode_sources = {**base, "attention": decode_source}
        self._prefill_error, self._decode_error = prefill_error, decode_error
        self._base_ops = tuple(name for name in OP_NAMES if name != "attention")
        self._attention_index = OP_NAMES.index("attention")

    # ---- public API ------------------------------------------------------------------------------------
    def predict(self, batch: Sequence[tuple[int, int]]) -> StepTime:
        """Predict one forward step of ``batch`` (a sequence of ``(extend_len, past_len)``)."""
        validate_batch(batch)
        self.check_fits(batch)
        return self.predict_sums(BatchSums.from_batch(batch))

    def predict_sums(self, sums: BatchSums) -> StepTime:
        """Predict from precomputed batch sums (the engine's fast path; no validation)."""
        requests, tokens = sums.num_requests, sums.num_tokens
        graph = False
        if sums.is_decode and self._graph_sizes:
            padded = padded_batch_size(requests, self._graph_sizes)
            if padded is not None:
                graph, requests, tokens = True, padded, padded
        key = (tokens, requests, graph)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._token_ops(tokens, requests, graph)
        times, spread = cached
        if sums.is_decode:
            attention = self._decode(sums) * 1e3
            spread += attention * self._decode_error
            sources = self._decode_sources
        else:
            attention = self._prefill(sums) * 1e3
            spread += attention * self._prefill_error
            sources = self._prefill_sources
        index = self._attention_index
        ops = dict(zip(OP_NAMES, (*times[:index], attention, *times[index:]), strict=True))
        total = sum(ops.values())
        return StepTime(total, ops, dict(sources), self.deployment.gpu.name, (total - spread, total + spread))

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

    @property
    def sources(self) -> dict[str, str]:
        """The source serving each op of a prefill step (decode steps may differ in ``attention``)."""
        return dict(self._prefill_sources)

    # ---- setup -----------------------------------------------------------------------------------------
    def _error(self, family: str, source: str, dtype: str | None = None) -> float:
        if source == "roofline":
            return 0.0
        error = self.deployment.gpu.validation_error(family, source, dtype)
        return 0.0 if error is None else error

    def _floor(self, seconds: float, floor: float) -> float:
        """A table-measured kernel time without its measurement floor, never below the smallest kernel."""
        return max(seconds - floor, self._latency) if floor else seconds

    def _setup_gemm(self, name: str, unit: OpWork) -> None:
        gpu = self.deployment.gpu
        dtype = self._act_key if name == "lm_head" else self._gemm_dtype
        n, k = unit.n, unit.k
        source = gpu.sources["gemm"]
        kernel: Kernel | None = None
        if source == "table":
            guide = row_guide(gpu, "gemm")
            lookup = table_lookup(gpu.tables["gemm"], (n, k, dtype_key(dtype)), guide=guide)
            if lookup is not None:
                floor = gpu.table_timing_floor_s
                if guide is None:
                    kernel = lambda m, t=lookup, f=floor: self._floor(t(1.0, m, m), f)  # noqa: E731
                else:
                    _, params, _ = fitted_params(gpu, "gemm")
                    prm = pick(params, dtype, f"profile {gpu.name} fitted gemm")
                    peak, bw = gpu.peak_flops(dtype), gpu.memory_bandwidth

                    def kernel(m: float, t: Any = lookup, f: float = floor, p: Any = prm) -> float:
                        return self._floor(t(1.0, m, m, gemm_time(m, n, k, dtype, peak, bw, p)), f)

            elif "gemm" in gpu.fitted:
                source = "fitted"
            else:
                source = "roofline"
        if source == "fitted":
            _, params, entry = fitted_params(gpu, "gemm")
            prm = pick(params, dtype, f"profile {gpu.name} fitted gemm")
            peak = gpu.peak_flops(dtype)
            bw, floor = gpu.memory_bandwidth, float(entry.get("timing_floor_us", 0.0)) * 1e-6
            kernel = lambda m, p=prm, f=floor: self._floor(gemm_time(m, n, k, dtype, peak, bw, p), f)  # noqa: E731
        self._sources[name] = source
        self._errors[name] = self._error("gemm", source, dtype_key(dtype))
        if kernel is not None:
            self._kernels[name] = kernel

    def _row_width(self, name: str) -> int:
        """Elements per row of an elementwise op's kernel (the elementwise table's ``width``)."""
        spec, tp = self.deployment.model, self.deployment.tp
        if name == "qk_norm":
            return spec.head_dim  # q and k are normed per head: rows of head_dim
        if name == "act":
            return spec.intermediate_size // tp
        if name == "rope":
            return (self._q_heads + self._kv_heads) * spec.head_dim
        return spec.hidden_size

    def _setup_elementwise(self, name: str, unit: OpWork, width: int) -> None:
        gpu = self.deployment.gpu
        source = gpu.sources["elementwise"]
        if unit.kernels == 0:
            self._sources[name], self._errors[name] = source, 0.0
            self._kernels[name] = lambda tokens: 0.0
            return
        per_token = unit.bytes / unit.kernels  # bytes one kernel moves per token
        kernel: Kernel | None = None
        if source == "table":
            guide = row_guide(gpu, "elementwise")
            table_op = ELEMENTWISE_TABLE_OPS.get(name)
            key = (table_op, dtype_key(self._act_key))
            lookup = table_lookup(gpu.tables["elementwise"], key, guide=guide) if table_op else None
            if lookup is not None:
                floor = gpu.table_timing_floor_s
                if guide is None:
                    kernel = lambda tokens, t=lookup, f=floor: self._floor(  # noqa: E731
                        t(width, per_token * tokens, per_token * tokens), f
                    )
                else:
                    _, params, _ = fitted_params(gpu, "elementwise")
                    prm = pick(params, self._act_key, f"profile {gpu.name} fitted elementwise")
                    bw = gpu.memory_bandwidth

                    def kernel(tokens: float, t: Any = lookup, f: float = floor, p: Any = prm) -> float:
                        nbytes = per_token * tokens
                        return self._floor(t(width, nbytes, nbytes, stream_time(nbytes, bw, p)), f)

            elif "elementwise" in gpu.fitted:
                source = "fitted"
            else:
                source = "roofline"
        if source == "fitted":
            _, params, entry = fitted_params(gpu, "elementwise")
            prm = pick(params, self._act_key, f"profile {gpu.name} fitted elementwise")
            bw, floor = gpu.memory_bandwidth, float(entry.get("timing_floor_us", 0.0)) * 1e-6
            kernel = lambda tokens, p=prm, f=floor: self._floor(stream_time(per_token * tokens, bw, p), f)  # noqa: E731
        self._sources[name] = source
        self._errors[name] = self._error("elementwise", source)
        if kernel is not None:
            self._kernels[name] = kernel

    def _setup_allreduce(self) -> None:
        dep, gpu = self.deployment, self.deployment.gpu
        source = gpu.sources["communication"]
        self._allreduce: Callable[[int, int], float] | None = None
        if dep.tp > 1:
            hidden_per_token = dep.model.hidden_size * self._act_bytes
            logits_per_request = dep.model.vocab_size * self._act_bytes
            layers2 = 2 * dep.model.num_layers
            one: Kernel | None = None
            if source == "table":
                lookup = table_lookup(gpu.tables["communication"], (dep.tp, dtype_key(self._act_key)))
                if lookup is not None:
                    floor = gpu.table_timing_floor_s
                    one = lambda nbytes, t=lookup, f=floor: self._floor(t(1.0, nbytes, nbytes), f)  # noqa: E731
                elif "communication" in gpu.fitted:
                    source = "fitted"
                else:
                    source = "roofline"
            if source == "fitted":
                _, params, _entry = fitted_params(gpu, "communication")
                prm = pick(params, self._act_key, f"profile {gpu.name} fitted communication")
                link = gpu.tp_link_bandwidth
                one = lambda nbytes, p=prm: allreduce_time(nbytes, dep.tp, link, p)  # noqa: E731
            if one is not None:
                kernel = one
                self._allreduce = lambda tokens, requests: (
                    layers2 * kernel(tokens * hidden_per_token) + kernel(requests * logits_per_request)
                )
        self._sources["allreduce"] = source
        self._errors["allreduce"] = self._error("communication", source) if dep.tp > 1 else 0.0

    def _setup_attention(self, family: str) -> tuple[Callable[[BatchSums], float], str, float]:
        """The attention evaluator of decode or prefill steps, its source and its error."""
        gpu, dep = self.deployment.gpu, self.deployment
        source = gpu.sources[family]
        layers = self._layers
        heads, kv_heads, head_dim = self._q_heads, self._kv_heads, self._head_dim
        if source == "table":
            measured = gpu.table_backends.get(family, "unknown")
            shape = (heads, kv_heads, head_dim, self._kv_key)
            backends = [key[-1] for key in table_index(gpu.tables[family], measured) if key[:-1] == shape]
            if backends:
                chosen = _serving_backend(dep.attention_backend, backends)
                points = table_points(gpu.tables[family], measured)
                factor = backend_factor(points, chosen, dep.attention_backend)
                if factor is None:
                    factor = self._configured_factor(chosen)
                guide = row_guide(gpu, family)
                lookup = table_lookup(gpu.tables[family], (*shape, chosen), measured, guide)
                assert lookup is not None  # chosen among the table's backends for this shape
                model = self._attention_model(family, with_floor=False) if guide is not None else None
                floor = gpu.table_timing_floor_s
                scale = layers * factor
                if family == "attention_decode":

                    def table_decode(sums: BatchSums, t: Any = lookup, f: float = floor) -> float:
                        requests, context = sums.num_requests, sums.sum_context
                        g = model(sums) if model is not None else None
                        return scale * self._floor(t(requests, context / requests, context, g), f)

                    return table_decode, "table", self._error(family, "table", self._kv_key)

                def table_prefill(sums: BatchSums, t: Any = lookup, f: float = floor) -> float:
                    pairs, tokens = sums.attention_pairs, sums.num_tokens
                    g = model(sums) if model is not None else None
                    return scale * self._floor(t(sums.num_requests, pairs / tokens, pairs, g), f)

                return table_prefill, "table", self._error(family, "table", self._kv_key)
            source = "fitted" if family in gpu.fitted else "roofline"
        if source == "fitted":
            entry = gpu.fitted[family]
            model = self._attention_model(family, with_floor=True)
            scale = layers * self._configured_factor(str(entry.get("backend", "unknown")))

            def fitted_attention(sums: BatchSums) -> float:
                return scale * model(sums)

            return fitted_attention, "fitted", self._error(family, "fitted", self._kv_key)
        return self._roofline_attention, "roofline", 0.0

    def _attention_model(self, family: str, with_floor: bool) -> Callable[[BatchSums], float]:
        """Per-layer seconds of the fitted attention model of ``family`` for a batch's sums.

        ``with_floor`` subtracts the parameters' timing floor (for serving); without it the model
        compares with the tables it guides.
        """
        gpu = self.deployment.gpu
        _, params, entry = fitted_params(gpu, family)
        prm = pick(params, self._kv_key, f"profile {gpu.name} fitted {family}")
        floor = float(entry.get("timing_floor_us", 0.0)) * 1e-6 if with_floor else 0.0
        heads, kv_heads, head_dim = self._q_heads, self._kv_heads, self._head_dim
        act, kvb = self._act_bytes, self._kv_bytes
        bw, peak = gpu.memory_bandwidth, self._half_peak
        if family == "attention_decode":
            # With an fp8 KV cache the decode kernel runs its tensor-core tiles in fp8.
            mma_peak = gpu.compute_flops.get("fp8", peak) if self._kv_key == "fp8" else peak

            def decode(sums: BatchSums) -> float:
                seconds = decode_attention_time(
                    sums.num_requests,
                    sums.sum_context,
                    heads,
                    kv_heads,
                    head_dim,
                    act,
                    kvb,
                    mma_peak,
                    bw,
                    prm,
                )
                return self._floor(seconds, floor)

            return decode

        def prefill(sums: BatchSums) -> float:
            seconds = prefill_attention_time(
                sums.attention_pairs,
                sums.num_tokens,
                sums.sum_context,
                heads,
                kv_heads,
                head_dim,
                act,
                kvb,
                peak,
                bw,
                prm,
                sums.num_requests,
            )
            return self._floor(seconds, floor)

        return prefill

    def _configured_factor(self, measured: str) -> float:
        """Backend correction the profile states (``attention_backend_factors``), 1.0 when unknown."""
        target = self.deployment.attention_backend
        if measured in (target, "unknown"):
            return 1.0
        factors = self.deployment.gpu.extra.get("attention_backend_factors") or {}
        return float(factors.get(f"{measured}->{target}", 1.0))

    # ---- per-step pieces -------------------------------------------------------------------------------
    def _token_ops(self, tokens: int, requests: int, graph: bool) -> tuple[tuple[float, ...], float]:
        """Milliseconds of every op but attention (in OP_NAMES order), and their error spread; memoized."""
        dep = self.deployment
        work = op_work(dep.model, dep.precision, dep.tp, BatchSums(requests, tokens, tokens, tokens, False))
        times: list[float] = []
        spread = 0.0
        for name in self._base_ops:
            if name == "allreduce":
                seconds = self._allreduce_s(tokens, requests)
            elif name == "overhead":
                seconds = self._overhead_s(graph)
            elif name in self._kernels:
                item = work[name]
                rows = requests if name == "lm_head" else tokens
                seconds = item.kernels * self._kernels[name](rows) if item.kernels else 0.0
            else:
                flops_rate = self._half_flops if name == "lm_head" else self._gemm_flops
                seconds = self._roofline_s(work[name], flops_rate)
            ms = seconds * 1e3
            times.append(ms)
            spread += ms * self._errors[name]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        result = (tuple(times), spread)
        self._cache[(tokens, requests, graph)] = result
        return result

    def _roofline_s(self, work: OpWork, flops_rate: float) -> float:
        if work.kernels == 0:
            return 0.0
        seconds = max(work.flops / flops_rate, work.bytes / self._bandwidth)
        return max(seconds, work.kernels * self._latency)

    def _roofline_attention(self, sums: BatchSums) -> float:
        """The v0 roofline of attention (same FLOPs and bytes as :func:`kvsim.perf.ops.op_work`)."""
        layers, tokens = self._layers, sums.num_tokens
        flops = layers * 4 * self._q_heads * self._head_dim * sums.attention_pairs
        nbytes = layers * (
            2 * tokens * self._q_heads * self._head_dim * self._act_bytes
            + 2 * self._kv_heads * self._head_dim * self._kv_bytes * (sums.sum_context + tokens)
        )
        seconds = max(flops / self._half_flops, nbytes / self._bandwidth)
        return max(seconds, layers * self._latency)

    def _allreduce_s(self, tokens: int, requests: int) -> float:
        dep = self.deployment
        if dep.tp == 1:
            return 0.0
        if self._allreduce is not None:
            return self._allreduce(tokens, requests)
        sums = BatchSums(requests, tokens, tokens, tokens, False)
        nbytes, count = allreduce_bytes(dep.model, dep.precision, dep.tp, sums)
        # A ring all-reduce moves 2 (tp - 1) / tp of the buffer over each GPU's link.
        transfer = 2 * (dep.tp - 1) / dep.tp * nbytes / dep.gpu.tp_link_bandwidth
        return transfer + count * dep.gpu.roofline.collective_latency_s

    def _overhead_s(self, graph: bool) -> float:
        roof = self.deployment.gpu.roofline
        if graph:
            return roof.cuda_graph_launch_s
        kernels = self.deployment.model.num_layers * KERNELS_PER_LAYER + KERNELS_OUTSIDE_LAYERS
        return kernels * roof.kernel_gap_s


def _serving_backend(target: str, measured: Sequence[str]) -> str:
    """The measured backend whose rows serve a deployment on attention backend ``target``.

    ``target`` itself when the table has it; else the first of SGLang's backends the table has (a
    Triton paged kernel stands in for FA3 better than torch's contiguous matmul does); else the
    table's first backend. The caller corrects the times by the factor between the two, when known.
    """
    if target in measured:
        return target
    return next((b for b in measured if b in ATTENTION_BACKENDS), measured[0])


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
    "ELEMENTWISE_TABLE_OPS",
    "GEMM_OPS",
    "OP_FAMILY",
    "Deployment",
    "StepTime",
    "StepTimePredictor",
    "validate_batch",
]
