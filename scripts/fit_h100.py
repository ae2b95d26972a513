"""Build the packaged H100 profile from this project's one ``kvsim calibrate`` run, fit it, measure it.

    python scripts/fit_h100.py [--run DIR] [--reference DIR DIR]

Reads ``calibration/results/h100-2026-11-28-run1`` (the suite on this project's H100 80GB HBM3 SXM) and,
as the yardstick for host-bound rows, the H200's two runs of the same day (``h200-2026-11-28-run{1,2}``),
then writes:

- ``kvsim/hardware/profiles/H100/*.csv``: the run's GEMM, prefill- and decode-attention, elementwise, copy
  and extend-attention tables with host-bound rows dropped (:func:`clean_run`, the rule below), prefill rows
  tagged with their backend; the run's ``launch.csv`` beside them. ``meta.json`` is the run's, plus a
  ``packaged`` record of all this;
- ``kvsim/hardware/profiles/H100/fitted.yaml``: timing floor 0 (the rows are kernel time), every family
  fitted on these rows with the functions of ``scripts/fit_h200.py`` (fp8-KV attention and all-reduces by
  stated priors), the H200's FA3 correction of the prefill table (why it transfers: :func:`fa3_transfer`),
  and the leave-one-out errors the predictor turns into ranges;
- the ``"H100"`` entry of ``docs/validation/data/step_time_fit.json``, for ``scripts/validate_step_time.py``.

**The single-run rule.** The H200's tables repair host-bound rows from a second run; the H100 has one.
This H100's host is slower than the H200's (11 us against 6.3-6.6 us to launch a tiny kernel, ``launch.csv``)
and takes 55-140 us to issue one Triton or SDPA call, longer than the 30 us per repeat the suite keeps
the GPU asleep, so many small-kernel rows time the host: they sit at a plateau of 55-140 us whatever
their size (RoPE's dozen torch calls at 0.4 ms). Both GPUs are the same GH100 die (132 SMs, the same
clocks), measured the same day with the same driver, torch and Triton; the H100 differs in HBM (3.35
against 4.8 TB/s), so a kernel takes at most about 1.43x its H200 time (weight-streaming GEMMs measure up
to 1.56x: the H100 streams at a slightly lower fraction of its peak). A host-bound error only adds time,
so, against the H200's rows (the faster of its two runs; host-bound as its own merge found them):

1. a row of kernel time (every table but copies) is dropped when it is more than :data:`TWIN_RATIO` = 1.6
   times its H200 twin (no kernel of this suite is that much slower on the H100; every row past it sits
   at the host's plateau), or when the H200's merge dropped its twin as host-bound in both H200 runs (the
   same call, on this slower host against a kernel at most 1.43x slower, times the host too);
2. then, on the attention tables, the H200 merge's other rule runs unchanged: a row 1.5x slower than a
   row of its shape doing at least as much work is dropped (:func:`kvsim.perf.validation.merge_runs`).

Copies are timed as served (one host call per copy), so this host's speed is part of what they measure:
they are never compared with the H200. GEMM and elementwise tables skip rule 2 as the H200's do (their
non-monotone rows are kernel choices, such as embedding's 8- and 16-token rows).

Deterministic: rerunning it on the same runs rewrites the same files. Run ``scripts/fit_h200.py`` first:
the FA3 factor is read from the H200's ``fitted.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvsim.hardware.profile import OP_FAMILIES, load_profile_folder  # noqa: E402
from kvsim.hardware.tables import parse_table  # noqa: E402
from kvsim.perf.validation import HOST_BOUND_RATIO, ROW_SHAPES, RowFix, merge_runs  # noqa: E402
from scripts.fit_h20 import allreduce_prior, generated_header, write_yaml  # noqa: E402
from scripts.fit_h200 import (  # noqa: E402
    FA3_MIN_SEQ,
    FIT_JSON,
    extend_rows,
    fit_attention,
    fit_copies,
    fit_elementwise,
    fit_gemm,
    read_rows,
    write_rows,
)

PROFILES = REPO / "kvsim" / "hardware" / "profiles"
PROFILE = PROFILES / "H100"
H200_FITTED = PROFILES / "H200" / "fitted.yaml"
RESULTS = REPO / "calibration" / "results"
RUN = RESULTS / "h100-2026-11-28-run1"
REFERENCE = (RESULTS / "h200-2026-11-28-run1", RESULTS / "h200-2026-11-28-run2")
#: A row of kernel time more than this many times its H200 twin timed this H100's host (module docstring):
#: above the HBM bandwidth ratio (1.43) and the weight-streaming GEMMs' 1.56, in the empty gap below the
#: host's plateau that every table of the 2026-11-28 runs shows (step_time.md, *The H100 tables*).
TWIN_RATIO = 1.6


@dataclass(frozen=True)
class TableRule:
    """How one ``kvsim calibrate`` table is cleaned: its profile family and file, and which rules apply."""

    table: str  # the table's name in the run (and in the report)
    family: str  # profile family, or a report-only name (extend_attention)
    file: str
    against_twin: bool  # rule 1: compare with the H200's twin (kernel time only)
    drop_dominated: bool  # rule 2: the H200 merge's dominance rule (attention tables)


TABLES = (
    TableRule("gemm", "gemm", "gemm.csv", True, False),
    TableRule("prefill_attention", "attention_prefill", "prefill_attention.csv", True, True),
    TableRule("decode_attention", "attention_decode", "decode_attention.csv", True, True),
    TableRule("elementwise", "elementwise", "elementwise.csv", True, False),
    TableRule("copy", "host_copy", "copy.csv", False, False),
    TableRule("extend_attention", "extend_attention", "extend_attention.csv", True, True),
)
RULES = {rule.table: rule for rule in TABLES}


def _key(row: dict[str, str], family: str) -> tuple[str, ...]:
    """A row's full shape (kernel and size columns): rows of two runs with equal keys time the same call."""
    return tuple(row.get(c, "") for part in ROW_SHAPES[family] for c in part)


@dataclass(frozen=True)
class Twins:
    """The H200's rows of one table: the kernel time of each row shape, and which shapes timed the host.

    ``times``: the faster of the H200 runs per row shape, in milliseconds (a host-bound error only adds
    time); ``host_bound``: shapes the H200's own merge (:func:`merge_runs`, as its packaged table has them)
    dropped because both H200 runs timed the host there.
    """

    times: dict[tuple[str, ...], float]
    host_bound: frozenset[tuple[str, ...]]

    @classmethod
    def of(cls, rule: TableRule, reference: list[list[dict[str, str]]]) -> Twins:
        """The twins of ``rule``'s table in the H200 runs ``reference`` (the first is its run 1)."""
        times: dict[tuple[str, ...], float] = {}
        for run in reference:
            for row in run:
                key, ms = _key(row, rule.family), float(row["latency_ms"])
                times[key] = min(ms, times.get(key, ms))
        second = reference[1] if len(reference) > 1 else None
        _, fixes = merge_runs(rule.family, reference[0], second, drop_dominated=rule.drop_dominated)
        dropped = frozenset(_key(f.row, rule.family) for f in fixes if f.action == "dropped")
        return cls(times, dropped)


def clean_run(
    rule: TableRule, rows: list[dict[str, str]], reference: list[list[dict[str, str]]]
) -> tuple[list[dict[str, str]], list[RowFix]]:
    """One run's rows with host-bound ones dropped (the module's single-run rule), and what was dropped.

    ``reference`` are the H200's runs of the same table. Rule 1 drops rows more than :data:`TWIN_RATIO`
    times their H200 twin (action ``"twin"``, ``faster_ms`` the twin's time) and rows whose twin the H200's
    merge dropped as host-bound in both its runs (action ``"twin_host_bound"``, ``faster_ms`` 0); rule 2 is
    :func:`~kvsim.perf.validation.merge_runs` without a second run (action ``"dropped"``). Kept rows are
    the CSV text as read, in run order.
    """
    fixes: list[RowFix] = []
    kept = rows
    if rule.against_twin:
        twins = Twins.of(rule, reference)
        kept = []
        for row in rows:
            key = _key(row, rule.family)
            twin = twins.times.get(key)
            if key in twins.host_bound:
                fixes.append(RowFix(dict(row), "twin_host_bound", 0.0))
            elif twin is not None and float(row["latency_ms"]) > TWIN_RATIO * twin:
                fixes.append(RowFix(dict(row), "twin", twin))
            else:
                kept.append(row)
    kept, dominated = merge_runs(rule.family, kept, None, drop_dominated=rule.drop_dominated)
    return kept, fixes + dominated


def _tagged(rows: list[dict[str, str]], backend: str) -> list[dict[str, str]]:
    return [{**r, "backend": backend} for r in rows]


# ---- the packaged tables -----------------------------------------------------------------------------------


def ratio_record(family: str, rows: list[dict[str, str]], twins: Twins) -> dict[str, float]:
    """H100 / H200 time ratios of the rows rule 1 keeps and of those it drops: the gap it cuts in.

    Rows dropped because their twin was host-bound have no meaningful ratio and count in neither.
    """
    kept: list[float] = []
    cut: list[float] = []
    for row in rows:
        key = _key(row, family)
        twin = twins.times.get(key)
        if twin is not None and key not in twins.host_bound:
            ratio = float(row["latency_ms"]) / twin
            (cut if ratio > TWIN_RATIO else kept).append(ratio)
    out: dict[str, float] = {}
    if kept:
        out["kept_median"] = round(float(np.median(kept)), 4)
        out["kept_max"] = round(max(kept), 4)
    if cut:
        out["twin_dropped_min"] = round(min(cut), 4)
    return out


def build_tables(run: Path, reference: tuple[Path, ...]) -> dict[str, Any]:
    """Write the packaged tables and meta.json; returns what the cleaning kept and dropped per table."""
    meta = json.loads((run / "meta.json").read_text())
    prefill_backend = str(meta["backends"]["prefill_attention"])
    record: dict[str, Any] = {}
    for rule in TABLES:
        header, rows = read_rows(run / rule.file)
        others = [read_rows(folder / rule.file)[1] for folder in reference]
        if rule.table == "prefill_attention":
            # The run's meta.json names the kernel (the H200's is the same); the predictor keys rows by it.
            header = [*header, "backend"]
            rows = _tagged(rows, prefill_backend)
            others = [_tagged(other, prefill_backend) for other in others]
        kept, fixes = clean_run(rule, rows, others)
        write_rows(PROFILE / rule.file, header, kept)
        record[rule.table] = {
            "file": rule.file,
            "run_rows": len(rows),
            "rows": len(kept),
            "over_twin": sum(f.action == "twin" for f in fixes),
            "twin_host_bound": sum(f.action == "twin_host_bound" for f in fixes),
            "dominated": sum(f.action == "dropped" for f in fixes),
        }
        if rule.against_twin:
            record[rule.table]["ratio_to_h200"] = ratio_record(rule.family, rows, Twins.of(rule, others))
    shutil.copy2(run / "launch.csv", PROFILE / "launch.csv")
    _, e2e = read_rows(run / "e2e.csv")
    record["e2e"] = {"rows": len(e2e)}
    meta["packaged"] = {
        "by": "scripts/fit_h100.py",
        "from": [str(run.relative_to(REPO))],
        "reference": [str(folder.relative_to(REPO)) for folder in reference],
        "rule": (
            "one run, so no twin run to repair from: a row of kernel time (all tables but copy, which is "
            f"timed as served) more than {TWIN_RATIO}x its H200 twin (the faster of the H200's two runs of "
            "the same day), or whose H200 twin the H200's merge dropped as host-bound, is dropped "
            "(same GH100 die, clocks and software; the H100's lower HBM bandwidth makes kernels at most "
            "about 1.43x slower, GEMM weight streams 1.56x, and its host is slower); then an attention row "
            f"more than {HOST_BOUND_RATIO}x slower than a row of its shape doing at least as much work is "
            "dropped (the H200 merge's rule). Dropped rows are where the GPU waited on this host's 55-140 us "
            "per Triton or SDPA call"
        ),
        "prefill_attention_backend": prefill_backend,
        "tables": {t: {k: v for k, v in r.items() if k != "ratio_to_h200"} for t, r in record.items()},
        "not_served": {
            "rope": "about a dozen unfused torch kernels; SGLang fuses RoPE (served by the stream model)",
            "sampling": "softmax + multinomial in torch; not an op of the predictor's forward step",
            "extend_attention": "kept for the validation report; the prefill table serves extends",
        },
    }
    (PROFILE / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return record


# ---- the FA3 correction ------------------------------------------------------------------------------------


def fa3_transfer(prefill_backend: str, reference: tuple[Path, ...]) -> dict[str, Any]:
    """The H200's ``<backend>->fa3`` factor and why it holds on the H100.

    The factor is a ratio of two kernels' compute throughput (cuDNN attention, the FA3 stand-in, over the
    FlashAttention rows), measured on the H200. Long prefills are compute-bound, and the H100 has the
    H200's SMs and clocks: if its FlashAttention rows of >= :data:`~scripts.fit_h200.FA3_MIN_SEQ` tokens
    run as fast as the H200's, the stand-in's ratio to them is the H200's too. Returns the factor, the
    H200's basis, and the H100/H200 ratios of those rows (kept ones only).
    """
    fitted = yaml.safe_load(H200_FITTED.read_text()) if H200_FITTED.is_file() else {}
    key = f"{prefill_backend}->fa3"
    factor = (fitted.get("attention_backend_factors") or {}).get(key)
    if factor is None:
        raise SystemExit(f"fit_h100: {H200_FITTED.relative_to(REPO)} has no {key}; run fit_h200.py first")
    rule = RULES["prefill_attention"]
    others = [_tagged(read_rows(folder / rule.file)[1], prefill_backend) for folder in reference]
    twins = Twins.of(rule, others).times
    _, rows = read_rows(PROFILE / rule.file)
    logs = [
        float(np.log(float(r["latency_ms"]) / twins[_key(r, rule.family)]))
        for r in rows
        if int(r["seq_len"]) >= FA3_MIN_SEQ and _key(r, rule.family) in twins
    ]
    return {
        "key": key,
        "factor": float(factor),
        "h200_basis": str((fitted.get("attention_backend_factors_basis") or {}).get(key, "")),
        "rows": len(logs),
        "ratio_geomean": round(float(np.exp(np.mean(logs))), 4),
        "ratio_min": round(float(np.exp(min(logs))), 4),
        "ratio_max": round(float(np.exp(max(logs))), 4),
    }


# ---- output ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUN, help="the H100 calibration run")
    parser.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        default=list(REFERENCE),
        help="the H200 runs of the same suite that host-bound rows are judged against",
    )
    args = parser.parse_args(argv)
    for run in (args.run, *args.reference):
        if not (run / "meta.json").is_file():
            print(f"fit_h100: {run} is not a kvsim calibrate output folder", file=sys.stderr)
            return 1
    reference = tuple(folder.resolve() for folder in args.reference)
    record = build_tables(args.run.resolve(), reference)
    # Parameters are fitted from the written tables; the old fitted.yaml only fills the profile meanwhile.
    gpu = load_profile_folder(PROFILE, allow_roofline=True)
    tables = {
        rule.family: parse_table((PROFILE / rule.file).read_text(), rule.family, rule.file)
        for rule in TABLES
        if rule.family in OP_FAMILIES  # extend_attention is kept for the report, not served
    }
    families: dict[str, Any] = {}
    validation: dict[str, Any] = {}
    detail: dict[str, Any] = {"tables": record, "timing_floor_us": 0.0}

    families["gemm"], validation["gemm"], detail["gemm"] = fit_gemm(gpu, tables["gemm"])
    prefill_backend = str(tables["attention_prefill"].rows[0]["backend"])
    extends = extend_rows(prefill_backend, PROFILE)
    for family, backend, extra in (
        ("attention_prefill", prefill_backend, extends),
        ("attention_decode", "triton", None),
    ):
        entry, checks, info, _ = fit_attention(gpu, tables[family], family, backend, extra)
        families[family], validation[family], detail[family] = entry, checks, info
    families["elementwise"], validation["elementwise"], detail["elementwise"] = fit_elementwise(
        gpu, tables["elementwise"]
    )
    families["communication"] = allreduce_prior()
    families["host_copy"], validation["host_copy"], detail["host_copy"] = fit_copies(gpu, tables["host_copy"])

    fa3 = fa3_transfer(prefill_backend, reference)
    detail["fa3"] = fa3
    content = {
        "fitted_on": "this project's H100 80GB HBM3 SXM, measured once by kvsim calibrate on 2026-11-28 "
        "(calibration/results/h100-2026-11-28-run1; host-bound rows dropped against the H200's runs of the "
        "same day, see meta.json); tables beside this file",
        "table_timing_floor_us": 0.0,
        "table_timing_floor_basis": "kvsim calibrate keeps the GPU busy while the host queues each row's "
        "repeats, so rows are kernel time without launch latency; rows where this H100's host outlasted "
        "that were dropped (see meta.json)",
        "attention_backend_factors": {fa3["key"]: fa3["factor"]},
        "attention_backend_factors_basis": {
            fa3["key"]: "the H200's factor, reused (no cuDNN or FA3 measurement on the H100): it is a ratio "
            "of two kernels' compute throughput, and the H100 has the H200's SMs and clocks; its "
            f"{fa3['rows']} {prefill_backend} rows of >= {FA3_MIN_SEQ} tokens run at "
            f"{fa3['ratio_min']:.2f}-{fa3['ratio_max']:.2f}x the H200's (geometric mean "
            f"{fa3['ratio_geomean']:.3f}). H200 basis: {fa3['h200_basis']}",
        },
        "families": families,
        "validation": validation,
    }
    write_yaml(PROFILE / "fitted.yaml", content, generated_header("scripts/fit_h100.py"))
    fit = json.loads(FIT_JSON.read_text()) if FIT_JSON.is_file() else {}
    fit["H100"] = detail
    FIT_JSON.write_text(json.dumps(fit, indent=1) + "\n")
    print(f"wrote {FIT_JSON.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
