"""``kvsim optimize``: trace-replay KV-cache hit rates and capacity planning.

Replays a cache trace against eviction policies and capacities and prints the hit rates (a table, or
``--json``). ``--curve`` answers many capacities at once (exact LRU from one stack-distance pass, other
policies in parallel processes), ``--tiers`` splits the hit rate over a storage hierarchy, ``--model``
converts blocks to GB, ``--target-hit-rate`` finds the smallest capacity that reaches a hit rate, and
``--config`` replays a KVCM optimizer config (instance groups, quotas, eviction modes).
``--output-dir`` writes per-read CSVs, ``summary.json`` and plots. Semantics: ``docs/optimize.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from kvsim.core.errors import UserInputError
from kvsim.models.spec import KV_CACHE_DTYPE_CHOICES

if TYPE_CHECKING:  # the optimizer is imported only when the subcommand runs
    from kvsim.cache.optimizer import OptimizerConfig, PolicyParams, ReplayResult, Trace
    from kvsim.cache.optimizer.logged import LoggedStats

#: The extra policy name that replays a publisher log as it happened.
LOGGED = "logged"
#: Capacities of ``--curve`` when ``--capacity-blocks`` is not given.
DEFAULT_CURVE_POINTS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    trace = parser.add_argument_group("trace")
    trace.add_argument("--trace", metavar="PATH", help="trace file")
    trace.add_argument(
        "--trace-format",
        metavar="FMT",
        help="mooncake, qwen_bailian, publisher_log, optimizer_schema or hisim_collection",
    )
    trace.add_argument("--block-size", type=int, metavar="N", help="tokens per block (default: the format's)")
    cache = parser.add_argument_group("cache")
    cache.add_argument(
        "--policy",
        metavar="P[,P...]",
        help="lru (default), random_lru, leaf_aware_lru, lfu, ttl, s3fifo, opt; logged (publisher_log only); "
        "with --config, replaces every instance's policy",
    )
    cache.add_argument("--capacity-blocks", metavar="N[,N...]", help="capacities in blocks, or inf")
    cache.add_argument(
        "--curve",
        action="store_true",
        help="exact LRU curve in one pass; other policies sweep in parallel processes",
    )
    cache.add_argument(
        "--curve-points",
        type=int,
        default=DEFAULT_CURVE_POINTS,
        metavar="N",
        help="with --curve and no --capacity-blocks: N log-spaced capacities up to the trace's blocks, + inf",
    )
    cache.add_argument(
        "--tiers", metavar="NAME:N,...", help="storage tiers, fastest first, e.g. HBM:4000,DRAM:40000"
    )
    cache.add_argument("--placement", default="inclusive", help="tier placement: inclusive or exclusive")
    cache.add_argument(
        "--config", metavar="FILE.json", help="a KVCM optimizer config (groups, quotas, modes)"
    )
    cache.add_argument("--seed", type=int, default=1, help="seed of random_lru's sampling")
    cache.add_argument(
        "--sample-rate", type=float, default=0.1, help="random_lru: sample size = batch / rate"
    )
    cache.add_argument("--ttl-seconds", type=float, default=300.0, help="ttl: lifetime after the last access")
    cache.add_argument("--jobs", type=int, metavar="N", help="worker processes for sweeps (default: CPUs)")
    plan = parser.add_argument_group("planning")
    plan.add_argument(
        "--model", metavar="M", help="bundled model name or config.json: report capacities in GB"
    )
    plan.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPE_CHOICES)
    plan.add_argument(
        "--target-hit-rate", type=float, metavar="X", help="smallest capacity reaching this rate"
    )
    plan.add_argument(
        "--target-metric",
        default="token_hit_rate",
        help="token_hit_rate (default) or block_hit_rate, for --target-hit-rate",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--output-dir", metavar="D", help="write per-read CSVs, summary.json and plots")


def parse_capacities(text: str) -> list[float]:
    """Parse ``N[,N...]`` (``inf`` allowed) into capacities; each must be a whole number > 0."""
    out: list[float] = []
    for part in text.split(","):
        token = part.strip().lower()
        if token in ("inf", "infinity", "unbounded"):
            out.append(math.inf)
            continue
        try:
            value = float(token)
        except ValueError:
            raise UserInputError(
                f"--capacity-blocks: {part.strip()!r} is not a number of blocks or inf"
            ) from None
        if not math.isfinite(value) or value != int(value) or value <= 0:
            raise UserInputError(
                f"--capacity-blocks: capacities must be whole numbers > 0 or inf, got {part.strip()}"
            )
        out.append(int(value))
    return out


def parse_policies(text: str) -> list[str]:
    """Split ``P[,P...]`` and check every name (the message lists the choices)."""
    from kvsim.cache.optimizer import POLICIES

    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UserInputError("--policy: give at least one policy")
    choices = [*POLICIES, LOGGED]
    for name in names:
        if name not in choices:
            raise UserInputError(f"unknown policy {name!r}; choose one of: {', '.join(choices)}")
    return list(dict.fromkeys(names))


def _curve_capacities(n_blocks: int, points: int) -> list[float]:
    """``points`` log-spaced capacities from 1 to ``n_blocks`` (rounded, distinct), then ``inf``."""
    import numpy as np

    if points < 2:
        raise UserInputError(f"--curve-points must be >= 2, got {points}")
    caps = sorted({round(float(x)) for x in np.geomspace(1, max(2, n_blocks), points)})
    return [*caps, math.inf]


def _gb_per_block(model: str, kv_cache_dtype: str, block_size: int) -> float:
    """GB (10^9 bytes) of one block of ``block_size`` tokens of ``model``'s KV."""
    from kvsim.models import kv_bytes_per_token, load_model_spec, resolve_precision

    spec = load_model_spec(model)
    # Whole-model KV (tp=1): the global cache stores every head of every layer once.
    per_token = kv_bytes_per_token(spec, resolve_precision(spec, kv_cache_dtype=kv_cache_dtype))
    return per_token * block_size / 1e9


def run(args: argparse.Namespace) -> int:
    """Load the trace, replay, print (and write) the results."""
    from kvsim.cache.optimizer import FORMATS, PolicyParams, load_config, load_trace, parse_tiers
    from kvsim.cache.optimizer.sweep import PLACEMENTS

    policies = parse_policies(args.policy or "lru")
    capacities = parse_capacities(args.capacity_blocks) if args.capacity_blocks is not None else None
    if args.jobs is not None and args.jobs < 1:
        raise UserInputError(f"--jobs must be >= 1, got {args.jobs}")
    if args.target_metric not in ("token_hit_rate", "block_hit_rate"):
        raise UserInputError(
            f"--target-metric must be token_hit_rate or block_hit_rate, got {args.target_metric!r}"
        )
    if args.placement not in PLACEMENTS:
        raise UserInputError(f"unknown placement {args.placement!r}; choose one of: {', '.join(PLACEMENTS)}")
    if args.target_hit_rate is not None and not 0 < args.target_hit_rate <= 1:
        raise UserInputError(f"--target-hit-rate must be in (0, 1], got {args.target_hit_rate}")
    cfg = load_config(args.config) if args.config else None
    path = args.trace or (cfg.trace_file_path if cfg else None)
    fmt = args.trace_format or (cfg.trace_type if cfg else None)
    if not path:
        raise UserInputError("--trace is required (or a --config with trace_file_path)")
    if not fmt:
        raise UserInputError(f"--trace-format is required; choose one of: {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise UserInputError(f"unknown trace format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if LOGGED in policies and fmt != "publisher_log":
        raise UserInputError(
            "--policy logged replays a publisher_log as it happened; other formats have no log"
        )
    tiers = parse_tiers(args.tiers) if args.tiers else None
    if tiers and capacities is not None:
        raise UserInputError("--tiers sets the capacities; drop --capacity-blocks")
    if cfg is not None:
        if tiers or args.target_hit_rate is not None:
            raise UserInputError(
                "--tiers and --target-hit-rate follow the plain replay; drop --config for them"
            )
        if capacities and any(math.isinf(c) for c in capacities):
            raise UserInputError(
                "with --config, --capacity-blocks replaces quota_capacity and must be finite"
            )
    replay_policies = [p for p in policies if p != LOGGED]
    needs_capacity = not (capacities or args.curve or tiers or args.target_hit_rate is not None)
    if cfg is None and replay_policies and needs_capacity:
        raise UserInputError("--capacity-blocks is required (or --curve, --tiers or --target-hit-rate)")

    block_size = args.block_size if args.block_size is not None else (cfg.block_size if cfg else None)
    params = PolicyParams(sample_rate=args.sample_rate, ttl_s=args.ttl_seconds, seed=args.seed)
    out_dir = args.output_dir or (cfg.output_result_path if cfg else None)
    trace = load_trace(path, fmt, block_size, instances=cfg.instance_ids if cfg else None)
    for note in trace.notes:
        print(f"kvsim optimize: warning: {note}", file=sys.stderr)
    gb_per_block = _gb_per_block(args.model, args.kv_cache_dtype, trace.block_size) if args.model else None

    results, extras = _replay_all(
        args, trace, cfg, policies, capacities, tiers, params, timeline=out_dir is not None, path=path
    )
    entries = []
    for res, extra in zip(results, extras, strict=True):
        entry = res.to_json()
        if gb_per_block is not None:
            entry["capacity_gb"] = (
                "inf" if math.isinf(res.capacity_blocks) else res.capacity_blocks * gb_per_block
            )
        entry.update(extra)
        entries.append(entry)
    payload: dict[str, Any] = {"results": entries}
    if args.target_hit_rate is not None:
        payload["target"] = _target(args, trace, replay_policies, params, gb_per_block)
    if out_dir:
        _write(out_dir, payload, results, trace, path, fmt, policies, args.model, gb_per_block)
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        _print_table(payload)
        if out_dir:
            print(f"outputs written to {out_dir}")
    return 0


def _replay_all(
    args: argparse.Namespace,
    trace: Trace,
    cfg: OptimizerConfig | None,
    policies: list[str],
    capacities: list[float] | None,
    tiers: list[tuple[str, int]] | None,
    params: PolicyParams,
    *,
    timeline: bool,
    path: str,
) -> tuple[list[ReplayResult], list[dict[str, Any]]]:
    """Run every replay the flags ask for; return the results and each one's extra JSON fields."""
    from kvsim.cache.optimizer import Job, replay_config, run_jobs, tier_levels, tier_results

    results: list[ReplayResult] = []
    extras: list[dict[str, Any]] = []
    replay_policies = [p for p in policies if p != LOGGED]
    if LOGGED in policies:
        logged, stats = _run_logged(path, trace.block_size, timeline)
        for note in stats.notes():
            print(f"kvsim optimize: warning: {note}", file=sys.stderr)
        results.append(logged)
        counts = ("written_blocks", "failed_blocks", "expired_blocks", "reclaimed_blocks")
        extras.append({"logged": {name: getattr(stats, name) for name in counts}})
    if cfg is not None:
        # Without --policy the config's own policies run; with it, every instance's is replaced.
        overrides: list[str | None] = list(replay_policies) if args.policy else [None]
        quotas: list[float | None] = list(capacities) if capacities else [None]
        for policy in overrides:
            for cap in quotas:
                run_cfg = cfg.with_overrides(policy, None if cap is None else int(cap))
                for res in replay_config(trace, run_cfg, seed=args.seed, timeline=timeline):
                    results.append(res)
                    extras.append({})
    elif tiers:
        levels = tier_levels(tiers, args.placement)
        jobs = [Job(p, c) for p in replay_policies for c in levels]
        done = run_jobs(trace, jobs, params, curve=True, processes=args.jobs, timeline=timeline)
        for i in range(len(replay_policies)):
            whole, per_tier = tier_results(done[i * len(levels) : (i + 1) * len(levels)], tiers)
            results.append(whole)
            extras.append({"per_tier": per_tier})
    else:
        caps = capacities if capacities is not None else []
        if capacities is None and args.curve:
            caps = _curve_capacities(trace.n_ids, args.curve_points)
        jobs = [Job(p, c) for p in replay_policies for c in caps]
        for res in run_jobs(trace, jobs, params, curve=args.curve, processes=args.jobs, timeline=timeline):
            results.append(res)
            extras.append({})
    return results, extras


def _target(
    args: argparse.Namespace,
    trace: Trace,
    policies: list[str],
    params: PolicyParams,
    gb_per_block: float | None,
) -> dict[str, Any]:
    """The ``target`` section: the smallest capacity reaching the target, per policy."""
    from kvsim.cache.optimizer import smallest_capacity

    rows = []
    for policy in policies:
        cap = smallest_capacity(trace, policy, args.target_hit_rate, args.target_metric, params)
        row: dict[str, Any] = {"policy": policy, "capacity_blocks": cap}
        if gb_per_block is not None:
            row["capacity_gb"] = None if cap is None else cap * gb_per_block
        rows.append(row)
    return {"metric": args.target_metric, "hit_rate": args.target_hit_rate, "results": rows}


def _write(
    out_dir: str,
    payload: dict[str, Any],
    results: list[ReplayResult],
    trace: Trace,
    path: str,
    fmt: str,
    policies: list[str],
    model: str | None,
    gb_per_block: float | None,
) -> None:
    """Write ``--output-dir``: ``summary.json`` (the payload plus what was replayed), CSVs and plots."""
    from kvsim.cache.optimizer.output import write_outputs

    summary = dict(payload)
    summary["trace"] = {
        "path": str(path),
        "format": fmt,
        "block_size": trace.block_size,
        "requests": trace.n_requests,
        "reads": trace.n_reads,
        "distinct_blocks": trace.n_ids,
        "instances": list(trace.instances),
    }
    summary["notes"] = trace.notes
    if gb_per_block is not None:
        summary["model"] = {"name": model, "gb_per_block": gb_per_block}
    instances = list(trace.instances)
    if LOGGED in policies:
        from kvsim.cache.optimizer.logged import instance_names
        from kvsim.workloads.publisher_log import iter_publisher_events

        # The logged replay numbers instances in its own (time) order; the capacity replays share it
        # for a single-instance log, which is the common case.
        instances = list(instance_names(iter_publisher_events(path, trace.block_size)))
    write_outputs(out_dir, summary, results, instances, gb_per_block)


def _run_logged(path: str, block_size: int, timeline: bool) -> tuple[ReplayResult, LoggedStats]:
    """Replay a publisher log as it happened."""
    from kvsim.cache.optimizer import replay_logged
    from kvsim.workloads.publisher_log import iter_publisher_events

    return replay_logged(iter_publisher_events(path, block_size), block_size, timeline=timeline)


def _print_table(payload: dict[str, Any]) -> None:
    """Print the results as an aligned table, then tiers and targets."""
    rows = payload["results"]
    has_gb = any("capacity_gb" in r for r in rows)
    header = [
        "policy",
        "capacity_blocks",
        *(["capacity_gb"] if has_gb else []),
        "token_hit",
        "block_hit",
        "requests",
        "hit_blocks",
        "evicted",
    ]
    table = [header]
    for r in rows:
        name = f"{r['group']}: {r['policy']}" if "group" in r else r["policy"]
        gb = r.get("capacity_gb")
        table.append(
            [
                name,
                f"{r['capacity_blocks']:,}"
                if isinstance(r["capacity_blocks"], int)
                else str(r["capacity_blocks"]),
                *([f"{gb:,.2f}" if isinstance(gb, float) else str(gb)] if has_gb else []),
                f"{r['token_hit_rate']:.4f}",
                f"{r['block_hit_rate']:.4f}",
                f"{r['requests']:,}",
                f"{r['hit_blocks']:,}",
                f"{r['evicted_blocks']:,}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for r in rows:
        for tier in r.get("per_tier", []):
            print(
                f"  {r['policy']} tier {tier['tier']}: {tier['capacity_blocks']:,} blocks, "
                f"hit rate +{tier['hit_rate']:.4f} (cumulative {tier['cumulative_hit_rate']:.4f})"
            )
    target = payload.get("target")
    if target:
        for t in target["results"]:
            cap = t["capacity_blocks"]
            reach = "unreachable" if cap is None else f"{cap:,} blocks"
            if cap is not None and "capacity_gb" in t:
                reach += f" ({t['capacity_gb']:,.2f} GB)"
            print(f"target {target['metric']} >= {target['hit_rate']}: {t['policy']} needs {reach}")
