"""Reproduce HiSim's published H20 experiments with kvsim and compare them with the published values.

One command runs every experiment of ``experiments/hisim_h20/sweep.yaml`` (Qwen3-8B and Qwen3-32B-FP8,
cases no_cache / l1 / l2, request rates 1..32, 100 prompts each: 66 simulations), fits the one named
scale factor on its stated subset, runs the sweep again with it, runs the l2 case at other device pool
sizes (``pool_study``), and writes

- ``docs/validation/hisim_h20.md``: the settings, kvsim's MAPE per model, case and metric against the
  published real values (``experiments/hisim_h20/published.yaml``), the scale factor, and per model,
  case and rate the kvsim and real values;
- ``docs/validation/hisim_h20/<model>.png``: kvsim's curves over the real points, HiSim's layout;
- ``docs/validation/hisim_h20/results.csv``: every simulated point.

Usage, from the repository root::

    python scripts/run_hisim_h20.py                 # everything (about 20 s on 2 cores)
    python scripts/run_hisim_h20.py --quick         # CI: 2 rates x 10 prompts, into runs/hisim_h20_quick

The scale factor ``prefill_scale`` multiplies the predicted time of prefill steps only. kvsim's engine
has no such knob, so the runs that use it substitute a subclass of the step-time predictor for the
duration of the run (:func:`_scaled_predictor`); the unscaled results never touch it.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from matplotlib.figure import Figure

from kvsim.engines import experiment
from kvsim.engines.experiment import resolve_config
from kvsim.metrics.compare import mape, relative_error
from kvsim.perf.predictor import StepTime, StepTimePredictor

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments" / "hisim_h20"
DEFAULT_REPORT = REPO / "docs" / "validation" / "hisim_h20.md"
QUICK_OUT = REPO / "runs" / "hisim_h20_quick"

#: The metrics of HiSim's plots, in its column order: (published key, kvsim key, label, unit).
PLOTTED: tuple[tuple[str, str, str, str], ...] = (
    ("mean_ttft_ms", "mean_ttft_ms", "mean TTFT", "ms"),
    ("mean_tpot_ms", "mean_tpot_ms", "mean TPOT", "ms"),
    ("mean_itl_ms", "mean_itl_ms", "mean ITL", "ms"),
    ("mean_e2e_latency_ms", "mean_e2e_latency_ms", "mean E2E", "ms"),
    ("input_throughput", "input_throughput", "input throughput", "tok/s"),
    ("prefix_hit_ratio", "cache_hit_rate", "prefix hit ratio", ""),
)
#: Published key -> kvsim key.
KVSIM_KEY = {published: key for published, key, _, _ in PLOTTED}
#: The hit ratio is compared by absolute difference: its real value is 0 for no_cache.
ABSOLUTE = frozenset({"prefix_hit_ratio"})
#: What each run keeps of kvsim's metrics (written to results.csv).
KEPT = (
    "completed",
    "total_input_tokens",
    "total_output_tokens",
    "duration",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "mean_e2e_latency_ms",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "cache_hit_rate",
    "l2_hit_ratio",
    "num_retractions",
    "max_total_tokens",
)
CASE_TITLES = {
    "no_cache": "no cache (random 2000/512)",
    "l1": "L1 hits (GSP)",
    "l2": "L1+L2 hits (GSP, HiCache)",
}
#: HiSim's own published MAPE (hisim-reference.md §3.1, its README), over all 11 rates of its real data.
HISIM_TABLE: dict[tuple[str, str], dict[str, str]] = {
    ("Qwen3-8B", "no_cache"): {"ttft": "3.42%", "tpot": "1.64%", "itl": "1.78%", "input": "1.41%"},
    ("Qwen3-8B", "l1"): {"ttft": "4.15%", "tpot": "3.47%", "itl": "3.54%", "input": "2.4%"},
    ("Qwen3-8B", "l2"): {"ttft": "2.38%", "tpot": "4.05%", "itl": "4.07%", "input": "2.35%"},
    ("Qwen3-32B-FP8", "no_cache"): {"ttft": "2.77%", "tpot": "0.58%", "itl": "0.52%", "input": "0.52%"},
    ("Qwen3-32B-FP8", "l1"): {"ttft": "2.40%", "tpot": "1.03%", "itl": "1.02%", "input": "1.04%"},
    ("Qwen3-32B-FP8", "l2"): {"ttft": "3.05%", "tpot": "1.11%", "itl": "1.02%", "input": "1.13%"},
}


# ---- inputs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Point:
    """One published value: the real curve (and HiSim's simulation) at one rate."""

    model: str
    case: str
    metric: str
    rate: float
    real: float
    hisim: float | None
    source: str


def load_sweep(path: Path = EXPERIMENTS / "sweep.yaml") -> dict[str, Any]:
    """The sweep definition (rates, models, cases, quick mode, the fit)."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_published(rates: Sequence[float], path: Path = EXPERIMENTS / "published.yaml") -> list[Point]:
    """The published points, one per (model, case, metric, rate); ``rates: all`` expands to ``rates``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    points = []
    for model, cases in data["models"].items():
        for case, metrics in cases.items():
            for metric, entries in metrics.items():
                if metric not in KVSIM_KEY:
                    raise ValueError(f"{path}: unknown metric {metric!r} under {model}/{case}")
                for entry in entries:
                    at = rates if entry["rates"] == "all" else entry["rates"]
                    for rate in at:
                        hisim = entry.get("hisim")
                        points.append(
                            Point(
                                model,
                                case,
                                metric,
                                float(rate),
                                float(entry["real"]),
                                None if hisim is None else float(hisim),
                                str(entry["source"]),
                            )
                        )
    return points


def experiment_config(
    model: str,
    case: str,
    rate: float,
    sweep: Mapping[str, Any],
    quick: bool,
    server: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved kvsim config of one point: the case's experiment file at ``rate``.

    ``server`` overrides server keys (the pool-size study); the sweep itself never passes it.
    """
    slug = sweep["models"][model]
    path = EXPERIMENTS / sweep["cases"][case].format(slug=slug)
    workload: dict[str, Any] = {"request_rate": rate, "seed": sweep["seed"]}
    settings = sweep["quick"] if quick else sweep
    workload["num_prompts"] = settings["num_prompts"]
    if quick:
        workload["gsp_num_groups"] = settings["gsp_num_groups"]
        workload["gsp_prompts_per_group"] = settings["gsp_prompts_per_group"]
    overrides: dict[str, Any] = {"workload": workload, "output": {"plots": False}}
    if server:
        overrides["server"] = dict(server)
    return resolve_config(path, overrides)


def describe_case(config: Mapping[str, Any], same_workload_as: str | None = None) -> str:
    """A case's workload and server in words, from its resolved config (so the report cannot drift).

    ``same_workload_as`` names an earlier case with the same workload, which is then referred to.
    """
    wl, srv = config["workload"], config["server"]
    if same_workload_as is not None:
        text = f"the {same_workload_as} workload."
    elif wl["dataset_name"] == "generated-shared-prefix":
        groups, per = wl["gsp_num_groups"], wl["gsp_prompts_per_group"]
        system, question, out = wl["gsp_system_prompt_len"], wl["gsp_question_len"], wl["gsp_output_len"]
        hit = (per - 1) * system / (per * (system + question))
        text = (
            f"generated-shared-prefix, {groups} groups x {per} prompts = {groups * per} prompts, each a "
            f"{system}-token system prompt shared by its group plus its own {question}-token question, "
            f"{out} output tokens. Expected hit ratio when every later prompt of a group finds its system "
            f"prompt cached: ({per} - 1) x {system} / ({per} x {system + question}) = {hit:.3f}; HiSim's "
            "plots show about 0.49. GSP ignores `--num-prompts`."
        )
    else:
        n, inp, out, ratio = (
            wl["num_prompts"],
            wl["random_input_len"],
            wl["random_output_len"],
            wl["random_range_ratio"],
        )
        text = (
            f"bench_serving `random` {inp}/{out} with range ratio {ratio:g}, {n} prompts (prompts "
            f"{max(int(inp * ratio), 1)}-{inp} tokens, outputs {max(int(out * ratio), 1)}-{out}); no prompt "
            "shares a prefix."
        )
    if srv.get("enable_hierarchical_cache"):
        pool = srv.get("max_total_tokens")
        shared = wl["gsp_num_groups"] * wl["gsp_system_prompt_len"]
        text += (
            f" HiCache on (host pool {srv.get('hicache_ratio', 2.0):g}x the device pool, "
            f"{srv.get('hicache_write_policy', 'write_through')}) with a device KV pool of "
            f"**{pool:,} tokens** (`max_total_tokens`), {pool / shared:.1f}x the {shared:,} tokens of the "
            f"{wl['gsp_num_groups']} system prompts: too small to keep every group cached beside the "
            "requests in flight, so groups are evicted to host memory and loaded back."
        )
    return text


# ---- running --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    """One simulation: a point of the sweep at a prefill scale."""

    model: str
    case: str
    rate: float
    prefill_scale: float
    config: dict[str, Any] = field(compare=False, hash=False)


def _scaled_predictor(scale: float) -> type:
    """A StepTimePredictor whose prefill steps take ``scale`` times as long (decode steps unchanged)."""

    class PrefillScaledPredictor(StepTimePredictor):
        def predict_sums(self, sums: Any) -> StepTime:
            step = super().predict_sums(sums)
            if sums.is_decode:
                return step
            low, high = step.step_time_ms_range
            ops = {name: ms * scale for name, ms in step.ops.items()}  # ops still sum to the total
            return StepTime(
                step.step_time_ms * scale, ops, step.sources, step.profile, (low * scale, high * scale)
            )

    return PrefillScaledPredictor


def simulate(job: Job) -> dict[str, Any]:
    """Run one job; returns its identity and the kept metrics (top-level so a process pool can call it)."""
    if job.prefill_scale == 1.0:
        metrics = experiment.run_experiment(job.config).metrics
    else:
        # The engine builds its predictor inside run_experiment; swap the class only for this run.
        with mock.patch.object(experiment, "StepTimePredictor", _scaled_predictor(job.prefill_scale)):
            metrics = experiment.run_experiment(job.config).metrics
    row: dict[str, Any] = {
        "model": job.model,
        "case": job.case,
        "rate": job.rate,
        "prefill_scale": job.prefill_scale,
    }
    for key in KEPT:
        row[key] = metrics.get(key, 0.0)
    return row


def run_jobs(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    """Run the jobs, in a process pool when ``workers > 1``; results in the jobs' order."""
    if workers <= 1 or len(jobs) <= 1:
        return [simulate(job) for job in jobs]
    # fork keeps the pool cheap to start and works when this file is loaded by path (tests, notebooks).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(simulate, jobs, chunksize=2))


def sweep_jobs(
    sweep: Mapping[str, Any], rates: Sequence[float], quick: bool, prefill_scale: float = 1.0
) -> list[Job]:
    """Every (model, case, rate) of the sweep at one prefill scale."""
    return [
        Job(model, case, float(rate), prefill_scale, experiment_config(model, case, rate, sweep, quick))
        for model in sweep["models"]
        for case in sweep["cases"]
        for rate in rates
    ]


def pool_study_jobs(sweep: Mapping[str, Any]) -> list[Job]:
    """The l2 experiment of each model at the pool study's rates and pool sizes (scale 1)."""
    study = sweep["pool_study"]
    return [
        Job(
            model,
            "l2",
            float(rate),
            1.0,
            experiment_config(model, "l2", rate, sweep, False, {"max_total_tokens": pool}),
        )
        for model in sweep["models"]
        for pool in study["max_total_tokens"]
        for rate in study["rates"]
    ]


# ---- errors ---------------------------------------------------------------------------------------------
def point_error(metric: str, sim: float, real: float) -> float | None:
    """The error of one point: ``sim / real - 1``, or ``sim - real`` for the hit ratio (see ABSOLUTE)."""
    if metric in ABSOLUTE:
        return sim - real
    return relative_error(sim, real)


def index_rows(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, float, float], Mapping[str, Any]]:
    """Rows by (model, case, rate, prefill_scale)."""
    return {(r["model"], r["case"], float(r["rate"]), float(r["prefill_scale"])): r for r in rows}


def errors_at(
    points: Iterable[Point], rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]], scale: float
) -> list[tuple[Point, float, float | None]]:
    """(point, kvsim value, error) for every published point the rows cover, at one prefill scale."""
    out = []
    for point in points:
        row = rows.get((point.model, point.case, point.rate, scale))
        if row is None:
            continue
        sim = float(row[KVSIM_KEY[point.metric]])
        out.append((point, sim, point_error(point.metric, sim, point.real)))
    return out


def in_fit_subset(point: Point, fit: Mapping[str, Any]) -> bool:
    """Whether a published point belongs to the scale factor's fit subset (hit ratios never do)."""
    return (
        point.model == fit["model"]
        and point.case == fit["case"]
        and point.rate <= float(fit["max_rate"])
        and point.metric not in ABSOLUTE
    )


@dataclass(slots=True)
class Fit:
    """The fitted scale factor and how it was found."""

    name: str
    value: float
    subset_points: int
    curve: list[tuple[float, float]]  # (scale, MAPE on the subset)


def fit_prefill_scale(
    sweep: Mapping[str, Any], points: Sequence[Point], workers: int, quick: bool
) -> tuple[Fit, list[dict[str, Any]]]:
    """Grid-search ``prefill_scale`` on the fit subset; returns the fit and the rows it simulated."""
    fit = sweep["fit"]
    subset = [p for p in points if in_fit_subset(p, fit)]
    rates = sorted({p.rate for p in subset})
    grid = fit["grid"]
    count = round((grid["stop"] - grid["start"]) / grid["step"]) + 1
    scales = [round(grid["start"] + i * grid["step"], 6) for i in range(count)]
    jobs = [
        Job(
            fit["model"],
            fit["case"],
            rate,
            scale,
            experiment_config(fit["model"], fit["case"], rate, sweep, quick),
        )
        for scale in scales
        for rate in rates
    ]
    rows = run_jobs(jobs, workers)
    indexed = index_rows(rows)
    curve = []
    for scale in scales:
        value = mape(error for _, _, error in errors_at(subset, indexed, scale))
        curve.append((scale, math.inf if value is None else value))
    # Ties go to the scale nearest 1: no larger correction than the data ask for.
    best = min(curve, key=lambda item: (round(item[1], 9), abs(item[0] - 1.0)))[0]
    return Fit(fit["name"], best, len(subset), curve), rows


# ---- outputs --------------------------------------------------------------------------------------------
def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    if metric in ABSOLUTE or metric in ("cache_hit_rate", "l2_hit_ratio"):
        return f"{value:.3f}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.1f}%"


def _abs_pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Every simulated point, one line each, sorted; floats rounded so the file is stable."""
    columns = ["model", "case", "rate", "prefill_scale", *KEPT]
    ordered = sorted(rows, key=lambda r: (r["model"], r["case"], r["prefill_scale"], r["rate"]))
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in ordered:
            writer.writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in columns])


def plot_model(
    model: str,
    sweep: Mapping[str, Any],
    rates: Sequence[float],
    rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]],
    points: Sequence[Point],
    scale: float | None,
    path: Path,
) -> Path:
    """HiSim's layout for one model: a row per case, a column per metric; kvsim lines over real points."""
    cases = list(sweep["cases"])
    fig = Figure(figsize=(24, 4 * len(cases)), layout="constrained")
    axes = fig.subplots(len(cases), len(PLOTTED), squeeze=False)
    for i, case in enumerate(cases):
        for j, (metric, key, label, unit) in enumerate(PLOTTED):
            ax = axes[i][j]
            sim = [float(rows[(model, case, float(r), 1.0)][key]) for r in rates]
            ax.plot(rates, sim, "o-", color="tab:blue", label="kvsim", markersize=4)
            if (
                scale is not None
                and scale != 1.0
                and all((model, case, float(r), scale) in rows for r in rates)
            ):
                scaled = [float(rows[(model, case, float(r), scale)][key]) for r in rates]
                ax.plot(
                    rates, scaled, "--", color="tab:blue", alpha=0.6, label=f"kvsim, prefill_scale {scale:g}"
                )
            if metric == "prefix_hit_ratio" and case == "l2":
                l2 = [float(rows[(model, case, float(r), 1.0)]["l2_hit_ratio"]) for r in rates]
                ax.plot(rates, l2, ":", color="tab:cyan", label="kvsim, from host (L2)")
            mine = sorted(
                (p for p in points if (p.model, p.case, p.metric) == (model, case, metric)),
                key=lambda p: p.rate,
            )
            if mine:
                # Markers only: the published points are sparse, a line between them would invent a curve.
                ax.plot(
                    [p.rate for p in mine],
                    [p.real for p in mine],
                    "s",
                    color="tab:orange",
                    label="real (published, ≈)",
                )
                hisim = [p for p in mine if p.hisim is not None]
                ax.plot(
                    [p.rate for p in hisim],
                    [p.hisim for p in hisim],
                    "x",
                    color="grey",
                    label="HiSim (published, ≈)",
                )
            ax.set_title(f"{CASE_TITLES[case]}: {label}", fontsize="medium")
            ax.set_xlabel("request rate (req/s)")
            if unit:
                ax.set_ylabel(unit)
            ax.grid(True, alpha=0.3)
            if metric == "prefix_hit_ratio":
                ax.set_ylim(-0.02, 0.6)
            else:
                ax.set_ylim(bottom=0)
            if i == 0 and j == 0:
                ax.legend(loc="upper left", fontsize="small")
            elif metric == "prefix_hit_ratio" and case == "l2":
                ax.legend(loc="center right", fontsize="small")
    fig.suptitle(f"H20 {model}, overlap scheduling off: kvsim (lines) vs published real values (orange)")
    fig.savefig(path, dpi=72)
    return path


def _mape_table(
    errors: Sequence[tuple[Point, float, float | None]], sweep: Mapping[str, Any], hisim: bool = False
) -> list[str]:
    """Markdown rows: per model and case, MAPE (n points) per metric; hit ratio as mean |difference|."""
    head = "| model | case | " + " | ".join(label for _, _, label, _ in PLOTTED) + " | all but hit ratio |"
    lines = [head, "|" + " --- |" * (len(PLOTTED) + 3)]
    for model in sweep["models"]:
        for case in sweep["cases"]:
            cells = []
            pooled: list[float | None] = []
            for metric, _, _, _ in PLOTTED:
                mine = [
                    (p, s, e) for p, s, e in errors if (p.model, p.case, p.metric) == (model, case, metric)
                ]
                if hisim:
                    values = [point_error(metric, p.hisim, p.real) for p, _, _ in mine if p.hisim is not None]
                else:
                    values = [e for _, _, e in mine]
                value = mape(values)
                if metric not in ABSOLUTE:
                    pooled.extend(values)
                if value is None:
                    cells.append("")
                elif metric in ABSOLUTE:
                    cells.append(f"{value * 100:.1f} pt ({len(values)})")
                else:
                    cells.append(f"{value * 100:.1f}% ({len(values)})")
            total = mape(pooled)
            overall = "" if total is None else f"{total * 100:.1f}% ({sum(v is not None for v in pooled)})"
            lines.append(f"| {model} | {case} | " + " | ".join(cells) + f" | {overall} |")
    return lines


def _rate_table(
    model: str,
    case: str,
    rates: Sequence[float],
    rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]],
    errors: Sequence[tuple[Point, float, float | None]],
) -> list[str]:
    """Markdown rows: per rate, kvsim's value of each plotted metric, with the real value and error."""
    by_point = {(p.metric, p.rate): (p, e) for p, _, e in errors if (p.model, p.case) == (model, case)}
    head = "| rate | " + " | ".join(f"{label} ({unit})" if unit else label for _, _, label, unit in PLOTTED)
    lines = [head + " | L2 part | retractions |", "|" + " --- |" * (len(PLOTTED) + 3)]
    for rate in rates:
        row = rows[(model, case, float(rate), 1.0)]
        cells = []
        for metric, key, _, _ in PLOTTED:
            text = _fmt(metric, float(row[key]))
            found = by_point.get((metric, float(rate)))
            if found is not None:
                point, error = found
                shown = f"{error * 100:+.1f} pt" if metric in ABSOLUTE and error is not None else _pct(error)
                text += f" / {_fmt(metric, point.real)} ({shown})"
            cells.append(text)
        l2 = _fmt("l2_hit_ratio", float(row["l2_hit_ratio"]))
        lines.append(f"| {rate:g} | " + " | ".join(cells) + f" | {l2} | {int(row['num_retractions'])} |")
    return lines


def write_report(
    path: Path,
    sweep: Mapping[str, Any],
    rates: Sequence[float],
    rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]],
    points: Sequence[Point],
    fit: Fit | None,
    quick: bool,
    plots: Mapping[str, Path],
    pool_rows: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write the markdown report (deterministic: no timestamps, no wall times)."""
    errors = errors_at(points, rows, 1.0)
    num_prompts = (sweep["quick"] if quick else sweep)["num_prompts"]
    first_model = next(iter(sweep["models"]))
    descriptions: dict[str, str] = {}
    seen: dict[str, Any] = {}
    for case in sweep["cases"]:
        config = experiment_config(first_model, case, rates[0], sweep, quick)
        same = next((name for name, wl in seen.items() if wl == config["workload"]), None)
        descriptions[case] = describe_case(config, same)
        seen.setdefault(case, config["workload"])
    lines = [
        "# kvsim against HiSim's published H20 experiments",
        "",
        "Generated by `python scripts/run_hisim_h20.py"
        + (
            " --quick`. **Quick mode: a pipeline check, not a validation.**"
            if quick
            else "`; do not edit by hand."
        )
        + " Inputs: `experiments/hisim_h20/` (the experiment configs, `sweep.yaml`, and `published.yaml`, "
        "the published values with where each comes from). Every simulated point is in "
        f"`{path.stem}/results.csv`.",
        "",
        "## What was run",
        "",
        f"- SGLang 0.5.6.post2 rules, one H20 (kvsim's `H20` profile), TP 1, overlap scheduling off, request "
        f"rates {', '.join(f'{r:g}' for r in rates)}, {num_prompts} prompts per rate (GSP: groups x prompts "
        f"per group), no warm-up, an empty cache at the start of every rate, seed {sweep['seed']} (the same "
        "prompts at every rate). The cases, for both models:",
        *(f"  - **{case}**, {CASE_TITLES[case]}: {text}" for case, text in descriptions.items()),
        "- Real values: read by eye (≈) from HiSim's two published accuracy plots "
        "(`H20-Qwen3-8B-L2.png`, `H20-Qwen3-32B-FP8-L2.png`) as recorded in the project's HiSim notes "
        "(hisim-reference.md §3.2); `published.yaml` gives the source of each. They are sparse: 3 to 11 "
        "points per curve, mostly rates 1, 4 or 8, and 32; a plateau value counts only from the rate the "
        "notes say it starts at (rate 32 where they do not say).",
        "- Error = kvsim / real - 1; MAPE = mean |error| over the published points (count in brackets). The "
        "prefix hit ratio is compared by absolute difference in percentage points (pt), since its real value "
        "is 0 without a cache.",
        "",
        "## MAPE per model, case and metric",
        "",
        "kvsim as is (no scale factor):",
        "",
        *_mape_table(errors, sweep),
        "",
        "The l2 rows compare a different configuration: the published l2 run's pool did not limit "
        "admission, this one's does (see *The l2 case and the device pool*); they measure that difference, "
        "not kvsim's L2 model.",
        "",
        "HiSim's own simulation on the same points (its published sim values read off the same plots). Where "
        "the notes give one value for both curves, HiSim's error is 0 by construction, so this is a lower "
        "bound on its error at these points:",
        "",
        *_mape_table(errors, sweep, hisim=True),
        "",
        "For reference, HiSim's published MAPE over all 11 rates of its real data (hisim-reference.md §3.1): "
        + "; ".join(
            f"{m} {c}: TTFT {v['ttft']}, TPOT {v['tpot']}, ITL {v['itl']}, input {v['input']}"
            for (m, c), v in HISIM_TABLE.items()
        )
        + ". HiSim calibrated those runs with prefill x1.045 (and decode x1.011 for 32B), plus an XGBoost "
        "decode-attention correction for 8B.",
        "",
    ]
    lines += _fit_section(fit, points, rows, sweep)
    lines += _pool_section(pool_rows, points, sweep)
    lines += _discussion(errors, rows, sweep, rates)
    lines += ["## Plots", ""]
    for model, plot in plots.items():
        rel = os.path.relpath(plot, path.parent)
        lines += [f"![{model}: kvsim vs published real values]({rel})", ""]
    lines += ["## Per model, case and rate", ""]
    lines.append(
        "Each cell: kvsim's value; where a real value was published at that rate, ` / real (error)`. "
        "`L2 part` is kvsim's share of prompt tokens loaded back from host memory."
    )
    lines.append("")
    for model in sweep["models"]:
        for case in sweep["cases"]:
            lines += [f"### {model}, {CASE_TITLES[case]}", ""]
            lines += _rate_table(model, case, rates, rows, errors)
            lines.append("")
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def _pool_section(
    pool_rows: Sequence[Mapping[str, Any]], points: Sequence[Point], sweep: Mapping[str, Any]
) -> list[str]:
    """The l2 experiment at other pool sizes, beside the published l2 values."""
    if not pool_rows:
        return []
    study = sweep["pool_study"]
    configured = experiment_config(next(iter(sweep["models"])), "l2", 1, sweep, False)["server"][
        "max_total_tokens"
    ]
    lines = [
        "## The l2 case and the device pool",
        "",
        f"The l2 experiment at rates {', '.join(f'{r:g}' for r in study['rates'])} with other device pools "
        "(the last pool of each model is derived from GPU memory, as SGLang does without "
        "`--max-total-tokens`), beside the published real l2 values. `L2 part` is the share of prompt tokens "
        f"loaded back from host. The sweep uses {configured:,} tokens.",
        "",
        "| model | pool (tokens) | rate | mean TTFT (ms) | mean TPOT (ms) | input throughput (tok/s) "
        "| prefix hit ratio | L2 part | retractions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in sweep["models"]:
        for rate in study["rates"]:
            real = {
                p.metric: p.real for p in points if (p.model, p.case, p.rate) == (model, "l2", float(rate))
            }
            cells = [
                _fmt(m, real.get(m))
                for m in ("mean_ttft_ms", "mean_tpot_ms", "input_throughput", "prefix_hit_ratio")
            ]
            lines.append(f"| {model} | published real | {rate:g} | " + " | ".join(cells) + " |  |  |")
            for row in pool_rows:
                if row["model"] != model or float(row["rate"]) != float(rate):
                    continue
                cells = [
                    _fmt("mean_ttft_ms", float(row["mean_ttft_ms"])),
                    _fmt("mean_tpot_ms", float(row["mean_tpot_ms"])),
                    _fmt("input_throughput", float(row["input_throughput"])),
                    _fmt("prefix_hit_ratio", float(row["cache_hit_rate"])),
                    _fmt("l2_hit_ratio", float(row["l2_hit_ratio"])),
                    str(int(row["num_retractions"])),
                ]
                lines.append(
                    f"| {model} | {int(row['max_total_tokens']):,} | {rate:g} | " + " | ".join(cells) + " |"
                )
    lines += [
        "",
        "No pool gives both: pools small enough for host hits in a 100-prompt run limit how many requests "
        "run at once, and pools large enough to leave the published l2 curves on the l1 curves (as the real "
        "ones are) keep every group on the device, so nothing comes from host.",
        "",
    ]
    return lines


def _fit_section(
    fit: Fit | None,
    points: Sequence[Point],
    rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]],
    sweep: Mapping[str, Any],
) -> list[str]:
    if fit is None:
        return ["## Scale factor", "", "Not fitted in this run (`--no-fit` or `--quick`).", ""]
    spec = sweep["fit"]
    base = errors_at(points, rows, 1.0)
    scaled = errors_at(points, rows, fit.value)
    keyed_base = {(p.model, p.case, p.metric, p.rate): e for p, _, e in base}
    subset = [(p, s, e) for p, s, e in scaled if in_fit_subset(p, spec)]
    held = [(p, s, e) for p, s, e in scaled if not in_fit_subset(p, spec) and p.metric not in ABSOLUTE]
    held_not_l2 = [(p, s, e) for p, s, e in held if p.case != "l2"]

    def before(items: Sequence[tuple[Point, float, float | None]]) -> float | None:
        return mape(keyed_base[(p.model, p.case, p.metric, p.rate)] for p, _, _ in items)

    labels = {published: label for published, _, label, _ in PLOTTED}
    subset_metrics = ", ".join(dict.fromkeys(labels[p.metric] for p, _, _ in subset))
    subset_rates = " and ".join(f"{r:g}" for r in sorted({p.rate for p, _, _ in subset}))
    curve = ", ".join(f"{s:g}: {v * 100:.1f}%" for s, v in fit.curve[:: max(1, len(fit.curve) // 9)])
    lines = [
        "## Scale factor",
        "",
        f"One factor, **`{fit.name}` = {fit.value:g}**: the predicted time of every prefill step is "
        "multiplied by it (decode steps unchanged), the role of HiSim's `prefill_scale_factor`. Fitted by "
        "grid search "
        f"({spec['grid']['start']:g} to {spec['grid']['stop']:g} in steps of {spec['grid']['step']:g}) "
        f"minimising the MAPE over **{spec['model']} {spec['case']}, published points at rates <= "
        f"{spec['max_rate']:g}** ({fit.subset_points} points: {subset_metrics} at rates {subset_rates}); "
        "every other point is held out. Subset MAPE along the grid: " + curve + ".",
        "",
        "| points | n | MAPE, kvsim as is | MAPE, with the factor |",
        "| --- | --- | --- | --- |",
        f"| fit subset | {len(subset)} | {_abs_pct(before(subset))} | "
        f"{_abs_pct(mape(e for _, _, e in subset))} |",
        f"| held out (all other points, hit ratio excluded) | {len(held)} | {_abs_pct(before(held))} | "
        f"{_abs_pct(mape(e for _, _, e in held))} |",
        f"| held out, l2 excluded | {len(held_not_l2)} | {_abs_pct(before(held_not_l2))} | "
        f"{_abs_pct(mape(e for _, _, e in held_not_l2))} |",
    ]
    for model in sweep["models"]:
        for case in sweep["cases"]:
            mine = [(p, s, e) for p, s, e in held if (p.model, p.case) == (model, case)]
            if mine:
                lines.append(
                    f"| held out: {model} {case} | {len(mine)} | {_abs_pct(before(mine))} | "
                    f"{_abs_pct(mape(e for _, _, e in mine))} |"
                )
    lines += [
        "",
        "The headline tables and plots above are kvsim as is; the dashed lines in the plots are with the "
        "factor. `results.csv` holds both (column `prefill_scale`).",
        "",
    ]
    return lines


def _discussion(
    errors: Sequence[tuple[Point, float, float | None]],
    rows: Mapping[tuple[str, str, float, float], Mapping[str, Any]],
    sweep: Mapping[str, Any],
    rates: Sequence[float],
) -> list[str]:
    """Where kvsim is furthest off, listed from the data, and the likely causes."""
    ranked = sorted(
        ((p, s, e) for p, s, e in errors if e is not None and p.metric not in ABSOLUTE),
        key=lambda item: -abs(item[2] or 0.0),
    )
    lines = [
        "## Where kvsim is off, and why",
        "",
        "The ten largest errors (kvsim as is):",
        "",
        "| model | case | metric | rate | kvsim | real | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p, s, e in ranked[:10]:
        lines.append(
            f"| {p.model} | {p.case} | {p.metric} | {p.rate:g} | {_fmt(p.metric, s)} | "
            f"{_fmt(p.metric, p.real)} | {_pct(e)} |"
        )
    lines += ["", *DISCUSSION, ""]
    return lines


#: The explanation under the error list. It states causes, not numbers; the numbers are generated above.
DISCUSSION: tuple[str, ...] = (
    "Likely causes, in the order they matter here:",
    "",
    "- **The l2 case is not the published configuration.** The published l2 curves sit on the l1 curves "
    "(TPOT plateau 50.8 vs 50.3 ms for Qwen3-8B, input throughput 6.0k for both), so HiSim's real l2 run "
    "cannot have had a pool that throttled admission. kvsim's l2 case has the small pool asked for here, "
    "which limits how many requests run at once from low rates on (32B: from rate 1): its error against "
    "the published l2 values measures that difference, not kvsim's L2 model. The real pool size was not "
    "published; with a real run's server log, `kvsim compare --rerun --server-log LOG` simulates the "
    "real size.",
    "- **The H20 profile is fitted, not measured.** kvsim has no kernel tables from an H20: its GEMM and "
    "attention times come from efficiency curves fitted on third-party H20-3e kernel tables (the same "
    "compute; memory-bound terms use the H20's 4.0 TB/s), see docs/profiles.md and "
    "docs/validation/step_time.md. Prefill-bound quantities (TTFT at low rates, the prefill stalls inside "
    "TPOT) carry that error directly. On the H200, where kvsim has measured tables, its predicted prefill "
    "steps were still about 18% shorter than measured steps of a reference forward pass that does more "
    "work per layer than kvsim's op list prices.",
    "- **fp8 block GEMMs.** Qwen3-32B-FP8's errors at low rates are the largest: its fp8 GEMM curves come "
    "from the H20-3e tables with no H20 measurement at all, and kvsim's op list has no separate op for "
    "the per-token activation quantisation that precedes each fp8 GEMM.",
    "- **Scheduler CPU time is an estimate** (1.0 ms + 6 us per request per step, not measured), and with "
    "overlap scheduling off it adds to every step: it moves TPOT at low load and decode throughput at "
    "high load.",
    "- **The GSP workload behind the l1/l2 plots is not published.** The 10 x 10 workload here has the "
    "no_cache workload's mean lengths and HiSim's hit ratio, but the real one may differ in lengths and "
    "group count, which moves TTFT and E2E.",
    "- **Reading error.** The real values are read by eye from plots (about 2-5%), and points near a "
    "curve's knee (e.g. TTFT at rate 4 or 8) move a lot with a small shift of the knee.",
)


# ---- main -----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep (and the fit), write the report, the plots and results.csv."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: 2 rates x 10 prompts, no fit")
    parser.add_argument("--no-fit", action="store_true", help="skip fitting the scale factor")
    parser.add_argument(
        "--report",
        type=Path,
        help=f"report path (default {DEFAULT_REPORT.relative_to(REPO)}, or "
        f"{QUICK_OUT.relative_to(REPO)}/hisim_h20.md with --quick); plots and results.csv go beside it "
        "in a folder named after it",
    )
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    sweep = load_sweep()
    rates = [float(r) for r in (sweep["quick"]["rates"] if args.quick else sweep["rates"])]
    report = args.report or (QUICK_OUT / "hisim_h20.md" if args.quick else DEFAULT_REPORT)
    assets = report.parent / report.stem
    assets.mkdir(parents=True, exist_ok=True)
    points = load_published(rates)

    rows = run_jobs(sweep_jobs(sweep, rates, args.quick), args.jobs)
    print(f"swept {len(rows)} runs in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    fit = None
    if not (args.quick or args.no_fit):
        fit, fit_rows = fit_prefill_scale(sweep, points, args.jobs, args.quick)
        print(f"fitted {fit.name} = {fit.value:g} ({len(fit_rows)} runs)", file=sys.stderr)
        if fit.value != 1.0:
            rows += run_jobs(sweep_jobs(sweep, rates, args.quick, fit.value), args.jobs)
    indexed = index_rows(rows)
    pool_rows = [] if args.quick else run_jobs(pool_study_jobs(sweep), args.jobs)

    write_csv(rows, assets / "results.csv")
    plots = {}
    for model, slug in sweep["models"].items():
        plots[model] = plot_model(
            model, sweep, rates, indexed, points, fit.value if fit else None, assets / f"{slug}.png"
        )
    write_report(report, sweep, rates, indexed, points, fit, args.quick, plots, pool_rows)
    print(f"report: {report} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
