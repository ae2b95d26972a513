"""A fleet's run directory: the single-engine files plus the router's decisions and per-instance plots.

``metrics.json`` holds the fleet's fields (as ``kvsim sim`` writes them, over all requests) plus
``router`` and an ``instances`` list; each ``requests.jsonl`` line gains ``instance``, the index the
router chose; each ``iterations.jsonl`` line carries ``extra.instance``; ``cluster_instances.png``
shows each instance's queue over time, its busy share and its prefix-cache hit rate.

A PD fleet's ``requests.jsonl`` lines carry ``prefill_instance`` and ``decode_instance`` instead of
``instance``, plus the request's PD timeline (:meth:`kvsim.cluster.pd_fleet.PDRequest.to_json`); its
instances are labelled ``P`` or ``D`` in the plot and the report, and a prefill instance's hit rate is
that of the prompts it computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from kvsim.cache.events import JsonlFileSink
from kvsim.cluster.fleet import ClusterResult, instance_config, parse_cluster_section, run_cluster
from kvsim.engines.experiment import KVCM_EVENTS_FILE, staged_run_dir
from kvsim.metrics import ITERATIONS_FILE, REQUESTS_FILE, IterationLogWriter, format_report, write_metrics
from kvsim.metrics.plots import LATENCY_CDF_PNG, THROUGHPUT_PNG, plot_latency_cdf, plot_throughput
from kvsim.metrics.writers import LOG_DECIMALS, write_requests

CLUSTER_PNG = "cluster_instances.png"


def write_cluster_requests(path: Path, result: ClusterResult) -> Path:
    """``requests.jsonl`` with each line's ``instance`` (the router's choice), keys still sorted; a PD
    fleet's lines get the request's prefill and decode instance and its PD timeline instead."""
    write_requests(path, result.records, include_token_times=False)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if result.pd is not None:
        path.write_text("".join(_pd_line(line, result) for line in lines), encoding="utf-8")
        return path
    out = []
    for line, record in zip(lines, result.records, strict=True):
        # "instance" sorts between "input_len" and "output_len"; every line has both keys.
        out.append(
            line.replace(
                '"output_len":', f'"instance":{result.assignments[record.request_id]},"output_len":', 1
            )
        )
    path.write_text("".join(out), encoding="utf-8")
    return path


def _pd_line(line: str, result: ClusterResult) -> str:
    """One ``requests.jsonl`` line with its PD fields added (numbers rounded as the writer rounds)."""
    row = json.loads(line)
    for key, value in result.pd.requests[row["request_id"]].to_json().items():
        row[key] = round(value, LOG_DECIMALS) + 0.0 if isinstance(value, float) else value
    return json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"


def _labels(result: ClusterResult) -> list[str]:
    """``#i`` per instance, with ``P``/``D`` for a PD fleet's prefill and decode instances."""
    roles = result.pd.roles if result.pd is not None else None
    return [f"#{i}" if roles is None else f"#{i} {roles[i][0].upper()}" for i in range(len(result.stats))]


def plot_instances(result: ClusterResult, path: Path) -> Path:
    """Draw each instance's running+waiting requests over time, busy share and prefix-cache hit rate."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    ax_queue, ax_bars = fig.subplots(2, 1)
    ax_queue.set_title("Requests running + waiting per instance")
    ax_queue.set_xlabel("time (s)")
    ax_queue.set_ylabel("requests")
    ax_queue.grid(True, alpha=0.3)
    labels = _labels(result)
    for index, stat in enumerate(result.stats):
        if stat.timeline:
            times = np.array([t for t, _, _ in stat.timeline], dtype=np.float64)
            load = np.array([r + w for _, r, w in stat.timeline], dtype=np.int64)
            ax_queue.plot(times, load, drawstyle="steps-post", linewidth=0.8, label=labels[index])
    if len(result.stats) <= 16:
        ax_queue.legend(loc="upper right", fontsize="x-small", ncol=4)
    instances = result.metrics["instances"]
    x = np.arange(len(instances))
    busy = [entry["busy_fraction"] for entry in instances]
    hits = [_hit_rate(result, index) for index in range(len(instances))]
    width = 0.4
    ax_bars.bar(x - width / 2, busy, width, label="busy share of the run")
    ax_bars.bar(x + width / 2, hits, width, label="prefix-cache hit rate (cached / prompt tokens)")
    ax_bars.set_xticks(x, labels)
    ax_bars.set_ylim(0, 1.05)
    ax_bars.set_xlabel("instance")
    ax_bars.set_title(f"Load and hit rate per instance (router: {result.section.router})")
    ax_bars.grid(True, axis="y", alpha=0.3)
    ax_bars.legend(loc="upper right", fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def _hit_rate(result: ClusterResult, index: int) -> float:
    """Cached prompt tokens over prompt tokens of the requests sent to instance ``index`` (in a PD
    fleet: of the prompts a prefill instance computed; a decode instance has no cache)."""
    records = result.stats[index].records
    if result.pd is not None:
        if result.pd.roles[index] == "decode":
            return 0.0
        records = [r for r in result.records if result.pd.requests[r.request_id].prefill_instance == index]
    prompt = sum(r.input_len for r in records)
    return sum(r.cached_tokens for r in records) / prompt if prompt else 0.0


def kvcm_events_file(index: int) -> str:
    """The event log of instance ``index``'s own KVCM manager in a local fleet's run directory."""
    return f"kvcm_events.instance{index}.jsonl"


def write_cluster_run(
    config: Mapping[str, Any],
    output_dir: str | Path,
    *,
    plots: bool = True,
    on_finish: Callable[[int], None] | None = None,
    wall_clock: Callable[[], float] | None = None,
) -> tuple[ClusterResult, Path]:
    """Run the fleet and write its run directory; nothing is left behind if the run fails (staged as
    :func:`kvsim.engines.experiment.write_run` stages a single engine's)."""
    with staged_run_dir(output_dir, wall_clock) as (staging, info):
        section = parse_cluster_section(config.get("cluster"))
        sinks: list[JsonlFileSink] = []

        def event_sink(index: int) -> JsonlFileSink | None:
            # One log per KVCM manager: a global fleet's one manager is instance 0's.
            server = instance_config(config, section, index).get("server") or {}
            if server.get("hicache_storage_backend") != "kvcm":
                return None
            if section.instances == 1 or section.kvcm_scope == "global":
                if index:
                    return None
                name = KVCM_EVENTS_FILE
            else:
                name = kvcm_events_file(index)
            sinks.append(JsonlFileSink(staging / name))
            return sinks[-1]

        with IterationLogWriter(staging / ITERATIONS_FILE) as log:
            try:
                result = run_cluster(
                    config, iteration_log=log, on_finish=on_finish, kvcm_event_sinks=event_sink
                )
            finally:
                for sink in sinks:
                    sink.close()
        write_metrics(staging, result.metrics)
        write_cluster_requests(staging / REQUESTS_FILE, result)
        (staging / "config.resolved.yaml").write_text(
            yaml.safe_dump(result.config, sort_keys=False), encoding="utf-8"
        )
        if plots:
            plot_latency_cdf(result.records, staging / LATENCY_CDF_PNG)
            plot_throughput(result.records, staging / THROUGHPUT_PNG)
            plot_instances(result, staging / CLUSTER_PNG)
        info["simulated_duration_s"] = result.metrics.get("duration")
    return result, Path(output_dir)


def cluster_report(result: ClusterResult) -> str:
    """bench_serving's table for the fleet, then one line per instance."""
    wl = result.config.get("workload") or {}
    rate = "trace" if wl.get("dataset_name") == "mooncake" else wl.get("request_rate")
    lines = [format_report(result.metrics, request_rate=rate, max_concurrency=wl.get("max_concurrency"))]
    metrics = result.metrics
    if result.pd is None:
        lines.append(f"router: {result.section.router}, instances: {result.section.instances}")
    else:
        pd = result.pd.section
        lines.append(
            f"PD: {pd.prefill_instances} prefill ({pd.prefill_router}) + {pd.decode_instances} decode "
            f"({pd.decode_router}); KV transfer mean {metrics['pd_mean_transfer_ms']:.2f} ms, "
            f"p99 {metrics['pd_p99_transfer_ms']:.2f} ms; prealloc wait mean "
            f"{metrics['pd_mean_prealloc_wait_ms']:.2f} ms"
        )
    hits = [_hit_rate(result, i) for i in range(len(result.stats))]
    lines.extend(_instance_lines(metrics["instances"], hits, _labels(result)))
    return "\n".join(lines)


def _instance_lines(
    instances: Sequence[Mapping[str, Any]], hits: Sequence[float], labels: Sequence[str]
) -> list[str]:
    rows = [f"{'instance':>8} {'requests':>9} {'busy':>6} {'hit rate':>9} {'mean TTFT ms':>13}"]
    for entry, hit, label in zip(instances, hits, labels, strict=True):
        ttft = entry.get("mean_ttft_ms")
        ttft_text = f"{ttft:13.1f}" if ttft is not None else f"{'-':>13}"
        busy = entry["busy_fraction"]
        name = label[1:] if label.startswith("#") else label
        rows.append(f"{name:>8} {entry['completed']:>9} {busy:>6.2f} {hit:>9.3f} {ttft_text}")
    return rows
