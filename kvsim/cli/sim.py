"""``kvsim sim``: replay a workload against a simulated SGLang server and print bench_serving's report.

Flags carry the names of ``sglang.bench_serving`` (workload) and ``sglang.launch_server`` (server). They
override a ``--config`` experiment file, which overrides the packaged default experiment.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from kvsim.cli.step_time import add_model_arguments
from kvsim.engines.config_keys import SERVER_KEYS, WORKLOAD_KEYS

DATASET_CHOICES = ("random", "random-ids", "generated-shared-prefix", "mooncake")

#: Server keys of an experiment file that have a flag of the same name (the scheduler CPU-time
#: estimates are set in the file only).
_SERVER_FLAGS = tuple(k for k in SERVER_KEYS if not k.startswith("scheduler_cpu_"))
_SERVER_FLAGS = (
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
    "schedule_policy",
    "schedule_conservativeness",
    "cuda_graph_max_bs",
    "disable_overlap_schedule",
    "enable_mixed_chunk",
    "disable_radix_cache",
    "sglang_version",
    "enable_hierarchical_cache",
    "hicache_ratio",
    "hicache_size",
    "hicache_write_policy",
    "hicache_io_backend",
    "hicache_mem_layout",
    "hicache_storage_backend",
    "hicache_storage_prefetch_policy",
    "hicache_storage_backend_extra_config",
    "hicache_storage_tier",
)
#: Every workload key of an experiment file has a flag of the same name.
_WORKLOAD_FLAGS = WORKLOAD_KEYS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags (all default to None so only given flags override)."""
    add_model_arguments(parser)
    # The shared helper sets defaults; here None means "take it from the config".
    parser.set_defaults(model=None, gpu=None, tp=None, dtype=None, kv_cache_dtype=None)
    server = parser.add_argument_group("server (sglang.launch_server)")
    server.add_argument("--mem-fraction-static", type=float)
    server.add_argument("--max-total-tokens", type=int)
    server.add_argument("--chunked-prefill-size", type=int, help="-1 disables chunked prefill")
    server.add_argument("--max-prefill-tokens", type=int)
    server.add_argument("--max-running-requests", type=int)
    server.add_argument("--page-size", type=int)
    server.add_argument("--schedule-policy", help="fcfs (default), lpm, dfs-weight, lof or random")
    server.add_argument("--schedule-conservativeness", type=float)
    server.add_argument("--cuda-graph-max-bs", type=int)
    server.add_argument("--disable-overlap-schedule", action="store_true", default=None)
    server.add_argument("--enable-mixed-chunk", action="store_true", default=None)
    server.add_argument("--disable-radix-cache", action="store_true", default=None)
    server.add_argument("--sglang-version", help="SGLang version whose rules are modelled (0.5.6.post2)")
    hicache = parser.add_argument_group("hierarchical cache (sglang.launch_server HiCache)")
    hicache.add_argument(
        "--enable-hierarchical-cache",
        action="store_true",
        default=None,
        help="back the device KV cache with a host-memory (L2) tier",
    )
    hicache.add_argument("--hicache-ratio", type=float, help="host pool / device pool (default 2.0)")
    hicache.add_argument("--hicache-size", type=int, help="host pool in GB per GPU; overrides the ratio")
    # Choices are checked when the server resolves (kvsim.engines.sglang.config), not imported here.
    hicache.add_argument(
        "--hicache-write-policy", help="write_through (default), write_through_selective or write_back"
    )
    hicache.add_argument("--hicache-io-backend", help="kernel (default) or direct")
    hicache.add_argument(
        "--hicache-mem-layout", help="layer_first (default), page_first or page_first_direct"
    )
    hicache.add_argument(
        "--hicache-storage-backend",
        help="L3 storage tier: file or mooncake (plain stores), or kvcm (Tair KVCM; configure it in the "
        "experiment file's kvcm: section)",
    )
    hicache.add_argument(
        "--hicache-storage-prefetch-policy", help="best_effort (default), wait_complete or timeout"
    )
    hicache.add_argument(
        "--hicache-storage-backend-extra-config",
        help="JSON; prefetch_threshold (256 tokens), prefetch_timeout_base (1 s) and "
        "prefetch_timeout_per_ki_token (0.25 s) are used, e.g. '{\"prefetch_threshold\": 512}'",
    )
    hicache.add_argument(
        "--hicache-storage-tier",
        help="kvsim: storage tier of a file/mooncake store (nfs, 3fs, mooncake, host_dram, hisim_disk; "
        "default nfs for file, mooncake for mooncake)",
    )
    workload = parser.add_argument_group("workload (sglang.bench_serving)")
    workload.add_argument("--dataset-name", choices=DATASET_CHOICES)
    workload.add_argument("--dataset-path", help="trace file for --dataset-name mooncake")
    workload.add_argument("--num-prompts", type=int)
    workload.add_argument("--random-input-len", type=int)
    workload.add_argument("--random-output-len", type=int)
    workload.add_argument("--random-range-ratio", type=float)
    workload.add_argument("--gsp-num-groups", type=int)
    workload.add_argument("--gsp-prompts-per-group", type=int)
    workload.add_argument("--gsp-system-prompt-len", type=int)
    workload.add_argument("--gsp-question-len", type=int)
    workload.add_argument("--gsp-output-len", type=int)
    workload.add_argument("--request-rate", help="requests per second (Poisson), or inf")
    workload.add_argument("--max-concurrency", type=int)
    workload.add_argument("--mooncake-slowdown-factor", type=float)
    workload.add_argument("--seed", type=int)
    cluster = parser.add_argument_group("cluster (kvsim: a fleet of engines behind a router)")
    cluster.add_argument(
        "--instances",
        type=int,
        help="simulate a fleet of N engines with these server settings (cluster.instances)",
    )
    cluster.add_argument(
        "--router", help="round_robin (default), least_load, session_affinity or cache_aware (cluster.router)"
    )
    cluster.add_argument(
        "--pd",
        metavar="P:D",
        help="PD disaggregation: P prefill and D decode instances, e.g. 2:2 (cluster.pd's counts; the "
        "file's other cluster.pd settings are kept)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", help="run directory (default runs/sim-<timestamp>)")
    run.add_argument(
        "--config", help="experiment YAML (sections model, gpu, server, workload, output, kvcm, cluster)"
    )
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument(
        "--hisim-file-aliases",
        action="store_true",
        help="also write request.jsonl and iteration.jsonl (HiSim's names) as copies of the logs",
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config sections the given flags override."""
    overrides: dict[str, Any] = {}
    if args.model is not None:
        overrides["model"] = args.model
    if args.gpu is not None:
        overrides["gpu"] = args.gpu
    server = {k: getattr(args, k) for k in _SERVER_FLAGS if getattr(args, k) is not None}
    workload = {k: getattr(args, k) for k in _WORKLOAD_FLAGS if getattr(args, k) is not None}
    if workload.get("request_rate") is not None:
        workload["request_rate"] = _rate(workload["request_rate"])
    output: dict[str, Any] = {}
    if args.output_dir is not None:
        output["output_dir"] = args.output_dir
    if args.no_plots:
        output["plots"] = False
    if getattr(args, "hisim_file_aliases", False):
        output["hisim_file_aliases"] = True
    cluster = {
        key: getattr(args, key) for key in ("instances", "router") if getattr(args, key, None) is not None
    }
    for section, body in (
        ("server", server),
        ("workload", workload),
        ("output", output),
        ("cluster", cluster),
    ):
        if body:
            overrides[section] = body
    return overrides


def apply_pd_flag(config: dict[str, Any], text: str) -> None:
    """Set ``cluster.pd``'s instance counts from ``--pd P:D``, keeping the section's other keys."""
    from kvsim.core.errors import UserInputError

    parts = text.split(":")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) >= 1 for part in parts):
        raise UserInputError(f"--pd: expected P:D with two counts >= 1, e.g. 2:2, got {text!r}")
    cluster = config.get("cluster") or {}
    pd = dict(cluster.get("pd") or {})
    pd.update(prefill_instances=int(parts[0]), decode_instances=int(parts[1]))
    config["cluster"] = {**cluster, "pd": pd}


def _rate(text: str) -> float | str:
    from kvsim.core.errors import UserInputError

    if text.strip().lower() in ("inf", "infinity"):
        return "inf"
    try:
        value = float(text)
    except ValueError:
        raise UserInputError(f"--request-rate: {text!r} is not a number or inf") from None
    if not value > 0:
        raise UserInputError(f"--request-rate: must be > 0, got {text}")
    return value


class _Progress:
    """A progress bar on stderr that appears only once a run has taken more than a second."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int) -> None:
        if self._bar is None:
            if time.monotonic() - self.started < 1.0 or not sys.stderr.isatty():
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                "simulating",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("requests", total=self.total)
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run(args: argparse.Namespace) -> int:
    """Resolve the config, simulate, write the run directory, print the report."""
    import yaml

    from kvsim.engines.experiment import report, resolve_config, write_run

    config = resolve_config(args.config, overrides_from_args(args))
    if getattr(args, "pd", None) is not None:
        apply_pd_flag(config, args.pd)
    if args.print_config:
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    output = config.get("output") or {}
    output_dir = output.get("output_dir") or f"runs/sim-{time.strftime('%Y%m%d-%H%M%S')}"
    workload = config.get("workload") or {}
    progress = _Progress(int(workload.get("num_prompts") or 0))
    if config.get("cluster"):
        # Only experiments with a cluster: section (or --instances/--router) take the fleet path.
        from kvsim.cluster.output import cluster_report, write_cluster_run

        try:
            fleet, run_dir = write_cluster_run(
                config,
                Path(output_dir),
                plots=bool(output.get("plots", True)),
                on_finish=progress,
                wall_clock=time.perf_counter,
            )
        finally:
            progress.close()
        print(cluster_report(fleet))
        print(f"run directory: {run_dir}")
        return 0
    try:
        result, run_dir = write_run(
            config,
            Path(output_dir),
            plots=bool(output.get("plots", True)),
            on_finish=progress,
            wall_clock=time.perf_counter,
        )
    finally:
        progress.close()
    print(report(result))
    print(f"run directory: {run_dir}")
    return 0
