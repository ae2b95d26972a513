"""The sweep's results: the per-run table, the per-configuration summary, the Pareto front and the
recommendation.

Goodput of a configuration: the highest rate among its runs that met the SLOs (with a goodput search,
the bisection's answer, which is the same thing). Cost: :mod:`kvsim.sweep.cost`. The Pareto front of
cost against goodput holds the configurations with a goodput above zero that no other configuration
beats on both (no higher cost for no lower goodput, one of them strictly). The recommendation is the
cheapest configuration whose goodput reaches ``sweep.target_rate`` when one is given, otherwise the one
with the lowest cost per request at its goodput (or, without a cost model, the highest goodput); ties
go to the lower configuration id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsim.sweep.paths import flatten, get_path
from kvsim.sweep.spec import Configuration, SweepSpec

#: Columns every row has, in this order, before the inputs.
ID_COLUMNS = ("config_id", "configuration", "step", "run_id", "rate")
RESOURCE_COLUMNS = ("gpus", "l2_bytes", "l3_bytes", "l3_tiers")
SLO_COLUMNS = ("slo_met", "slo_violations", "slo_worst_ratio")
CONFIG_COLUMNS = (
    "goodput_rps",
    "goodput_status",
    "gpu_cost_per_hour",
    "storage_cost_per_hour",
    "cost_per_hour",
    "cost_per_1k_requests",
    "pareto",
    "recommended",
)


@dataclass(slots=True)
class Probe:
    """One run of a configuration: its position, offered rate, id and complete experiment config."""

    config_id: int
    step: int
    rate: float
    run_id: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What the sweep recommends: a configuration (None when nothing qualifies) and why, as text."""

    config_id: int | None
    feasible: bool
    text: str


@dataclass(slots=True)
class ConfigOutcome:
    """A configuration's goodput as its runs (or its search) established it."""

    goodput: float | None
    status: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def gpus_of(config: Mapping[str, Any]) -> int:
    """GPUs a configuration occupies: ``server.tp`` x ``cluster.instances`` (1 without a cluster)."""
    tp = get_path(config, "server.tp", None) or 1
    instances = get_path(config, "cluster.instances", None) or 1
    return int(tp) * int(instances)


def run_row(
    spec: SweepSpec, configuration: Configuration, probe: Probe, record: Mapping[str, Any]
) -> dict[str, Any]:
    """One run's row: identity, variant labels, every input, status, every metric, resources, SLOs."""
    row: dict[str, Any] = {
        "config_id": probe.config_id,
        "configuration": configuration.describe(),
        "step": probe.step,
        "run_id": probe.run_id,
        "rate": probe.rate,
    }
    row.update({f"variant.{name}": label for name, label in configuration.labels})
    row.update(flatten({k: v for k, v in probe.config.items() if k != "output"}))
    row["status"] = record["status"]
    row["error"] = record.get("error")
    metrics = record.get("metrics") or {}
    row.update(metrics)
    resources = record.get("resources") or {}
    row["gpus"] = gpus_of(probe.config)
    for key in RESOURCE_COLUMNS[1:]:
        row[key] = resources.get(key)
    if spec.slo is not None:
        ok = record["status"] == "ok"
        violations = spec.slo.violations(metrics) if ok else ["run failed"]
        row["slo_met"] = ok and not violations
        row["slo_violations"] = "; ".join(violations)
        row["slo_worst_ratio"] = spec.slo.worst_ratio(metrics) if ok else math.inf
    return row


def outcome_from_rows(rows: Sequence[Mapping[str, Any]]) -> ConfigOutcome:
    """Goodput of a configuration whose rates were given (a load axis, or its one base rate)."""
    if not rows or "slo_met" not in rows[0]:
        return ConfigOutcome(None, None)
    met = [row["rate"] for row in rows if row["slo_met"]]
    if not met:
        return ConfigOutcome(0.0, "none")
    best = max(met)
    return ConfigOutcome(best, "capped" if best >= max(row["rate"] for row in rows) else "ok")


def _cost(
    spec: SweepSpec, configuration: Configuration, rows: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """The configuration's $/h from the resources its successful runs provisioned (the most of them)."""
    nan = {"gpu_cost_per_hour": math.nan, "storage_cost_per_hour": math.nan, "cost_per_hour": math.nan}
    if spec.cost is None:
        return nan
    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        return nan
    storage: dict[str, float] = {}
    l2 = max(row["l2_bytes"] or 0 for row in ok)
    if l2:
        from kvsim.sweep.cost import L2_TIER

        storage[L2_TIER] = float(l2)
    l3 = max(row["l3_bytes"] or 0 for row in ok)
    tiers = [t for t in (ok[0]["l3_tiers"] or "").split(",") if t]
    if l3 and tiers:
        tier = spec.cost.dearest(tiers)
        storage[tier] = storage.get(tier, 0.0) + float(l3)
    return spec.cost.breakdown(str(configuration.config["gpu"]), gpus_of(configuration.config), storage)


def pareto_front(points: Mapping[int, tuple[float, float]]) -> set[int]:
    """Ids of the points ``id -> (cost, goodput)`` no other point dominates (cost <= and goodput >=,
    one strictly). Points with a goodput of 0 or an unknown cost are never on the front."""
    valid = {k: v for k, v in points.items() if v[1] > 0 and math.isfinite(v[0])}
    front = set()
    for key, (cost, goodput) in valid.items():
        dominated = any(
            c <= cost and g >= goodput and (c < cost or g > goodput)
            for k, (c, g) in valid.items()
            if k != key
        )
        if not dominated:
            front.add(key)
    return front


def summarize_configs(
    spec: SweepSpec,
    configurations: Sequence[Configuration],
    rows_by_config: Mapping[int, Sequence[Mapping[str, Any]]],
    outcomes: Mapping[int, ConfigOutcome],
) -> list[dict[str, Any]]:
    """One row per configuration: its settings, runs, goodput, cost and place on the Pareto front."""
    summaries = []
    for configuration in configurations:
        rows = rows_by_config[configuration.config_id]
        outcome = outcomes[configuration.config_id]
        cost = _cost(spec, configuration, rows)
        goodput = outcome.goodput
        per_1k = math.nan
        if goodput and math.isfinite(cost["cost_per_hour"]):
            per_1k = cost["cost_per_hour"] / (goodput * 3600.0) * 1000.0
        summary: dict[str, Any] = {
            "config_id": configuration.config_id,
            "configuration": configuration.describe(),
        }
        summary.update({path: value for path, value in configuration.grid})
        summary.update({f"variant.{name}": label for name, label in configuration.labels})
        summary.update(
            {
                "runs": len(rows),
                "failed_runs": sum(1 for row in rows if row["status"] != "ok"),
                "first_error": next((row["error"] for row in rows if row["status"] != "ok"), None),
                "gpus": gpus_of(configuration.config),
                "goodput_rps": math.nan if goodput is None else goodput,
                "goodput_status": outcome.status,
                **cost,
                "cost_per_1k_requests": per_1k,
            }
        )
        # The SLO metrics where the goodput was measured (the run at the goodput rate).
        if spec.slo is not None and goodput:
            at = next(row for row in rows if row["rate"] == goodput and row["slo_met"])
            for bound in spec.slo.bounds:
                summary[f"at_goodput.{bound.metric}"] = at.get(bound.metric)
        summaries.append(summary)
    front = pareto_front({s["config_id"]: (s["cost_per_hour"], s["goodput_rps"]) for s in summaries})
    for summary in summaries:
        summary["pareto"] = summary["config_id"] in front
    return summaries


def _money(value: float) -> str:
    return f"${value:,.2f}" if math.isfinite(value) else "n/a"


def recommend(
    spec: SweepSpec, summaries: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> Recommendation:
    """Pick the recommended configuration (see the module docstring) and explain it in a few lines."""
    if spec.slo is None:
        return Recommendation(
            None, False, "no slo: section, so no goodput and no recommendation; see the table"
        )
    slos = spec.slo.describe()
    ok_rows = [row for row in rows if row["status"] == "ok"]
    if not ok_rows:
        first = next((row["error"] for row in rows if row.get("error")), "unknown error")
        return Recommendation(None, False, f"every run failed; the first error: {first}")
    feasible = [s for s in summaries if s["goodput_rps"] and s["goodput_rps"] > 0]
    if not feasible:
        lowest = min(row["rate"] for row in rows)
        closest = min(ok_rows, key=lambda row: (row["slo_worst_ratio"], row["config_id"], row["step"]))
        return Recommendation(
            None,
            False,
            f"no configuration meets the SLOs ({slos}) at any rate tried (the lowest: {lowest:g} req/s).\n"
            f"closest: config {closest['config_id']} ({closest['configuration']}) "
            f"at {closest['rate']:g} req/s: {closest['slo_violations']}.\n"
            f"Relax the SLOs, lower {'sweep.goodput.low' if spec.goodput else 'the rate'}, "
            "or add larger configurations.",
        )
    costed = spec.cost is not None
    if spec.target_rate is not None:
        reaching = [s for s in feasible if s["goodput_rps"] >= spec.target_rate]
        if not reaching:
            best = max(feasible, key=lambda s: (s["goodput_rps"], -s["config_id"]))
            return Recommendation(
                None,
                False,
                f"no configuration reaches the target rate {spec.target_rate:g} req/s "
                f"within the SLOs ({slos}); "
                f"the highest goodput is config {best['config_id']} ({best['configuration']}) with "
                f"{best['goodput_rps']:g} req/s. Add larger configurations or lower sweep.target_rate.",
            )
        if costed:
            pick = min(reaching, key=lambda s: (_key(s["cost_per_hour"]), -s["goodput_rps"], s["config_id"]))
            why = f"the cheapest of {len(reaching)} configurations reaching {spec.target_rate:g} req/s"
        else:
            pick = max(reaching, key=lambda s: (s["goodput_rps"], -s["config_id"]))
            why = f"the highest goodput of {len(reaching)} configurations reaching {spec.target_rate:g} req/s"
    elif costed:
        pick = min(feasible, key=lambda s: (_key(s["cost_per_1k_requests"]), s["config_id"]))
        why = f"the lowest cost per request of {len(feasible)} configurations meeting the SLOs"
    else:
        pick = max(feasible, key=lambda s: (s["goodput_rps"], -s["config_id"]))
        why = f"the highest goodput of {len(feasible)} configurations meeting the SLOs (no cost: section)"
    capped = ""
    if pick["goodput_status"] == "capped":
        where = "sweep.goodput.high" if spec.goodput is not None else "the highest rate run"
        capped = f" (at least: the SLOs still held at {where})"
    lines = [
        f"recommended: config {pick['config_id']} ({pick['configuration']})",
        f"  goodput {pick['goodput_rps']:g} req/s{capped} within {slos}",
    ]
    if costed:
        lines.append(
            f"  cost {_money(pick['cost_per_hour'])}/h ({_money(pick['gpu_cost_per_hour'])} GPUs, "
            f"{_money(pick['storage_cost_per_hour'])} storage), "
            f"{_money(pick['cost_per_1k_requests'])} per 1k requests"
        )
    at = [(b.metric, pick.get(f"at_goodput.{b.metric}")) for b in spec.slo.bounds]
    lines.append("  at goodput: " + ", ".join(f"{m} {v:.4g}" for m, v in at if isinstance(v, int | float)))
    lines.append(f"  why: {why}")
    return Recommendation(int(pick["config_id"]), True, "\n".join(lines))


def _key(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def to_arrow(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows as a ``pyarrow.Table``: columns in first-seen order, one type per column.

    A column whose values mix types is stored as text (JSON for non-strings), and ints mixed with floats
    as floats, so that every sweep writes a valid Parquet file.
    """
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    arrays = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        arrays[name] = _array(pa, values)
    return pa.table(arrays)


def _array(pa: Any, values: list[Any]) -> Any:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.array(values, type=pa.null())
    if kinds == {bool}:
        return pa.array(values, type=pa.bool_())
    if kinds == {int}:
        return pa.array(values, type=pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if kinds == {str}:
        return pa.array(values, type=pa.string())
    text = [None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values]
    return pa.array(text, type=pa.string())
