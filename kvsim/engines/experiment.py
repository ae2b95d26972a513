"""Experiments: a config (YAML sections ``model``, ``gpu``, ``server``, ``workload``, ``output`` and, for the
KVCM storage backend, ``kvcm``) resolved into a simulated SGLang run, and the run directory it writes.
A ``cluster`` section is validated here but run by :mod:`kvsim.cluster` (a fleet of these engines).

Resolution order, lowest first: the packaged default experiment < a ``--config`` file < explicit flags
(or a dict of overrides from a notebook). Unknown keys are refused with the list of valid ones.
``run_experiment`` returns a :class:`SimResult` in memory; ``write_run`` writes ``metrics.json``,
``requests.jsonl``, ``iterations.jsonl``, ``config.resolved.yaml``, ``run.json`` and the plots (and, with
``output.hisim_file_aliases``, copies of the two logs under HiSim's names ``request.jsonl`` and
``iteration.jsonl``). With HiCache, ``metrics.json`` also gets :func:`hicache_metrics`; with an L3
storage backend :func:`l3_metrics`, and with the ``kvcm`` backend the run directory also holds KVCM's
event log, ``kvcm_events.jsonl`` (the reference's publisher format, replayable by ``kvsim optimize``).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kvsim import __version__
from kvsim.cache.events import EventSink, JsonlFileSink
from kvsim.cache.health import ProbeSettings
from kvsim.core.errors import ConfigError, UserInputError
from kvsim.core.rng import spawn_rng
from kvsim.engines.config_keys import (
    CLUSTER_KEYS,
    OUTPUT_KEYS,
    SECTIONS,
    SERVER_KEYS,
    WORKLOAD_KEYS,
)
from kvsim.engines.driver import DriverStats, EngineDriver
from kvsim.engines.sglang.config import (
    ResolvedServer,
    ServerArgs,
    resolve_server,
)
from kvsim.engines.sglang.faults import NO_FAULTS, FaultPlan, check_storages, parse_faults
from kvsim.engines.sglang.hicache import HiCacheKVPool, TransferModel
from kvsim.engines.sglang.kvcm_store import KVCM_KEYS, KvcmSection, KvcmStore, parse_kvcm_section
from kvsim.engines.sglang.page_keys import PageKeyCache
from kvsim.engines.sglang.scheduler import SGLangScheduler
from kvsim.engines.sglang.storage import L3Controller, L3Store, PlainStore
from kvsim.hardware.storage import load_storage_tier
from kvsim.metrics import (
    ITERATIONS_FILE,
    REQUESTS_FILE,
    IterationLogWriter,
    IterationRecord,
    RequestRecord,
    format_report,
    summarize,
    write_metrics,
    write_requests,
)
from kvsim.perf.predictor import Deployment, StepTimePredictor
from kvsim.workloads import build_workload
from kvsim.workloads.base import Workload

#: KVCM's event log in a run directory (``--hicache-storage-backend kvcm``).
KVCM_EVENTS_FILE = "kvcm_events.jsonl"
#: HiSim's names for the two logs, written as copies when ``output.hisim_file_aliases`` is set.
HISIM_FILE_ALIASES = {REQUESTS_FILE: "request.jsonl", ITERATIONS_FILE: "iteration.jsonl"}


def default_config() -> dict[str, Any]:
    """The packaged default experiment (Qwen3-8B on an H20 serving a shared-prefix workload)."""
    text = (resources.files("kvsim.engines") / "default_experiment.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML file; a missing file or bad YAML is a one-line error naming the path."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{where}: invalid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping with sections {', '.join(SECTIONS)}")
    return data


def _check_keys(config: Mapping[str, Any], where: str) -> None:
    for section in config:
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    allowed = {
        "server": SERVER_KEYS,
        "workload": WORKLOAD_KEYS,
        "output": OUTPUT_KEYS,
        "kvcm": KVCM_KEYS,
        "cluster": CLUSTER_KEYS,
    }
    for section, keys in allowed.items():
        body = config.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping")
        for key in body:
            if key not in keys:
                raise ConfigError(f"{where}: unknown key {section}.{key}; valid: {', '.join(keys)}")
    for section in ("model", "gpu"):
        if section in config and not isinstance(config[section], str):
            raise ConfigError(f"{where}: {section} must be a name, e.g. {section}: Qwen3-8B")


def merge_config(base: dict[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Return ``base`` with ``override``'s sections merged key by key (override wins)."""
    _check_keys(override, where)
    merged = copy.deepcopy(base)
    for section, body in override.items():
        if isinstance(body, dict):
            merged.setdefault(section, {}).update(body)
        else:
            merged[section] = body
    return merged


def resolve_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Default experiment < config file < overrides, validated key by key."""
    config = default_config()
    if config_file is not None:
        config = merge_config(config, load_config_file(config_file), str(config_file))
    if overrides:
        config = merge_config(config, overrides, "flags")
    return config


@dataclass(slots=True)
class SimResult:
    """Everything a simulated run produced, in memory."""

    config: dict[str, Any]
    server: ResolvedServer
    deployment: Deployment
    workload: Workload
    records: list[RequestRecord]
    metrics: dict[str, Any]
    stats: DriverStats
    num_retractions: int
    #: the storage tier's controller (its store holds KVCM and its event log), None without one
    l3: L3Controller | None = None


def _server_args(server: Mapping[str, Any]) -> ServerArgs:
    fields = {k: server[k] for k in ServerArgs.__dataclass_fields__ if k in server and server[k] is not None}
    return ServerArgs(**fields)


def _request_rate(value: Any) -> float:
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity"):
            return math.inf
        try:
            return float(value)
        except ValueError:
            raise UserInputError(f"--request-rate: {value!r} is not a number or inf") from None
    return float(value)


@dataclass(slots=True)
class EngineBuild:
    """One simulated engine, built from a resolved config but not yet run (shared by ``kvsim.cluster``)."""

    server_cfg: dict[str, Any]
    server: ResolvedServer
    deployment: Deployment
    workload: Workload
    scheduler: SGLangScheduler
    predictor: StepTimePredictor
    kvcm_section: KvcmSection
    #: the client's ``--max-concurrency`` (None: unlimited)
    max_concurrency: int | None
    l3: L3Controller | None = None


def build_engine(
    config: Mapping[str, Any],
    *,
    workload: Workload | None = None,
    kvcm_events: EventSink | None = None,
) -> EngineBuild:
    """Resolve ``config`` into one engine's scheduler and step-time predictor (and the workload, unless
    given); :func:`run_experiment` drives one of these, a cluster drives several."""
    server_cfg = dict(config.get("server") or {})
    args = _server_args(server_cfg)
    deployment = Deployment.create(
        config["model"],
        config["gpu"],
        int(server_cfg.get("tp", 1)),
        server_cfg.get("dtype") or "auto",
        server_cfg.get("quantization"),
        server_cfg.get("kv_cache_dtype") or "auto",
        cuda_graph_max_bs=args.cuda_graph_max_bs,
    )
    server = resolve_server(args, deployment)
    wl_cfg = dict(config.get("workload") or {})
    max_concurrency = wl_cfg.pop("max_concurrency", None)
    if max_concurrency is not None and int(max_concurrency) <= 0:
        raise UserInputError(f"--max-concurrency: must be > 0, got {max_concurrency}")
    if workload is None:
        dataset = wl_cfg.pop("dataset_name")
        if "request_rate" in wl_cfg:
            wl_cfg["request_rate"] = _request_rate(wl_cfg["request_rate"])
        wl_cfg = {k: v for k, v in wl_cfg.items() if v is not None}
        workload = build_workload(dataset, max_context_len=server.context_len, **wl_cfg)
    if not workload.requests:
        raise UserInputError("the workload has no requests")
    seed = int((config.get("workload") or {}).get("seed") or 0)
    # The kvcm section is checked even when another backend runs, so that a typo never waits for the
    # run that would use it.
    kvcm_section = parse_kvcm_section(config.get("kvcm"))
    faults = parse_faults(config.get("faults"))
    transfer = None
    if server.hicache is not None:
        transfer = TransferModel.for_deployment(deployment, server.hicache, server.args.page_size)
    l3 = None
    if server.hicache is not None and server.hicache.storage is not None:
        l3 = _l3_controller(server, deployment, workload, kvcm_section, seed, kvcm_events, faults)
    elif faults:
        raise ConfigError("faults: scripted storage faults need an L3 storage (--hicache-storage-backend)")
    scheduler = SGLangScheduler(server, spawn_rng(seed, "scheduler"), transfer, l3)
    if workload.name == "mooncake" and 512 % server.args.page_size:
        raise UserInputError(
            f"--page-size {server.args.page_size} does not divide the Mooncake trace's 512-token blocks"
        )
    return EngineBuild(
        server_cfg,
        server,
        deployment,
        workload,
        scheduler,
        StepTimePredictor(deployment),
        kvcm_section,
        None if max_concurrency is None else int(max_concurrency),
        l3,
    )


def engine_metrics(build: EngineBuild, records: list[RequestRecord], stats: DriverStats) -> dict[str, Any]:
    """``metrics.json`` of one engine's run: bench_serving's summary plus the engine's own counters.

    ``records`` must be sorted by request id.
    """
    scheduler = build.scheduler
    metrics = summarize(records, truncated_requests=build.workload.truncated_requests, start_s=0.0)
    metrics["num_retractions"] = scheduler.num_retractions
    metrics["prefill_steps"] = stats.prefill_steps
    metrics["decode_steps"] = stats.decode_steps
    metrics["max_total_tokens"] = build.server.max_total_tokens
    if scheduler.hicache is not None:
        metrics.update(hicache_metrics(records, scheduler.hicache))
    if build.l3 is not None:
        metrics.update(l3_metrics(records, build.l3))
    return metrics


def resolved_config(config: Mapping[str, Any], build: EngineBuild) -> dict[str, Any]:
    """``config`` with the server settings the engine derived (``config.resolved.yaml``)."""
    resolved = copy.deepcopy(dict(config))
    resolved["server"] = {**build.server_cfg, **build.server.to_dict(), "tp": build.deployment.tp}
    if build.l3 is not None and isinstance(build.l3.store, KvcmStore):
        resolved["kvcm"] = build.kvcm_section.to_dict()
    return resolved


def run_experiment(
    config: Mapping[str, Any],
    *,
    iteration_log: IterationLogWriter | None = None,
    on_finish: Callable[[int], None] | None = None,
    workload: Workload | None = None,
    kvcm_events: EventSink | None = None,
) -> SimResult:
    """Simulate one resolved experiment config; deterministic for a given config.

    ``kvcm_events`` receives KVCM's event log when the storage backend is ``kvcm`` (e.g. a
    :class:`~kvsim.cache.events.MemorySink` to keep it in memory); the log is dropped when None.
    """
    build = build_engine(config, workload=workload, kvcm_events=kvcm_events)
    driver = EngineDriver(
        build.scheduler,
        build.predictor,
        build.workload,
        max_concurrency=build.max_concurrency,
        iteration_log=iteration_log,
        on_finish=on_finish,
    )
    stats = driver.run()
    if build.l3 is not None:
        build.l3.close()
    records = sorted(stats.records, key=lambda r: r.request_id)
    metrics = engine_metrics(build, records, stats)
    return SimResult(
        resolved_config(config, build),
        build.server,
        build.deployment,
        build.workload,
        records,
        metrics,
        stats,
        build.scheduler.num_retractions,
        build.l3,
    )


def _l3_controller(
    server: ResolvedServer,
    deployment: Deployment,
    workload: Workload,
    section: KvcmSection,
    seed: int,
    sink: EventSink | None,
    faults: FaultPlan = NO_FAULTS,
) -> L3Controller:
    """The storage tier of ``server``: its store (KVCM registered with this engine, or a plain store on
    its tier), the workload's page keys, the bytes one page moves over all TP ranks, and the scripted
    faults (with KVCM, the manager then probes its storages every ``faults.probe_period``)."""
    assert server.hicache is not None and server.hicache.storage is not None
    settings = server.hicache.storage
    page = server.args.page_size
    spec_bytes = page * deployment.kv_bytes_per_token  # one TP rank's share of a page
    page_bytes = spec_bytes * deployment.tp
    store: L3Store
    if settings.backend == "kvcm":
        store = KvcmStore(
            section,
            page,
            spec_bytes,
            deployment.tp,
            (deployment.model.name, deployment.precision.kv_cache_dtype),
            spawn_rng(seed, "kvcm"),
            sink,
            # Availability only: the tiers' capacities already bound what KVCM writes, so the water
            # levels stay at 100 % and the run differs from a fault-free one only by the faults.
            ProbeSettings(period_s=faults.probe_period_s, high_water=1.0, reclaim_water=1.0)
            if faults
            else None,
        )
    else:
        assert settings.tier is not None
        store = PlainStore(settings.backend, load_storage_tier(settings.tier), page_bytes)
    keys = PageKeyCache({r.request_id: r.token_ids for r in workload.requests}, page)
    controller = L3Controller(settings, store, keys, page_bytes)
    if faults:
        check_storages(faults, store.storage_names())
        controller.schedule_faults(faults)
    return controller


def l3_metrics(records: list[RequestRecord], l3: L3Controller) -> dict[str, Any]:
    """The storage tier's run summary.

    ``l3_hit_ratio``: prompt tokens that a request's own prefetch brought from storage and that it then
    used as cache (loaded back from host) / prompt tokens. ``l3_prefetch_ratio``: tokens prefetched from
    storage / prompt tokens (HiSim's ``disk_prefetch_ratio``). The rest are the controller's and the
    store's totals (``l3_*_blocks`` count pages, KVCM's blocks).
    """
    prompt = sum(r.input_len for r in records)
    used = sum(r.cached_tokens_storage or 0 for r in records)
    fetched = sum(r.prefetched_tokens or 0 for r in records)
    data: dict[str, Any] = {
        "l3_hit_ratio": used / prompt if prompt else 0.0,
        "l3_prefetch_ratio": fetched / prompt if prompt else 0.0,
    }
    data.update(l3.metrics())
    return data


def hicache_metrics(records: list[RequestRecord], pool: HiCacheKVPool) -> dict[str, Any]:
    """HiCache's run summary: prompt shares served from cache, from host memory, and the L2 traffic.

    ``prefix_cache_reused_ratio`` is HiSim's (cached prompt tokens / prompt tokens, both tiers) and
    ``l2_hit_ratio`` its host part (prompt tokens loaded back from host / prompt tokens).
    """
    prompt = sum(r.input_len for r in records)
    cached = sum(r.cached_tokens for r in records)
    host = sum(r.cached_tokens_host or 0 for r in records)
    return {
        "prefix_cache_reused_ratio": cached / prompt if prompt else 0.0,
        "l2_hit_ratio": host / prompt if prompt else 0.0,
        "hicache_host_tokens": pool.host_tokens,
        "l2_loaded_tokens": pool.loaded_tokens,
        "l2_backed_up_tokens": pool.backed_up_tokens,
        "l2_evicted_tokens": pool.host_evicted_tokens,
        "l2_copy_source": pool.transfer.source,
    }


@contextmanager
def staged_run_dir(
    output_dir: str | Path, wall_clock: Callable[[], float] | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Stage a run directory: outputs go to a sibling temporary folder that replaces ``output_dir`` only
    when the body finishes, so a directory with a ``run.json`` is always a finished run and a failed run
    leaves nothing behind.

    Yields the staging folder and a dict the body fills with ``simulated_duration_s``; ``run.json`` (kvsim
    version, wall time, simulated duration) is written on success.
    """
    target = Path(output_dir)
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    started = wall_clock() if wall_clock else 0.0
    info: dict[str, Any] = {"simulated_duration_s": None}
    try:
        yield staging, info
        run_info = {
            "kvsim_version": __version__,
            "wall_time_s": round((wall_clock() - started), 3) if wall_clock else None,
            "simulated_duration_s": info["simulated_duration_s"],
        }
        (staging / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def write_run(
    config: Mapping[str, Any],
    output_dir: str | Path,
    *,
    plots: bool = True,
    on_finish: Callable[[int], None] | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> tuple[SimResult, Path]:
    """Run the experiment and write its run directory; nothing is left behind if the run fails.

    Outputs are written into a sibling temporary folder and moved into place only when complete, so a
    directory with a ``run.json`` is always a finished run.
    """
    with staged_run_dir(output_dir, wall_clock) as (staging, info):
        server = config.get("server") or {}
        events = (
            JsonlFileSink(staging / KVCM_EVENTS_FILE)
            if server.get("hicache_storage_backend") == "kvcm"
            else None
        )
        with IterationLogWriter(staging / ITERATIONS_FILE) as log:
            try:
                result = run_experiment(config, iteration_log=log, on_finish=on_finish, kvcm_events=events)
            finally:
                if events is not None:
                    events.close()
        write_metrics(staging, result.metrics)
        write_requests(staging, result.records, include_token_times=False)
        if (config.get("output") or {}).get("hisim_file_aliases"):
            for name, alias in HISIM_FILE_ALIASES.items():
                shutil.copyfile(staging / name, staging / alias)
        (staging / "config.resolved.yaml").write_text(
            yaml.safe_dump(result.config, sort_keys=False), encoding="utf-8"
        )
        if plots:
            from kvsim.metrics.plots import RunData, plot_run

            # The queue plot needs only times and queue lengths: no need to re-read the step log.
            steps = [
                IterationRecord(t, "decode", (), 0.0, running, waiting)
                for t, running, waiting in result.stats.timeline
            ]
            plot_run(RunData(result.records, steps), staging)
        info["simulated_duration_s"] = result.metrics.get("duration")
    return result, Path(output_dir)


def report(result: SimResult) -> str:
    """The bench_serving-style table of a run."""
    wl = result.config.get("workload") or {}
    # Trace replays follow the trace's own timestamps; the rate flag does not apply to them.
    rate = "trace" if wl.get("dataset_name") == "mooncake" else wl.get("request_rate")
    return format_report(
        result.metrics,
        request_rate=rate,
        max_concurrency=wl.get("max_concurrency"),
    )
