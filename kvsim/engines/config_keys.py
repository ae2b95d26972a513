"""The keys an experiment file may hold, section by section.

Kept apart from :mod:`kvsim.engines.experiment` so that the command line can list its flags without
importing the simulator (``kvsim step-time`` never pays for simpy).
"""

from __future__ import annotations

from kvsim.engines.sglang.config import HICACHE_ARGS, HICACHE_STORAGE_ARGS

SECTIONS = ("model", "gpu", "server", "workload", "output", "kvcm", "cluster", "faults")
SERVER_KEYS = (
    "tp",
    "dtype",
    "quantization",
    "kv_cache_dtype",
    "mem_fraction_static",
    "max_total_tokens",
    "chunked_prefill_size",
    "max_prefill_tokens",
    "max_running_requests",
    "page_size",
    "schedule_conservativeness",
    "disable_radix_cache",
    "schedule_policy",
    "cuda_graph_max_bs",
    "disable_overlap_schedule",
    "enable_mixed_chunk",
    "sglang_version",
    "scheduler_cpu_base_ms",
    "scheduler_cpu_per_request_us",
    *HICACHE_ARGS,
    *HICACHE_STORAGE_ARGS,
)
WORKLOAD_KEYS = (
    "dataset_name",
    "dataset_path",
    "num_prompts",
    "random_input_len",
    "random_output_len",
    "random_range_ratio",
    "gsp_num_groups",
    "gsp_prompts_per_group",
    "gsp_system_prompt_len",
    "gsp_question_len",
    "gsp_output_len",
    "request_rate",
    "max_concurrency",
    "mooncake_slowdown_factor",
    "seed",
)
OUTPUT_KEYS = ("output_dir", "plots", "hisim_file_aliases")
#: The ``cluster:`` section (run by :mod:`kvsim.cluster`; an experiment without it is one engine).
CLUSTER_KEYS = (
    "instances",
    "router",
    "router_params",
    "instance_overrides",
    "kvcm_scope",
    "shared_tiers",
    "pd",
)
