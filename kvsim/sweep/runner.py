"""Running a sweep: plan each configuration's runs, execute them, resume from disk, write the results.

Each configuration has a plan: a goodput search (its next rate depends on the last outcome), or a fixed
list of rates (a load axis, or its own rate). The runner asks every plan for its next run, takes the
run from the run directory when it is already there, otherwise submits it to the executor, and feeds
each finished record back to the plans waiting on it, until every plan is done. Then it writes the
table, the configuration summary, the plots and the recommendation (see :mod:`kvsim.sweep.store`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvsim.core.errors import UserInputError
from kvsim.sweep.executors import Executor, make_executor
from kvsim.sweep.goodput import GoodputSearch, round_rate
from kvsim.sweep.load import LoadKnob
from kvsim.sweep.paths import get_path, set_path
from kvsim.sweep.spec import Configuration, SweepSpec
from kvsim.sweep.store import RunStore, run_id, write_atomic
from kvsim.sweep.table import (
    CONFIG_COLUMNS,
    ConfigOutcome,
    Probe,
    Recommendation,
    outcome_from_rows,
    recommend,
    run_row,
    summarize_configs,
    to_arrow,
)
from kvsim.sweep.worker import DEFAULT_SIMULATOR

TABLE_FILE = "sweep.parquet"
CONFIGS_FILE = "configs.csv"
TIMINGS_FILE = "timings.csv"
SUMMARY_FILE = "summary.txt"
RESOLVED_FILE = "sweep.resolved.yaml"


@dataclass(slots=True)
class SweepResult:
    """A finished sweep.

    Attributes:
        table: One row per run (pandas), as written to ``sweep.parquet``.
        configs: One row per configuration: goodput, cost, Pareto front, recommendation.
        recommendation: The recommended configuration and the text explaining it.
        output_dir: The run directory.
        simulated: Runs this call simulated; ``reused``: runs it found on disk.
        plots: The PNG files written.
    """

    table: Any
    configs: Any
    recommendation: Recommendation
    output_dir: Path
    simulated: int
    reused: int
    plots: list[Path] = field(default_factory=list)

    def report(self) -> str:
        """The text ``kvsim sweep`` prints: the configurations, then the recommendation."""
        return format_report(self)


@dataclass(slots=True)
class _Plan:
    """A configuration's runs so far and how it picks the next one."""

    configuration: Configuration
    search: GoodputSearch | None
    fixed: list[tuple[float, Any]]  # (rate, knob value) still to run when there is no search
    probes: list[Probe] = field(default_factory=list)
    waiting: bool = False

    def next_load(self) -> tuple[float, Any] | None:
        """The next run's (rate, knob value), or None when the configuration is done."""
        knob = self.configuration.knob
        if self.search is not None:
            rate = self.search.next_rate()
            return None if rate is None else (rate, knob.value_for(rate))
        return self.fixed.pop(0) if self.fixed else None


def _run_config(config: Mapping[str, Any], knob: LoadKnob, value: Any) -> dict[str, Any]:
    """The experiment config of one run: the load set, the output section dropped (runs write no run
    directory), and a relative trace path made absolute (Ray workers may run elsewhere)."""
    run = set_path(config, knob.path, value)
    run.pop("output", None)
    workload = run.get("workload") or {}
    if workload.get("dataset_path"):
        workload["dataset_path"] = str(Path(workload["dataset_path"]).resolve())
    return run


def _fixed_loads(configuration: Configuration) -> list[tuple[float, Any]]:
    """The runs of a configuration without a goodput search: each load-axis value, or its own load."""
    knob = configuration.knob
    if configuration.load_values is not None:
        return [(round_rate(knob.rate_of(v)), v) for v in configuration.load_values]
    # The configuration's own load, set to the value it already has (None keeps the engine's default).
    rate = knob.base_rate(configuration.config)
    value = get_path(configuration.config, knob.path, None)
    return [(rate if math.isinf(rate) else round_rate(rate), value)]


def preflight(spec: SweepSpec, configurations: list[Configuration]) -> None:
    """Refuse, before any run, what is certainly bad input: unknown models or GPUs, a KVCM section the
    engine would refuse, a GPU or storage tier without a price.

    Errors name the configuration. A configuration that is well formed but cannot run (a model too
    large for its GPU) is not refused here: its runs fail and say why in their rows.
    """
    from kvsim.hardware.profile import load_profile
    from kvsim.models import load_model_spec

    checked: set[tuple[str, str]] = set()
    for configuration in configurations:
        config = configuration.config
        where = f"config {configuration.config_id} ({configuration.describe()})"
        for kind, loader in (("model", load_model_spec), ("gpu", load_profile)):
            name = config.get(kind)
            if (kind, str(name)) in checked:
                continue
            try:
                loader(str(name))
            except UserInputError as exc:
                raise UserInputError(f"{where}: {exc}") from None
            checked.add((kind, str(name)))
        if config.get("kvcm") is not None:
            from kvsim.engines.sglang.kvcm_store import parse_kvcm_section

            try:
                parse_kvcm_section(config["kvcm"])
            except UserInputError as exc:
                raise UserInputError(f"{where}: {exc}") from None
        if spec.cost is not None:
            spec.cost.check_gpus([str(config.get("gpu"))])
            server = config.get("server") or {}
            if server.get("enable_hierarchical_cache"):
                from kvsim.sweep.cost import L2_TIER

                spec.cost.storage_price(L2_TIER)
                for tier in _l3_tiers(config):
                    spec.cost.storage_price(tier)


def _l3_tiers(config: Mapping[str, Any]) -> list[str]:
    """The storage tiers an L3 backend of ``config`` would be priced on (none without one)."""
    server = config.get("server") or {}
    backend = server.get("hicache_storage_backend")
    if not backend:
        return []
    if backend == "kvcm":
        from kvsim.engines.sglang.kvcm_store import parse_kvcm_section

        return [storage.tier.name for storage in parse_kvcm_section(config.get("kvcm")).storages]
    from kvsim.engines.sglang.config import DEFAULT_STORAGE_TIERS

    tier = server.get("hicache_storage_tier") or DEFAULT_STORAGE_TIERS.get(backend)
    return [tier] if tier else []


class _Progress:
    """A progress bar on stderr (configurations done, runs simulated and reused), only on a terminal."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar: Any = None
        if not (enabled and sys.stderr.isatty()):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            "sweep",
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("configurations  {task.fields[runs]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._bar.add_task("configurations", total=total, runs="")
        self._bar.start()

    def update(self, done: int, simulated: int, reused: int, failed: int) -> None:
        """Show ``done`` configurations finished and the run counts."""
        if self._bar is not None:
            runs = f"runs: {simulated} simulated, {reused} reused, {failed} failed"
            self._bar.update(self._task, completed=done, runs=runs)

    def close(self) -> None:
        """Remove the bar (it is transient: the report replaces it)."""
        if self._bar is not None:
            self._bar.stop()


def run_sweep(
    spec: SweepSpec,
    output_dir: str | Path,
    *,
    executor: str | Executor = "local",
    jobs: int | None = None,
    address: str | None = None,
    progress: bool = False,
    retry_failed: bool = False,
    plots: bool = True,
    simulator: str = DEFAULT_SIMULATOR,
    on_record: Callable[[Mapping[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or resume) a sweep into ``output_dir`` and write its results.

    Args:
        spec: The sweep (:func:`kvsim.sweep.load_sweep`).
        output_dir: The run directory; runs already recorded there are reused, not simulated again.
        executor: ``local`` (process pool; ``jobs=1`` runs inline), ``ray``, or an executor object.
        jobs: Workers (default: one per CPU). For ``ray`` without ``address``, the local Ray's CPUs.
        address: A Ray cluster (``auto`` or ``HOST:PORT``).
        progress: Show a progress bar on a terminal.
        retry_failed: Simulate again the runs recorded as failed (by default a failure is final).
        plots: Write the PNG plots.
        simulator: Import string of the simulate function (tests pass stubs).
        on_record: Called with each record as it is taken (simulated or reused).

    Raises:
        UserInputError: bad input found before any run (see :func:`preflight`).
    """
    configurations = spec.configurations()
    preflight(spec, configurations)
    root = Path(output_dir)
    store = RunStore(root)
    plans = []
    for configuration in configurations:
        search = GoodputSearch(spec.goodput) if spec.goodput is not None else None
        plans.append(_Plan(configuration, search, [] if search is not None else _fixed_loads(configuration)))

    records: dict[str, dict[str, Any]] = {}
    waiting: dict[str, list[_Plan]] = {}
    exe: Executor | None = executor if not isinstance(executor, str) else None
    counts = {"simulated": 0, "reused": 0, "failed": 0}
    bar = _Progress(progress, len(plans))
    timings: dict[str, float | None] = {}

    def take(record: dict[str, Any]) -> None:
        records[record["run_id"]] = record
        if record["status"] != "ok":
            counts["failed"] += 1
        if on_record is not None:
            on_record(record)

    def feed(plan: _Plan, probe: Probe) -> None:
        if plan.search is not None:
            record = records[probe.run_id]
            met = (
                record["status"] == "ok"
                and spec.slo is not None
                and not spec.slo.violations(record["metrics"])
            )
            plan.search.record(probe.rate, met)

    def advance(plan: _Plan) -> None:
        nonlocal exe
        while not plan.waiting:
            load = plan.next_load()
            if load is None:
                return
            rate, value = load
            config = _run_config(plan.configuration.config, plan.configuration.knob, value)
            rid = run_id(config, simulator)
            probe = Probe(plan.configuration.config_id, len(plan.probes), rate, rid, config)
            plan.probes.append(probe)
            if rid in records:
                feed(plan, probe)
                continue
            stored = store.load(rid)
            if stored is not None and (stored["status"] == "ok" or not retry_failed):
                counts["reused"] += 1
                take(stored)
                feed(plan, probe)
                continue
            plan.waiting = True
            if rid in waiting:  # another configuration already asked for this very run
                waiting[rid].append(plan)
                return
            waiting[rid] = [plan]
            if exe is None:  # started only when something must run: a finished sweep resumes instantly
                exe = make_executor(str(executor), jobs, address)
            exe.submit({"run_id": rid, "config": config, "simulator": simulator})

    started = time.perf_counter()
    try:
        for plan in plans:
            advance(plan)
        bar.update(_finished(plans), **counts)
        while waiting:
            assert exe is not None
            record = store.save(exe.next_result())
            counts["simulated"] += 1
            timings[record["run_id"]] = record.get("wall_s")
            take(record)
            for plan in waiting.pop(record["run_id"]):
                plan.waiting = False
                feed(plan, plan.probes[-1])
                advance(plan)
            bar.update(_finished(plans), **counts)
    finally:
        bar.close()
        if exe is not None and isinstance(executor, str):
            exe.close()
    elapsed = time.perf_counter() - started
    return _finish(spec, plans, records, root, counts, timings, elapsed, plots)


def _finished(plans: list[_Plan]) -> int:
    """Plans with nothing left to run."""
    count = 0
    for plan in plans:
        if plan.waiting:
            continue
        if plan.search is not None:
            count += plan.search.done
        else:
            count += not plan.fixed
    return count


def _finish(
    spec: SweepSpec,
    plans: list[_Plan],
    records: Mapping[str, Mapping[str, Any]],
    root: Path,
    counts: Mapping[str, int],
    timings: Mapping[str, float | None],
    elapsed: float,
    plots: bool,
) -> SweepResult:
    """Build and write the table, the configuration summary, the recommendation and the plots."""
    import pandas as pd
    import pyarrow.parquet as pq

    rows = []
    rows_by_config: dict[int, list[dict[str, Any]]] = {}
    outcomes: dict[int, ConfigOutcome] = {}
    for plan in plans:
        config_rows = [
            run_row(spec, plan.configuration, probe, records[probe.run_id]) for probe in plan.probes
        ]
        rows_by_config[plan.configuration.config_id] = config_rows
        rows.extend(config_rows)
        if plan.search is not None:
            outcomes[plan.configuration.config_id] = ConfigOutcome(plan.search.goodput, plan.search.status)
        else:
            outcomes[plan.configuration.config_id] = outcome_from_rows(config_rows)
    summaries = summarize_configs(spec, [p.configuration for p in plans], rows_by_config, outcomes)
    recommendation = recommend(spec, summaries, rows)
    for summary in summaries:
        summary["recommended"] = summary["config_id"] == recommendation.config_id
    by_id = {s["config_id"]: s for s in summaries}
    for row in rows:
        summary = by_id[row["config_id"]]
        for column in CONFIG_COLUMNS:
            row[column] = summary[column]

    table = to_arrow(rows)
    tmp = root / f".{TABLE_FILE}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(root / TABLE_FILE)
    frame = table.to_pandas()
    configs = pd.DataFrame(summaries)
    write_atomic(root / CONFIGS_FILE, configs.to_csv(index=False))
    # Wall-clock times stay out of the table, so that two executors' tables compare equal.
    lines = ["run_id,wall_s"] + [f"{rid},{'' if t is None else t}" for rid, t in sorted(timings.items())]
    write_atomic(root / TIMINGS_FILE, "\n".join(lines) + "\n")
    resolved = {
        "source": spec.source,
        "name": spec.name,
        "configurations": len(plans),
        "runs": len(rows),
        "base": copy.deepcopy(spec.base),
    }
    write_atomic(root / RESOLVED_FILE, yaml.safe_dump(resolved, sort_keys=False))
    result = SweepResult(
        table=frame,
        configs=configs,
        recommendation=recommendation,
        output_dir=root,
        simulated=counts["simulated"],
        reused=counts["reused"],
    )
    if plots:
        from kvsim.sweep.plots import plot_sweep

        result.plots = plot_sweep(spec, result, root)
    write_atomic(root / SUMMARY_FILE, format_report(result, elapsed) + "\n")
    return result


def format_report(result: SweepResult, elapsed: float | None = None) -> str:
    """The configurations (id, settings, runs, goodput, cost, front) and the recommendation, as text."""
    configs = result.configs
    lines = []
    width = max([len("configuration"), *(len(str(name)) for name in configs["configuration"])])
    header = (
        f"{'id':>3}  {'configuration':<{width}} {'runs':>4} {'goodput':>9} {'$/h':>8} {'$/1k req':>9}  front"
    )
    lines.append(header)
    for _, c in configs.iterrows():
        goodput = c["goodput_rps"]
        shown = "" if not isinstance(goodput, float) or math.isnan(goodput) else f"{goodput:.4g}"
        if c["goodput_status"] == "capped":
            shown = ">=" + shown
        if c["failed_runs"]:
            shown += f" ({c['failed_runs']} failed)"
        cost = "" if math.isnan(c["cost_per_hour"]) else f"{c['cost_per_hour']:.2f}"
        per_1k = "" if math.isnan(c["cost_per_1k_requests"]) else f"{c['cost_per_1k_requests']:.3f}"
        lines.append(
            f"{c['config_id']:>3}  {c['configuration']:<{width}} {c['runs']:>4} {shown:>9} "
            f"{cost:>8} {per_1k:>9}  {'*' if c['pareto'] else ''}"
        )
    runs = len(result.table)
    timing = f" in {elapsed:.1f} s" if elapsed is not None and result.simulated else ""
    lines.append(
        f"{len(configs)} configurations, {runs} runs ({result.simulated} simulated{timing}, "
        f"{result.reused} reused from {result.output_dir}); goodput in req/s; "
        "* = on the cost/goodput Pareto front"
    )
    lines.append(result.recommendation.text)
    return "\n".join(lines)
