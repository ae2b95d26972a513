"""Write the step-time validation report, ``docs/validation/step_time.md``.

    python scripts/validate_step_time.py [--refit] [--check]

Reads the held-out errors ``scripts/fit_h20.py`` measured (``docs/validation/data/step_time_fit.json``;
``--refit`` reruns that script first, which needs ``../shared``), this project's H200 device checks
(``docs/validation/data/h200_*.csv``, from ``scripts/check_timing_floor.py``) and the bundled profiles,
and composes the report. The output is deterministic: no dates, no timings. ``--check`` exits 1 when the
committed report differs from what this script would write.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvsim.hardware import load_profile  # noqa: E402
from kvsim.perf import Deployment, StepTimePredictor  # noqa: E402
from kvsim.perf.ops import GEMM_OPS  # noqa: E402

DATA = REPO / "docs" / "validation" / "data"
REPORT = REPO / "docs" / "validation" / "step_time.md"


def pct(entry: dict[str, Any] | float | None) -> str:
    if entry is None:
        return "n/a"
    value = entry["median_rel_err"] if isinstance(entry, dict) else entry
    return f"{100 * value:.1f}%"


def p90(entry: dict[str, Any]) -> str:
    return f"{100 * entry['p90_rel_err']:.1f}%"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def read_csv(name: str) -> list[dict[str, str]]:
    with (DATA / name).open() as handle:
        return list(csv.DictReader(handle))


def _status(line: str) -> str:
    """Append whether a row meets its target (``<= N%``) to an accuracy-table row."""
    cells = [c.strip() for c in line.strip("|").split("|")]
    target, median = cells[6], cells[4]
    if target.startswith("<="):
        met = float(median.rstrip("%")) <= float(target[2:].strip().rstrip("%"))
        cells[6] = f"{target} ({'met' if met else 'missed'})"
    return row(*cells)


def accuracy_table(fit: dict[str, Any]) -> list[str]:
    lines = _accuracy_rows(fit)
    return lines[:2] + [_status(line) for line in lines[2:]]


def _accuracy_rows(fit: dict[str, Any]) -> list[str]:
    h200, h20e = fit["H200"], fit["H20-3e"]
    lines = [
        row("GPU", "op family", "shapes", "rows", "median error", "p90 error", "target", "method"),
        row(*["---"] * 8),
    ]
    g = h200["gemm"]
    lines += [
        row(
            "H200",
            "GEMM (table)",
            "all",
            g["table_loo"]["rows"],
            pct(g["table_loo"]),
            p90(g["table_loo"]),
            "<= 5%",
            "table leave-one-out, guided",
        ),
        row(
            "H200",
            "GEMM (table)",
            "compute-bound",
            g["table_loo_compute_bound"]["rows"],
            pct(g["table_loo_compute_bound"]),
            p90(g["table_loo_compute_bound"]),
            "<= 5%",
            "as above",
        ),
        row(
            "H200",
            "GEMM (table)",
            "memory-bound",
            g["table_loo_memory_bound"]["rows"],
            pct(g["table_loo_memory_bound"]),
            p90(g["table_loo_memory_bound"]),
            "<= 5%",
            "as above",
        ),
        row(
            "H200",
            "GEMM (fitted fallback)",
            "all",
            g["fitted_loo"]["rows"],
            pct(g["fitted_loo"]),
            p90(g["fitted_loo"]),
            "",
            "leave-one-out refits",
        ),
    ]
    c = h200["host_copy"]
    lines += [
        row(
            "H200",
            "copies (table)",
            "h2d, d2h, chunked",
            c["table_loo"]["rows"],
            pct(c["table_loo"]),
            p90(c["table_loo"]),
            "<= 5%",
            "table leave-one-out, guided",
        ),
        row(
            "H200",
            "copies (fitted)",
            "h2d, d2h, chunked",
            c["fitted_loo"]["rows"],
            pct(c["fitted_loo"]),
            p90(c["fitted_loo"]),
            "",
            "leave-one-out refits",
        ),
    ]
    a = h200["attention_prefill"]
    lines += [
        row(
            "H200",
            "prefill attention (table)",
            "batch 1, 256-16k",
            a["table_loo"]["rows"],
            pct(a["table_loo"]),
            p90(a["table_loo"]),
            "residual",
            "table leave-one-out, guided",
        ),
        row(
            "H200",
            "prefill attention (fitted)",
            "batch 1, 256-16k",
            a["fitted_in_sample"]["rows"],
            pct(a["fitted_in_sample"]),
            p90(a["fitted_in_sample"]),
            "residual",
            f"fitted-model residual (leave-one-out: {pct(a['fitted_loo'])})",
        ),
    ]
    d = h200["attention_decode"]
    lines.append(
        row(
            "H200",
            "decode attention (fitted)",
            ">= 256 MB of KV",
            d["sdpa_vs_model_above_256MB"]["rows"],
            pct(d["sdpa_vs_model_above_256MB"]),
            p90(d["sdpa_vs_model_above_256MB"]),
            "residual",
            "model vs a fused decode kernel timed on this H200",
        )
    )
    for key, label in (("bf16", "bf16"), ("fp8", "fp8 block")):
        e = h20e["gemm"][key]
        lines += [
            row(
                "H20-3e",
                f"GEMM {label}",
                "compute-bound",
                e["compute_bound"]["rows"],
                pct(e["compute_bound"]),
                p90(e["compute_bound"]),
                "<= 10%",
                f"{fit['folds']}-fold cross-validation",
            ),
            row(
                "H20-3e",
                f"GEMM {label}",
                "memory-bound",
                e["memory_bound"]["rows"],
                pct(e["memory_bound"]),
                p90(e["memory_bound"]),
                "<= 10%",
                "as above",
            ),
            row(
                "H20-3e",
                f"GEMM {label}",
                "n, k >= 1024, compute-bound",
                e["llm_shapes_compute_bound"]["rows"],
                pct(e["llm_shapes_compute_bound"]),
                p90(e["llm_shapes_compute_bound"]),
                "",
                "as above",
            ),
            row(
                "H20-3e",
                f"GEMM {label}",
                "n, k >= 1024, memory-bound",
                e["llm_shapes_memory_bound"]["rows"],
                pct(e["llm_shapes_memory_bound"]),
                p90(e["llm_shapes_memory_bound"]),
                "",
                "as above",
            ),
        ]
    for key, label in (("bf16", "16-bit KV"), ("fp8", "fp8 KV")):
        e = h20e["attention_prefill"][key]
        lines += [
            row(
                "H20-3e",
                f"prefill attention, {label}",
                "all (compute-bound)",
                e["all"]["rows"],
                pct(e["all"]),
                p90(e["all"]),
                "<= 10%",
                f"{fit['folds']}-fold cross-validation",
            ),
            row(
                "H20-3e",
                f"prefill attention, {label}",
                "isl < 512",
                e["isl_lt_512"]["rows"],
                pct(e["isl_lt_512"]),
                p90(e["isl_lt_512"]),
                "",
                "as above",
            ),
        ]
        e = h20e["attention_decode"][key]
        lines += [
            row(
                "H20-3e",
                f"decode attention, {label}",
                "all (memory/latency-bound)",
                e["all"]["rows"],
                pct(e["all"]),
                p90(e["all"]),
                "<= 10%",
                f"{fit['folds']}-fold cross-validation",
            ),
            row(
                "H20-3e",
                f"decode attention, {label}",
                "KV >= 1024 per request",
                e["kv_ge_1024"]["rows"],
                pct(e["kv_ge_1024"]),
                p90(e["kv_ge_1024"]),
                "",
                "as above",
            ),
        ]
    return lines


def floor_section(fit: dict[str, Any]) -> list[str]:
    rows = [r for r in read_csv("h200_timing_floor.csv") if r["kind"] == "gemm" and int(r["m"]) <= 128]
    h200 = load_profile("H200")
    table = {
        (int(r["m"]), int(r["n"]), int(r["k"])): float(r["latency_ms"]) for r in h200.tables["gemm"].rows
    }
    lines = [
        row("m", "n", "k", "table ms", "single call today ms", "CUDA graph ms", "table - graph us"),
        row(*["---"] * 7),
    ]
    for r in rows:
        key = (int(r["m"]), int(r["n"]), int(r["k"]))
        if key in table and key[0] in (1, 128):
            lines.append(
                row(
                    *key,
                    f"{table[key]:.4f}",
                    f"{float(r['single_ms']):.4f}",
                    f"{float(r['graph_ms']):.4f}",
                    f"{1e3 * (table[key] - float(r['graph_ms'])):.1f}",
                )
            )
    return lines


def skeleton_section() -> list[str]:
    """Forward-step skeletons timed on this project's H200 against the predictor's matching ops."""
    predictor = StepTimePredictor(Deployment.create("Qwen3-8B", "H200"))
    lines = [
        row("step", "measured ms", "predicted ms (same ops)", "error", "ops compared"),
        row(*["---"] * 5),
    ]
    errors = []
    for r in read_csv("h200_skeleton.csv"):
        tokens = int(r["tokens"])
        if r["kind"] == "decode_gemms":
            result = predictor.predict([(1, 1024)] * tokens)
            predicted = sum(result.ops[op] for op in GEMM_OPS)
            measured = float(r["graph_ms"])
            label, ops = f"decode, batch {tokens} (CUDA graph)", "5 GEMMs x 36 layers + LM head"
        else:
            result = predictor.predict([(tokens, 0)])
            predicted = sum(result.ops[op] for op in (*GEMM_OPS, "attention"))
            measured = float(r["loop_ms"])
            label, ops = f"prefill, {tokens} tokens (eager)", "GEMMs + SDPA attention"
        error = predicted / measured - 1
        errors.append(abs(error))
        lines.append(row(label, f"{measured:.3f}", f"{predicted:.3f}", f"{100 * error:+.1f}%", ops))
    lines.append("")
    lines.append(
        f"Median absolute error over these {len(errors)} skeleton steps: "
        f"{100 * sorted(errors)[len(errors) // 2]:.1f}%."
    )
    return lines


CALIBRATION_RUN = REPO / "calibration" / "results" / "h200-2026-11-28-run1"


def e2e_section() -> list[str]:
    """Whole forward steps of the calibration's torch Qwen3-8B on the H200, against the predictor."""
    if not (CALIBRATION_RUN / "e2e.csv").is_file():
        return ["(no `calibration/results/h200-2026-11-28-run1/e2e.csv` in this checkout)"]
    with (CALIBRATION_RUN / "decode_attention.csv").open() as handle:
        decode = {
            (int(r["batch"]), int(r["kv_len"])): float(r["latency_ms"])
            for r in csv.DictReader(handle)
            if r["backend"] == "triton" and r["num_heads"] == "32" and r["num_kv_heads"] == "8"
        }
    with (CALIBRATION_RUN / "prefill_attention.csv").open() as handle:
        prefill = {
            int(r["seq_len"]): float(r["latency_ms"])
            for r in csv.DictReader(handle)
            if r["batch"] == "1" and r["num_heads"] == "32" and r["num_kv_heads"] == "8"
        }
    predictor = StepTimePredictor(Deployment.create("Qwen3-8B", "H200"))
    lines = [
        row(
            "step", "measured ms", "predicted ms", "error", "their attention ms", "predicted with it", "error"
        ),
        row(*["---"] * 7),
    ]
    plain: list[float] = []
    swapped: list[float] = []
    with (CALIBRATION_RUN / "e2e.csv").open() as handle:
        for r in csv.DictReader(handle):
            batch, extend, past = int(r["batch"]), int(r["extend_len"]), int(r["past_len"])
            result = predictor.predict([(extend, past)] * batch)
            measured = float(r["latency_ms"])
            per_layer = decode.get((batch, past)) if r["phase"] == "decode" else prefill.get(extend)
            error = result.step_time_ms / measured - 1
            plain.append(abs(error))
            cells = [
                f"{r['phase']} {batch} x {extend}:{past}",
                f"{measured:.2f}",
                f"{result.step_time_ms:.2f}",
                f"{100 * error:+.1f}%",
            ]
            if per_layer is None:
                cells += ["", "", ""]
            else:
                theirs = 36 * per_layer
                with_theirs = result.step_time_ms - result.ops["attention"] + theirs
                swapped.append(abs(with_theirs / measured - 1))
                cells += [
                    f"{theirs:.2f}",
                    f"{with_theirs:.2f}",
                    f"{100 * (with_theirs / measured - 1):+.1f}%",
                ]
            lines.append(row(*cells))
    lines += [
        "",
        f"Median absolute error: {100 * sorted(plain)[len(plain) // 2]:.1f}% as predicted, "
        f"{100 * sorted(swapped)[len(swapped) // 2]:.1f}% with the run's own attention kernels.",
    ]
    return lines


def predictions_section() -> list[str]:
    lines = [
        row(
            "GPU",
            "step",
            "predicted ms",
            "range ms",
            "attention ms",
            "GEMMs ms",
            "sources of GEMMs / attention",
        ),
        row(*["---"] * 7),
    ]
    for gpu in ("H200", "H20", "H20-3e"):
        predictor = StepTimePredictor(Deployment.create("Qwen3-8B", gpu))
        cases = [(f"prefill {n}", [(n, 0)]) for n in (2048, 4096, 8192, 16384)]
        cases += [(f"decode {b} x 2k", [(1, 2048)] * b) for b in (1, 8, 32, 64, 128, 256)]
        for label, batch in cases:
            result = predictor.predict(batch)
            low, high = result.step_time_ms_range
            gemms = sum(result.ops[op] for op in GEMM_OPS)
            sources = f"{result.sources['qkv_proj']} / {result.sources['attention']}"
            lines.append(
                row(
                    gpu,
                    label,
                    f"{result.step_time_ms:.2f}",
                    f"{low:.2f}-{high:.2f}",
                    f"{result.ops['attention']:.2f}",
                    f"{gemms:.2f}",
                    sources,
                )
            )
    return lines


def decode_section(fit: dict[str, Any]) -> list[str]:
    d = fit["H200"]["attention_decode"]
    lines = [
        row("batch", "KV length", "fused SDPA (graph) ms", "model ms", "torch.matmul table ms"),
        row(*["---"] * 5),
    ]
    table = {(r["batch"], r["kv_len"]): r["measured_ms"] for r in d["table_rows"]}
    for r in d["sdpa_rows"]:
        lines.append(
            row(
                r["batch"],
                r["kv_len"],
                f"{r['sdpa_graph_ms']:.4f}",
                f"{r['model_ms']:.4f}",
                table.get((r["batch"], r["kv_len"]), ""),
            )
        )
    return lines


def render(fit: dict[str, Any]) -> str:
    """The report's Markdown."""
    return TEMPLATE.format(
        accuracy="\n".join(accuracy_table(fit)),
        floor_table="\n".join(floor_section(fit)),
        skeleton="\n".join(skeleton_section()),
        decode_table="\n".join(decode_section(fit)),
        predictions="\n".join(predictions_section()),
        e2e="\n".join(e2e_section()),
        floor=fit["H200"]["timing_floor_us"],
        folds=fit["folds"],
        matmul_factor=fit["H200"]["attention_decode"]["torch_matmul_table_over_model"],
    )


TEMPLATE = """\
# Step-time validation

Generated by `python scripts/validate_step_time.py` from `docs/validation/data/` (written by
`scripts/fit_h20.py` and `scripts/check_timing_floor.py`). Do not edit by hand.

Errors are relative (`predicted / measured - 1`); the tables show the median and the 90th percentile of
their absolute values. *Table leave-one-out*: drop one row, interpolate it from the rest of its shape
exactly as the predictor does (log space, guided by the family's fitted curve refitted without the row).
*Fitted*: refit the family model without the row (leave-one-out on the H200's small tables, {folds}-fold
cross-validation on the 5-8k-row H20-3e tables, whose fold errors stay within a few tenths of a point of
the in-sample errors, so per-row refits would not change them).

## Accuracy per op family

{accuracy}

Targets from issue 7: H200 GEMMs and copies <= 5%; H20-3e GEMM and attention <= 10% on compute- and
memory-bound shapes. The bf16 memory-bound GEMMs are closest to the line: skinny shapes below 1024 in n or
k, whose kernel choices the curve cannot follow, dominate them (LLM-sized ones do better). The H200
attention rows are too few for a held-out error to mean much (4 prefill rows 4x apart) and the H200 decode
table timed a different kernel (below), so attention is reported as fitted-model residuals. The H20 profile
has no rows of its own: its errors are the H20-3e's (see *H20 from the H20-3e*).

## The H200 tables' timing floor

The H200 tables timed each kernel alone between two CUDA events, which adds the host's launch latency to
every row. `scripts/check_timing_floor.py` re-timed the same GEMMs on this project's H200 alone (the
calibration's method), back to back and replayed from a CUDA graph (how SGLang runs decode):

{floor_table}

The median of (table - CUDA graph) over the 20 GEMMs with m <= 128 is **{floor:.1f} us**; the predictor
subtracts it from every table-served or table-fitted kernel (never going below the profile's 3 us
`kernel_latency`). Without it a Qwen3-8B decode step on the H200 would carry 145 x 15 us = 2.2 ms of launch
latency that SGLang's CUDA graphs do not pay. Large compute-bound GEMMs differ between the two runs by up to
+-10% (clocks and power as found), which bounds what any table can promise there.

## Forward steps measured on the H200

No SGLang forward-step timings exist in `../shared`; end-to-end steps on real hardware are checked outside
the repository. As a partial check, `scripts/check_timing_floor.py` timed a Qwen3-8B skeleton on the H200:
36 layers of the four GEMMs (plus the LM head), replayed from a CUDA graph for decode, and GEMMs plus torch
SDPA attention run eagerly for prefill. The predictor's matching ops (its full steps add elementwise ops,
decode attention and launch overhead, which the skeleton does not run):

{skeleton}

Isolated-kernel tables run a little slow for chained prefill GEMMs (consecutive GEMMs find their inputs in
L2; single-call and back-to-back timings of one GEMM also differ by up to 20% for some shapes between runs),
so prefill sits a few percent high; decode, where weights stream from HBM, matches closely.

## Whole forward steps of the calibration's torch Qwen3-8B (H200)

`kvsim calibrate` (calibration/results/h200-2026-11-28-run1, measured on the same H200 after these tables)
also timed whole forward steps of a random-weight Qwen3-8B written in torch: eager prefill with torch SDPA
pinned to FlashAttention, decode replayed from CUDA graphs with a Triton split-KV paged kernel, Triton
RMSNorm and SiLU-and-mul, torch RoPE, greedy sampling. It is not SGLang, whose fused kernels this predictor
models, so the error below is an upper bound on composition error rather than a target. Its attention
kernels differ most: torch's FlashAttention prefill runs about 2x slower than the SDPA backend of the H200
table (which is FA3-class, about 650 TFLOPS at 16k tokens), and the Triton decode kernel takes 30-60 us at
batch 1 where the SGLang-derived model takes 16-31 us, while from batch 16 KV tokens up it agrees with this
profile's decode model within 8% (an independent check of that model). The last columns put the run's own
attention times in place of the predicted ones:

{e2e}

What remains is the reference implementation's other work (unfused RoPE, sampling, KV writes, eager
launches at 6.4 us per kernel against the profile's 2 us), which SGLang fuses or hides; a profile built
from this run's own tables would serve that implementation, not SGLang.

## Decode attention on the H200

The H200 decode table timed unfused `torch.matmul` over a contiguous cache (three kernels with launch gaps);
it is kept for reference and not used. The model is the H20-3e fit transferred (fixed costs, the padded
tensor-core ceiling; per-block costs scaled by 132/78 SMs) with its HBM efficiency fitted on a fused decode
kernel timed on this H200 (torch SDPA, one query token, contiguous GQA cache, CUDA graphs):

{decode_table}

The unfused table runs {matmul_factor:.1f}x the model on average (most at batch 1, where its three launches
dominate; about 1.4x at large batches, where it streams KV like any kernel): the meta note's "about 10x
slower than a fused paged kernel" holds for small batches only. SGLang's paged kernel reads KV through a
page table, so the model sitting a few percent above the contiguous fused kernel at large batches is
accepted rather than fitted away.

## H20 from the H20-3e

No H20 can be measured here. The H20-3e has the H20's compute (148 TFLOPS bf16, 78 SMs) and 141 GB of HBM3e
at 4.8 TB/s instead of 96 GB of HBM3 at 4.0 TB/s. Every fitted model divides its memory-bound term by the
profile's own bandwidth, so H20 weight streaming (decode GEMMs, elementwise ops, copies through HBM) takes
up to 4.8/4.0 = 1.2x longer than on the H20-3e, while compute-bound work is identical. Decode attention is
the exception worth knowing: on the H20-3e it reaches only about 1 TB/s, and its time does not depend on the
number of query heads per KV head up to 128. The model explains this as a tensor-core ceiling of the decode
kernel (query heads padded to a 128-row tile on the H20's throttled tensor cores), with HBM efficiency held
at what the GPU's streaming GEMMs reach; the rows alone cannot tell that from a bandwidth limit (both halve
with an fp8 cache). Under this model H20 decode attention runs as fast as on the H20-3e; if it were
bandwidth-bound instead it would take 1.2x longer. This is the largest single uncertainty of the H20 profile
at large decode batches.

## Predicted steps for external comparison (Qwen3-8B, bf16, TP 1)

Ranges spread each op by its family's median held-out error (a typical band, not a bound).

{predictions}

## What is not validated

- Elementwise ops and tensor-parallel all-reduces have no measured rows for any Hopper GPU: elementwise
  kernels use the HBM efficiency of the d2d copy (H200) or of memory-bound GEMMs (H20s) with a fixed cost of
  the shortest kernel seen; all-reduces use a stated prior (75% of NVLink, 10 us per collective). Their
  ranges use prior errors (20% and 30%) recorded in `fitted.yaml`.
- fp8 GEMMs on the H200 have no rows (the bf16 curve at the fp8 peak; prior error 20%).
- Attention backends: the H200 prefill table measured torch SDPA and the H20-3e tables an unrecorded backend
  (`unknown`); no GPU has the same shapes under two backends, so no correction factor could be fitted and
  `--attention-backend` changes nothing yet (a profile may state factors; tables with a `backend` column get
  them fitted automatically).
- The AIConfigurator comparison (`--latency-source aic`) is not implemented.

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refit", action="store_true", help="rerun scripts/fit_h20.py first (needs ../shared)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed report is stale")
    args = parser.parse_args(argv)
    if args.refit:
        subprocess.run([sys.executable, str(REPO / "scripts" / "fit_h20.py")], check=True)
    fit = json.loads((DATA / "step_time_fit.json").read_text())
    text = render(fit)
    if args.check:
        current = REPORT.read_text() if REPORT.is_file() else ""
        if current != text:
            print(
                f"{REPORT.relative_to(REPO)} is stale; run python scripts/validate_step_time.py",
                file=sys.stderr,
            )
            return 1
        return 0
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    print(f"wrote {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
