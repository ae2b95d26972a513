"""SGLang server arguments as kvsim models them: SGLang's names, defaults and derived values.

Only the arguments that change scheduling are modelled. Defaults that SGLang derives from the GPU's
memory and the TP degree (``mem_fraction_static``, ``chunked_prefill_size``, the KV pool size and
``max_running_requests``) are derived the same way here and written into the run's resolved config.
The hierarchical cache (``--enable-hierarchical-cache`` and the ``--hicache-*`` arguments) resolves into
:class:`HiCacheSettings`: the host pool sized as SGLang's ``HostKVCache`` sizes it, and SGLang's
corrections of unsupported layout/backend pairs applied. An L3 storage backend
(``--hicache-storage-backend`` and its prefetch policy and extra config) resolves into
:class:`StorageSettings`, attached to the HiCache settings.
"""

from __future__ import annotations

import json
import math
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
#: HiCache choices (SGLang ``server_args.py``); the first of each is SGLang's default.
HICACHE_WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
HICACHE_IO_BACKENDS = ("kernel", "direct")
HICACHE_MEM_LAYOUTS = ("layer_first", "page_first", "page_first_direct")
#: The ServerArgs fields that configure HiCache; left out of the resolved config while it is off, so runs
#: without it resolve to exactly the config they always did.
HICACHE_ARGS = (
    "enable_hierarchical_cache",
    "hicache_ratio",
    "hicache_size",
    "hicache_write_policy",
    "hicache_io_backend",
    "hicache_mem_layout",
)
#: L3 storage backends: SGLang's ``file`` and ``mooncake`` as plain stores, and ``kvcm`` (Tair KVCM's
#: cache manager, :mod:`kvsim.cache`, deciding what is stored where).
HICACHE_STORAGE_BACKENDS = ("file", "mooncake", "kvcm")
#: When a request stops waiting for its L3 prefetch (SGLang ``--hicache-storage-prefetch-policy``).
HICACHE_PREFETCH_POLICIES = ("best_effort", "wait_complete", "timeout")
#: The ServerArgs fields that configure the L3 storage; left out of the resolved config without one.
HICACHE_STORAGE_ARGS = (
    "hicache_storage_backend",
    "hicache_storage_prefetch_policy",
    "hicache_storage_backend_extra_config",
    "hicache_storage_tier",
)
#: SGLang's defaults of the prefetch keys of ``--hicache-storage-backend-extra-config``
#: (``HiRadixCache._parse_storage_backend_extra_config``): tokens, seconds, seconds per 1024 tokens.
PREFETCH_THRESHOLD = 256
PREFETCH_TIMEOUT_BASE_S = 1.0
PREFETCH_TIMEOUT_PER_KI_TOKEN_S = 0.25
#: The storage tier a plain backend runs on unless ``hicache_storage_tier`` names another.
DEFAULT_STORAGE_TIERS = {"file": "nfs", "mooncake": "mooncake"}


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
    enable_hierarchical_cache: bool = False
    hicache_ratio: float = 2.0  # host pool = ratio x device pool, unless hicache_size is given
    hicache_size: int = 0  # host pool in GB (1e9 bytes) per GPU; 0 = use hicache_ratio
    hicache_write_policy: str = HICACHE_WRITE_POLICIES[0]
    hicache_io_backend: str = HICACHE_IO_BACKENDS[0]
    hicache_mem_layout: str = HICACHE_MEM_LAYOUTS[0]
    hicache_storage_backend: str | None = None  # None: no L3 tier
    hicache_storage_prefetch_policy: str = HICACHE_PREFETCH_POLICIES[0]
    hicache_storage_backend_extra_config: str | None = None  # JSON, as SGLang takes it
    hicache_storage_tier: str | None = None  # kvsim: the tier of a plain (file/mooncake) store

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the resolved config (HiCache arguments only while it is enabled, storage
        arguments only while a storage backend is set)."""
        data = asdict(self)
        if not self.enable_hierarchical_cache:
            for key in HICACHE_ARGS:
                del data[key]
        if not self.enable_hierarchical_cache or self.hicache_storage_backend is None:
            for key in HICACHE_STORAGE_ARGS:
                del data[key]
        return data


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The resolved L3 storage tier of HiCache (``--hicache-storage-backend``).

    Attributes:
        backend: ``file``, ``mooncake`` or ``kvcm``.
        prefetch_policy: ``best_effort``, ``wait_complete`` or ``timeout``.
        prefetch_threshold: tokens; prefetches (and storage hits) shorter than this are not made. SGLang
            raises it to at least one page.
        prefetch_timeout_base_s: the ``timeout`` policy's fixed part.
        prefetch_timeout_per_page_s: its part per page (``page_size / 1024 x per_ki_token``).
        prefetch_capacity_tokens: host tokens that prefetches in flight may hold before new ones are
            refused (SGLang's ``prefetch_capacity_limit``: 80 % of the host pool beyond the device pool).
        tier: the storage tier of a plain store (None for ``kvcm``: each KVCM storage names its own).
        extra_config: the other keys of the extra config, as given (SGLang hands them to the backend).
    """

    backend: str
    prefetch_policy: str
    prefetch_threshold: int
    prefetch_timeout_base_s: float
    prefetch_timeout_per_page_s: float
    prefetch_capacity_tokens: int
    tier: str | None
    extra_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The resolved-config entries of the storage tier (the extra config itself is echoed as given,
        with the server arguments)."""
        data: dict[str, Any] = {
            "hicache_storage_backend": self.backend,
            "hicache_storage_prefetch_policy": self.prefetch_policy,
            "hicache_storage_prefetch_threshold": self.prefetch_threshold,
            "hicache_storage_prefetch_timeout_base_s": self.prefetch_timeout_base_s,
            "hicache_storage_prefetch_timeout_per_page_s": self.prefetch_timeout_per_page_s,
            "hicache_storage_prefetch_capacity_tokens": self.prefetch_capacity_tokens,
        }
        if self.tier is not None:
            data["hicache_storage_tier"] = self.tier
        return data


@dataclass(frozen=True, slots=True)
class HiCacheSettings:
    """The resolved hierarchical cache: a host (L2) pool of ``host_tokens`` slots behind the device pool.

    ``io_backend`` and ``mem_layout`` are the values SGLang runs with after correcting unsupported pairs.
    """

    host_tokens: int
    write_policy: str
    io_backend: str
    mem_layout: str
    storage: StorageSettings | None = None  # the L3 tier, None without a storage backend

    def to_dict(self) -> dict[str, Any]:
        """The resolved-config entries (they replace the corresponding ``--hicache-*`` arguments)."""
        data: dict[str, Any] = {
            "hicache_host_tokens": self.host_tokens,
            "hicache_write_policy": self.write_policy,
            "hicache_io_backend": self.io_backend,
            "hicache_mem_layout": self.mem_layout,
        }
        if self.storage is not None:
            data.update(self.storage.to_dict())
        return data


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
    hicache: HiCacheSettings | None = None  # None: no host tier (HiCache off, or the radix cache is)

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
        if self.hicache is not None:
            data.update(self.hicache.to_dict())
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
    hicache = resolve_hicache(args, pool, deployment.kv_bytes_per_token)
    return ResolvedServer(
        args=replace(args, mem_fraction_static=mem_fraction),
        max_total_tokens=pool,
        max_running_requests=max_running,
        chunked_prefill_size=chunk,
        mem_fraction_static=mem_fraction,
        context_len=context_len,
        # The predictor owns SGLang's CUDA-graph sizing (kvsim.perf.cuda_graph); echo what it uses.
        cuda_graph_max_bs=deployment.cuda_graph_max_bs or 0,
        hicache=hicache,
    )


def resolve_hicache(args: ServerArgs, device_tokens: int, kv_bytes_per_token: int) -> HiCacheSettings | None:
    """The host pool and corrected layout of ``--enable-hierarchical-cache``, or None when it is off.

    Rules (SGLang ``server_args.py`` ``_handle_hicache``, ``mem_cache/hiradix_cache.py``,
    ``mem_cache/memory_pool_host.py`` ``HostKVCache.__init__``):

    - ``--disable-radix-cache`` wins: SGLang then builds a ``ChunkCache`` and no host tier.
    - Host slots = ``hicache_size`` GB (1e9 bytes) / KV bytes per token when ``hicache_size > 0``, else
      ``hicache_ratio`` x the device pool; rounded down to whole pages; it must exceed the device pool.
    - ``page_first_direct`` needs the ``direct`` backend (the backend is switched), and ``direct`` cannot
      run ``page_first`` (the layout becomes ``page_first_direct``).
    - The ``mooncake`` storage backend cannot use ``layer_first``: it becomes ``page_first`` with the
      ``kernel`` backend and ``page_first_direct`` with ``direct`` (``_handle_hicache``).
    - A storage backend resolves into :class:`StorageSettings` (:func:`resolve_storage`).
    """
    if args.hicache_storage_backend is not None and (
        not args.enable_hierarchical_cache or args.disable_radix_cache
    ):
        raise UserInputError(
            "--hicache-storage-backend: needs --enable-hierarchical-cache and the radix cache "
            "(SGLang ignores the storage backend without them)"
        )
    if not args.enable_hierarchical_cache or args.disable_radix_cache:
        return None
    for name, value, choices in (
        ("write-policy", args.hicache_write_policy, HICACHE_WRITE_POLICIES),
        ("io-backend", args.hicache_io_backend, HICACHE_IO_BACKENDS),
        ("mem-layout", args.hicache_mem_layout, HICACHE_MEM_LAYOUTS),
    ):
        if value not in choices:
            raise UserInputError(f"--hicache-{name}: {value!r} is not one of {', '.join(choices)}")
    if args.hicache_size < 0:
        raise UserInputError(f"--hicache-size: must be >= 0 GB, got {args.hicache_size}")
    if args.hicache_size == 0 and args.hicache_ratio <= 0:
        raise UserInputError(f"--hicache-ratio: must be > 0, got {args.hicache_ratio}")
    if args.hicache_size > 0:
        host = int(args.hicache_size * 1e9 // kv_bytes_per_token)
        source = f"--hicache-size {args.hicache_size} GB"
    else:
        host = int(device_tokens * args.hicache_ratio)
        source = f"--hicache-ratio {args.hicache_ratio}"
    host -= host % args.page_size
    if host <= device_tokens:
        raise UserInputError(
            f"{source} gives a host pool of {host} tokens, not larger than the device pool of "
            f"{device_tokens}; SGLang requires the host pool to be larger"
        )
    layout, backend = args.hicache_mem_layout, args.hicache_io_backend
    if args.hicache_storage_backend == "mooncake" and layout == "layer_first":
        layout = "page_first_direct" if backend == "direct" else "page_first"
    if layout == "page_first_direct":
        backend = "direct"
    elif layout == "page_first" and backend == "direct":
        layout = "page_first_direct"
    storage = resolve_storage(args, device_tokens, host)
    return HiCacheSettings(host, args.hicache_write_policy, backend, layout, storage)


def _extra_config(text: str | None) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"--hicache-storage-backend-extra-config: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserInputError("--hicache-storage-backend-extra-config: expected a JSON object")
    return data


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserInputError(
            f"--hicache-storage-backend-extra-config: {name} must be a number, got {value!r}"
        )
    if value < 0:
        raise UserInputError(f"--hicache-storage-backend-extra-config: {name} must be >= 0, got {value}")
    return float(value)


def resolve_storage(args: ServerArgs, device_tokens: int, host_tokens: int) -> StorageSettings | None:
    """The L3 tier of ``--hicache-storage-backend``, or None without one.

    Rules (SGLang ``hiradix_cache.py`` ``_parse_storage_backend_extra_config``, ``cache_controller.py``
    ``HiCacheController.__init__``): the extra config is a JSON object whose keys ``prefetch_threshold``
    (int, 256 tokens), ``prefetch_timeout_base`` (1 s) and ``prefetch_timeout_per_ki_token`` (0.25 s) are
    taken out, the rest going to the backend; the threshold is at least one page; the timeout of a
    prefetch of ``n`` pages is ``base + n x page_size / 1024 x per_ki_token``; prefetches in flight may
    hold ``0.8 x (host tokens - device tokens)`` host slots.
    """
    backend = args.hicache_storage_backend
    if backend is None:
        if args.hicache_storage_tier is not None:
            raise UserInputError("--hicache-storage-tier: needs --hicache-storage-backend file or mooncake")
        return None
    if backend not in HICACHE_STORAGE_BACKENDS:
        raise UserInputError(
            f"--hicache-storage-backend: {backend!r} is not modelled; choose one of "
            f"{', '.join(HICACHE_STORAGE_BACKENDS)}"
        )
    policy = args.hicache_storage_prefetch_policy
    if policy not in HICACHE_PREFETCH_POLICIES:
        choices = ", ".join(HICACHE_PREFETCH_POLICIES)
        raise UserInputError(f"--hicache-storage-prefetch-policy: {policy!r} is not one of {choices}")
    extra = _extra_config(args.hicache_storage_backend_extra_config)
    threshold = extra.pop("prefetch_threshold", PREFETCH_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise UserInputError(
            f"--hicache-storage-backend-extra-config: prefetch_threshold must be an int, got {threshold!r}"
        )
    base = _number("prefetch_timeout_base", extra.pop("prefetch_timeout_base", PREFETCH_TIMEOUT_BASE_S))
    per_ki = _number(
        "prefetch_timeout_per_ki_token",
        extra.pop("prefetch_timeout_per_ki_token", PREFETCH_TIMEOUT_PER_KI_TOKEN_S),
    )
    page = args.page_size
    tier = args.hicache_storage_tier
    if backend == "kvcm":
        if tier is not None:
            raise UserInputError(
                "--hicache-storage-tier: the kvcm backend takes each storage's tier from the kvcm section"
            )
    elif tier is None:
        tier = DEFAULT_STORAGE_TIERS[backend]
    return StorageSettings(
        backend=backend,
        prefetch_policy=policy,
        prefetch_threshold=max(threshold, page),
        prefetch_timeout_base_s=base,
        prefetch_timeout_per_page_s=page / 1024 * per_ki,
        prefetch_capacity_tokens=int(0.8 * (host_tokens - device_tokens)),
        tier=tier,
        extra_config=extra,
    )
