"""Step-time accuracy and speed: held-out errors per op family, and the cost of ``predict_sums``.

    python benchmarks/bench_step_time_accuracy.py [--recompute] [--calls 50000]

Prints the leave-one-out median errors of the H200 tables (recomputed here from the bundled tables, in a
second) and of the H20-3e fits (from ``docs/validation/data/step_time_fit.json``; ``--recompute`` reruns
``scripts/fit_h20.py``, which needs ``../shared``), then times ``StepTimePredictor.predict_sums`` on a mix
of decode and prefill batches like those an engine produces. Not a test: the numbers go into the issue
notes and ``docs/validation/step_time.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvsim.hardware import load_profile  # noqa: E402
from kvsim.perf import BatchSums, Deployment, StepTimePredictor  # noqa: E402
from kvsim.perf.calibration import row_guide  # noqa: E402
from kvsim.perf.validation import ErrorSummary, guided_table_loo  # noqa: E402

FIT = REPO / "docs" / "validation" / "data" / "step_time_fit.json"


def h200_table_errors() -> list[tuple[str, ErrorSummary]]:
    """Leave-one-out of the bundled H200 tables, guided by the committed fits (not refitted: fast)."""
    gpu = load_profile("H200")
    out = []
    for family, label in (
        ("gemm", "GEMM"),
        ("host_copy", "copies"),
        ("attention_prefill", "prefill attention"),
    ):
        guide = row_guide(gpu, family)
        backend = gpu.table_backends.get(family, "unknown")
        errors = guided_table_loo(gpu.tables[family], lambda _i, g=guide: g, backend)
        out.append((f"H200 {label} (table, guide not refitted)", ErrorSummary.of(errors)))
    return out


def fitted_errors() -> list[tuple[str, str, str]]:
    fit = json.loads(FIT.read_text())
    rows = []
    h200 = fit["H200"]
    for label, entry in (
        ("H200 GEMM (table, guide refitted)", h200["gemm"]["table_loo"]),
        ("H200 copies (table, guide refitted)", h200["host_copy"]["table_loo"]),
        ("H200 prefill attention (fitted residual)", h200["attention_prefill"]["fitted_in_sample"]),
    ):
        rows.append((label, "", f"{100 * entry['median_rel_err']:.1f}%"))
    for family, splits in (
        ("gemm", ("compute_bound", "memory_bound")),
        ("attention_prefill", ("all",)),
        ("attention_decode", ("all",)),
    ):
        for key in ("bf16", "fp8"):
            for split in splits:
                entry = fit["H20-3e"][family][key][split]
                rows.append((f"H20-3e {family} {key}", split, f"{100 * entry['median_rel_err']:.1f}%"))
    return rows


def time_predict_sums(gpu: str, calls: int) -> float:
    """Microseconds per ``predict_sums`` call on an engine-like mix (80% decode), memo warm."""
    predictor = StepTimePredictor(Deployment.create("Qwen3-8B", gpu))
    rng = random.Random(7)
    sums = []
    for _ in range(calls):
        if rng.random() < 0.8:
            batch = rng.randint(1, 300)
            context = batch * rng.randint(100, 8000)
            sums.append(BatchSums(batch, batch, context, context, True))
        else:
            tokens, past, requests = (
                rng.choice((512, 1024, 2048, 4096, 8192)),
                rng.randint(0, 8000),
                rng.randint(1, 4),
            )
            sums.append(
                BatchSums(requests, tokens, tokens + past, tokens * past + tokens * (tokens + 1) // 2, False)
            )
    for item in sums[:2000]:
        predictor.predict_sums(item)
    start = time.perf_counter()
    for item in sums:
        predictor.predict_sums(item)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recompute", action="store_true", help="rerun scripts/fit_h20.py (needs ../shared)")
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args(argv)
    if args.recompute:
        subprocess.run([sys.executable, str(REPO / "scripts" / "fit_h20.py")], check=True)
    print("held-out median errors")
    for label, summary in h200_table_errors():
        print(
            f"  {label:55s} {100 * summary.median:5.1f}%  "
            f"(p90 {100 * summary.p90:5.1f}%, {summary.rows} rows)"
        )
    for label, split, value in fitted_errors():
        print(f"  {label:40s} {split:15s} {value:>6s}")
    print("predict_sums speed (Qwen3-8B, memo warm)")
    for gpu in ("H200", "H20"):
        print(f"  {gpu:6s} {time_predict_sums(gpu, args.calls):6.2f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
