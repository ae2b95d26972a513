"""What an executor runs: one simulation, turned into a plain JSON-able record.

:func:`run_task` is the only function a process pool or a Ray worker calls. It never raises for a
failing simulation: the error goes into the record (``status: failed``), so one bad configuration
costs one row, not the sweep. Records are plain dicts of JSON types, so they cross process and network
boundaries unchanged and read back from disk identically.

The simulator is named by an import string (``module:function``) rather than passed as an object, so a
task pickles to a small dict and a Ray worker on another machine imports the same function.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from kvsim.core.errors import KvsimError

#: Simulator of every run unless a sweep names another (tests pass stubs).
DEFAULT_SIMULATOR = "kvsim.sweep.worker:simulate_experiment"

#: ``simulate(config) -> (metrics, resources)``
Simulator = Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], Mapping[str, Any]]]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars, tuples and non-string keys turned into JSON types."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def simulate_experiment(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one experiment config (a fleet when it has a ``cluster:`` section); its metrics and the
    storage it provisions.

    Resources: ``l2_bytes`` (the HiCache host pools over all GPUs), ``l3_bytes`` and ``l3_tiers`` (the
    KVCM group quota on its storages' tiers, or what a plain store holds at the end of the run).
    """
    if config.get("cluster"):
        return _simulate_cluster(config)
    from kvsim.engines.experiment import run_experiment

    result = run_experiment(config)
    return dict(result.metrics), _resources(result.server, result.deployment, result.metrics, config)


def _simulate_cluster(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fleet (``kvsim.cluster``): its metrics, and its instances' resources added up.

    Every instance has its own host pool and its own L3 controller, so both are summed (a KVCM quota
    shared by the whole fleet would be counted once).
    """
    from kvsim.cluster import run_cluster

    result = run_cluster(config)
    metrics = dict(result.metrics)
    per_instance = metrics.get("instances") or []
    total: dict[str, Any] = {"l2_bytes": 0, "l3_bytes": 0, "l3_tiers": ""}
    for index, build in enumerate(result.builds):
        own = per_instance[index] if index < len(per_instance) else {}
        part = _resources(build.server, build.deployment, own, config)
        total["l2_bytes"] += part["l2_bytes"]
        total["l3_bytes"] += part["l3_bytes"]
        total["l3_tiers"] = total["l3_tiers"] or part["l3_tiers"]
    return metrics, total


def _resources(
    server: Any, deployment: Any, metrics: Mapping[str, Any], config: Mapping[str, Any]
) -> dict[str, Any]:
    """The bytes one engine provisions per storage level (see :func:`simulate_experiment`)."""
    per_token = deployment.kv_bytes_per_token * deployment.tp  # one token's KV over the TP group
    hicache = getattr(server, "hicache", None)
    l2 = 0 if hicache is None else int(hicache.host_tokens) * per_token
    l3_bytes, tiers = 0, ""
    storage = getattr(hicache, "storage", None) if hicache is not None else None
    if storage is not None:
        if storage.backend == "kvcm":
            from kvsim.engines.sglang.kvcm_store import parse_kvcm_section

            section = parse_kvcm_section(config.get("kvcm"))
            l3_bytes = section.quota_bytes
            tiers = ",".join(dict.fromkeys(s.tier.name for s in section.storages))
        else:
            stored = int(metrics.get("l3_stored_blocks") or 0)
            l3_bytes = stored * server.args.page_size * per_token
            tiers = storage.tier or ""
    return {"l2_bytes": l2, "l3_bytes": l3_bytes, "l3_tiers": tiers}


def _load(name: str) -> Simulator:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate ``task["config"]`` with ``task["simulator"]``; the record of the run, failed or not.

    Args:
        task: ``run_id``, ``config`` (a complete experiment config) and ``simulator`` (import string).

    Returns:
        ``run_id``, ``status`` (``ok``/``failed``), ``error`` (one line, None when ok), ``metrics``,
        ``resources``, ``wall_s`` and, for a failure, ``traceback``.
    """
    started = time.perf_counter()
    record: dict[str, Any] = {"run_id": task["run_id"]}
    try:
        metrics, resources = _load(task.get("simulator") or DEFAULT_SIMULATOR)(task["config"])
        record.update(status="ok", error=None, metrics=jsonable(metrics), resources=jsonable(resources))
    except Exception as exc:  # a failing run is a row, never the end of the sweep
        # kvsim's own errors carry a one-line message for users; others keep their type for debugging.
        message = str(exc) if isinstance(exc, KvsimError) else f"{type(exc).__name__}: {exc}"
        record.update(
            status="failed",
            error=message.splitlines()[0] if message else type(exc).__name__,
            metrics={},
            resources={},
            traceback=traceback.format_exc(),
        )
    record["wall_s"] = round(time.perf_counter() - started, 3)
    return record


def failed_record(run_id: str, error: str) -> dict[str, Any]:
    """The record of a run whose worker died before it could report (a crash, a lost Ray node)."""
    return {
        "run_id": run_id,
        "status": "failed",
        "error": error,
        "metrics": {},
        "resources": {},
        "wall_s": None,
    }
