"""SGLang server arguments as kvsim models them: SGLang's names, defaults and derived values.

Only the arguments that change scheduling are modelled. Defaults that SGLang derives from the GPU's
memory and the TP degree (``mem_fraction_static``, ``chunked_prefill_size``, the KV pool size and
``max_running_requests``) are derived the same way here and written into the run's resolved config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from kvsim.core.errors import UserInputError
from kvsim.perf.predictor import Deployment

GiB = 1024**3
#: GPU memory SGLang's own estimate sets aside besides weights and KV (CUDA context, activations, graphs);
#: HiSim's KV-pool estimate subtracts the same 1.4 GiB.
RESERVED_GIB = 1.4
#: SGLang clips the output-length estimate of a request when budgeting prefill (SGLANG_CLIP_MAX_NEW_TOKENS).
CLIP_MAX_NEW_TOKENS = 4096
#: Scheduler constants (SGLang's global config and environment defaults).
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20
#: SGLang versions whose scheduling rules kvsim models (the rules are read from that version's source).
SGLANG_VERSIONS = ("0.5.6.post2",)
SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight", "lof", "random")
#: Cache-aware policies fall back to FCFS when more requests than this wait (SGLang skips the costly
#: prefix matching and sorting of long queues).
PREFIX_AWARE_QUEUE_LIMIT = 128
#: Scheduler CPU time per step: a fixed part plus a part per request in the batch. These are kvsim's
#: estimates for SGLang's Python scheduler on a modern server CPU (batch assembly, radix matching,
#: output processing), pending a measurement; with overlap scheduling (SGLang's default) the CPU work
#: of one step hides behind the GPU work of the previous one, without it the two add up.
SCHEDULER_CPU_BASE_MS = 1.0
SCHEDULER_CPU_PER_REQUEST_US = 6.0


@dataclass(frozen=True, slots=True)
class ServerArgs:
    """The scheduling-relevant subset of ``sglang.launch_server`` arguments (None = derive)."""

    mem_fraction_static: float | None = None
    max_total_tokens: int | None = None
    chunked_prefill_size: int | None = None
    max_prefill_tokens: int = 16384
    max_running_requests: int | None = None
    page_size: int = 1
    schedule_conservativeness: float = 1.0
    disable_radix_cache: bool = False
    schedule_policy: str = "fcfs"
    cuda_graph_max_bs: int | None = None
    disable_overlap_schedule: bool = False
    enable_mixed_chunk: bool = False
    sglang_version: str = SGLANG_VERSIONS[0]
    scheduler_cpu_base_ms: float = SCHEDULER_CPU_BASE_MS
    scheduler_cpu_per_request_us: float = SCHEDULER_CPU_PER_REQUEST_US

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the resolved config."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ResolvedServer:
    """Server arguments with every derived value filled in, plus what the KV pool holds."""

    args: ServerArgs
    max_total_tokens: int
    max_running_requests: int
    chunked_prefill_size: int | None  # None disables chunking
    mem_fraction_static: float
    context_len: int
    cuda_graph_max_bs: int = 256

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for ``config.resolved.yaml``'s ``server`` section."""
        data = self.args.to_dict()
        data.update(
            mem_fraction_static=self.mem_fraction_static,
            max_total_tokens=self.max_total_tokens,
            max_running_requests=self.max_running_requests,
            chunked_prefill_size=self.chunked_prefill_size if self.chunked_prefill_size is not None else -1,
            cuda_graph_max_bs=self.cuda_graph_max_bs,
        )
        return data


def default_mem_fraction_static(tp: int) -> float:
    """SGLang's default static memory fraction by TP degree (more GPUs reserve more for collectives)."""
    if tp >= 16:
        return 0.79
    if tp >= 8:
        return 0.81
    if tp >= 4:
        return 0.85
    if tp >= 2:
        return 0.87
    return 0.88


def default_chunked_prefill_size(gpu_memory_gib: float) -> int:
    """SGLang's default chunk size by GPU memory (larger GPUs take larger chunks)."""
    if gpu_memory_gib < 35:
        return 2048
    if gpu_memory_gib < 60:
        return 4096
    if gpu_memory_gib < 160:
        return 8192
    return 16384


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise UserInputError(f"--{name.replace('_', '-')}: must be > 0, got {value}")


def resolve_server(args: ServerArgs, deployment: Deployment) -> ResolvedServer:
    """Derive every default as SGLang does for ``deployment``; one-line errors for impossible settings."""
    for name in ("max_total_tokens", "max_prefill_tokens", "max_running_requests", "page_size"):
        _check_positive(name, getattr(args, name))
    if args.chunked_prefill_size is not None and args.chunked_prefill_size == 0:
        raise UserInputError("--chunked-prefill-size: must be > 0, or -1 to disable chunking")
    if args.schedule_conservativeness <= 0:
        raise UserInputError("--schedule-conservativeness: must be > 0")
    if args.sglang_version not in SGLANG_VERSIONS:
        raise UserInputError(
            f"--sglang-version: {args.sglang_version!r} is not modelled; "
            f"choose one of: {', '.join(SGLANG_VERSIONS)}"
        )
    if args.schedule_policy not in SCHEDULE_POLICIES:
        raise UserInputError(
            f"--schedule-policy: {args.schedule_policy!r} is not one of {', '.join(SCHEDULE_POLICIES)}"
        )
    _check_positive("cuda_graph_max_bs", args.cuda_graph_max_bs)
    if args.scheduler_cpu_base_ms < 0 or args.scheduler_cpu_per_request_us < 0:
        raise UserInputError("scheduler CPU times must be >= 0")
    mem_fraction = args.mem_fraction_static
    if mem_fraction is None:
        mem_fraction = default_mem_fraction_static(deployment.tp)
    if not 0 < mem_fraction < 1:
        raise UserInputError(f"--mem-fraction-static: must lie in (0, 1), got {mem_fraction}")

    gpu_gib = deployment.gpu.memory_gib
    kv_budget = (mem_fraction * gpu_gib - RESERVED_GIB) * GiB - deployment.weight_bytes_per_gpu
    pool_from_memory = int(kv_budget // deployment.kv_bytes_per_token)
    if pool_from_memory <= 0:
        raise UserInputError(
            f"{deployment.model.name} does not fit on {deployment.gpu.name} at --tp {deployment.tp} with "
            f"--mem-fraction-static {mem_fraction}: no memory is left for the KV cache"
        )
    pool = pool_from_memory if args.max_total_tokens is None else min(args.max_total_tokens, pool_from_memory)
    pool -= pool % args.page_size
    if pool < args.page_size:
        raise UserInputError(f"KV pool of {pool} tokens is smaller than one page of {args.page_size}")

    context_len = deployment.model.max_position_embeddings
    if args.max_running_requests is not None:
        max_running = args.max_running_requests
    else:
        # SGLang sizes the request pool from the token pool and the context length, within [2048, 4096],
        # and never admits more requests than half the token pool.
        pool_reqs = min(max(int(pool / context_len * 512), 2048), 4096)
        max_running = max(1, min(pool_reqs, pool // 2))

    if args.chunked_prefill_size is None:
        chunk: int | None = default_chunked_prefill_size(gpu_gib)
    elif args.chunked_prefill_size < 0:
        chunk = None
    else:
        chunk = args.chunked_prefill_size
    if chunk is not None and chunk % args.page_size:
        raise UserInputError(
            f"--chunked-prefill-size {chunk} is not a multiple of --page-size {args.page_size}"
        )
    return ResolvedServer(
        args=replace(args, mem_fraction_static=mem_fraction),
        max_total_tokens=pool,
        max_running_requests=max_running,
        chunked_prefill_size=chunk,
        mem_fraction_static=mem_fraction,
        context_len=context_len,
        # The predictor owns SGLang's CUDA-graph sizing (kvsim.perf.cuda_graph); echo what it uses.
        cuda_graph_max_bs=deployment.cuda_graph_max_bs or 0,
    )
