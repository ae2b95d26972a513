"""Run a calibration: check the budget, find the device, run the plan, keep ``meta.json`` current.

``meta.json`` is written before the first measurement and after every task, with ``"complete": false``
until every planned task has finished in full; a run killed at any point therefore leaves tables whose
rows are all real measurements and a meta file that says they are partial.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvsim.calibrate.context import BenchContext, OutOfBudget
from kvsim.calibrate.device import describe_device, import_torch, pick_device, triton_available
from kvsim.calibrate.plan import PlanRun, Task, TaskResult, all_complete, check_budget, select_tasks
from kvsim.calibrate.tables import SCHEMAS, TableWriter, write_meta
from kvsim.core.errors import UserInputError
from kvsim.core.timer import Timer

FORMAT_VERSION = 1
METHOD = (
    "median of repeats timed with CUDA events after warm-up (GPU kept busy while the host queues the "
    "repeats, so rows are kernel time without launch gaps; e2e rows are timed as served); weights rotated "
    "through copies larger than twice the L2; random normal inputs; clocks as found. GEMM: "
    "torch.nn.functional.linear (cuBLAS) x[M,K] @ W[N,K]^T, fp8 via torch._scaled_mm with per-tensor "
    "scales. Prefill: torch SDPA causal GQA. Extend: torch SDPA with a bottom-right causal mask. Decode: "
    "Triton split-KV paged kernel (kvsim/calibrate/kernels.py), torch contiguous matmul, FlashInfer when "
    "installed. Elementwise: Triton fused RMSNorm and SiLU-and-mul, torch RoPE/embedding/sampling. Copies: "
    "pinned host memory, non_blocking copy_."
)


@dataclass(frozen=True, slots=True)
class CalibrationRequest:
    """What the user asked for."""

    out: Path
    budget_s: float
    only: Sequence[str] | None = None
    quick: bool = False
    date: str = ""


def run_calibration(
    request: CalibrationRequest, timer: Timer, started: float, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the plan and return the final meta dictionary (also written to ``<out>/meta.json``).

    ``started`` is the timer reading when the command began: start-up counts against the budget.
    """
    quick = request.quick
    check_budget(select_tasks(request.only, quick, device_count=1), request.budget_s, quick)
    torch = import_torch()
    device = pick_device(torch, quick)
    has_triton = triton_available()
    if not has_triton and not quick:
        raise UserInputError(
            "triton is not installed; the decode-attention and fused elementwise kernels need it "
            "(`pip install triton`; it ships with torch's CUDA wheels)"
        )
    info = describe_device(torch, device)
    tasks = select_tasks(request.only, quick, info["device_count"])
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    from kvsim.calibrate.bench_gemm import fp8_supported

    ctx = BenchContext(
        torch=torch,
        device=device,
        quick=quick,
        timer=timer,
        deadline=started + request.budget_s,
        l2_bytes=int(info["l2_mb"] * 1e6) or (50 * 10**6 if device.type == "cuda" else 0),
        sms=int(info["sms"]),
        has_triton=has_triton,
        fp8=fp8_supported(torch, device),
        log=log,
    )
    meta: dict[str, Any] = {
        "kvsim_calibrate": FORMAT_VERSION,
        "complete": False,
        "quick": quick,
        **info,
        "measured": request.date,
        "method": METHOD,
        "measured_by": "kvsim calibrate" + (" --quick" if quick else ""),
        "budget_s": request.budget_s,
        "only": list(request.only) if request.only else None,
        "planned": [t.name for t in tasks],
        "fp8": ctx.fp8,
    }
    if has_triton and device.type == "cuda":
        from kvsim.calibrate.kernels import smoke_test

        problem = smoke_test(device)
        if problem is not None:
            ctx.has_triton = has_triton = False
            meta["triton_broken"] = f"Triton kernels failed their check ({problem}); torch fallbacks used"
            log(f"warning: {meta['triton_broken']}")
    if not has_triton and "triton_broken" not in meta:
        meta["triton_missing"] = "triton is not installed: Triton kernels skipped, torch fallbacks used"
        log("warning: triton is not installed; running the torch parts only")
    writers: dict[str, TableWriter] = {}
    log(f"calibrating {info['gpu']} into {out} (budget {request.budget_s:g} s, {len(tasks)} tasks)")

    def update(results: list[TaskResult]) -> None:
        meta["tasks"] = {r.name: r.to_dict() for r in results}
        meta["tables"] = _tables(results, writers)
        meta["elapsed_s"] = round(timer.monotonic() - started, 1)
        meta.update({k: v for k, v in ctx.notes.items() if k != "errors"})
        if ctx.notes.get("errors"):
            meta["item_errors"] = list(ctx.notes["errors"][:50])
        write_meta(out, meta)

    def execute(task: Task, deadline: float) -> tuple[str, int, str]:
        if task.family not in writers:
            writers[task.family] = TableWriter(out, task.family)
        writer = writers[task.family]
        before = len(writer.rows)
        ctx.begin_task(deadline)
        log(f"[{timer.monotonic() - started:6.1f} s] {task.name}: up to {deadline - timer.monotonic():.0f} s")
        status, note = "complete", ""
        try:
            task.function()(ctx, writer)
        except OutOfBudget as exc:
            status, note = "partial", f"stopped for the budget ({exc})"
        except Exception as exc:  # a failed task must not cost the tasks after it
            status, note = (
                "failed",
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
            )
            log(traceback.format_exc())
        finally:
            ctx.release(collect=True)
        rows = len(writer.rows) - before
        log(f"[{timer.monotonic() - started:6.1f} s] {task.name}: {status}, {rows} rows {note}")
        return status, rows, note

    run = PlanRun(
        tasks=tasks,
        quick=quick,
        deadline=started + request.budget_s,
        now=timer.monotonic,
        execute=execute,
        on_update=update,
    )
    results = run.run()
    meta["complete"] = all_complete(results)
    update(results)
    return meta


def _tables(results: Sequence[TaskResult], writers: dict[str, TableWriter]) -> dict[str, Any]:
    """Per table family: file, rows and whether every task feeding it completed."""
    tables: dict[str, Any] = {}
    for family, writer in writers.items():
        statuses = [r.status for r in results if r.family == family]
        if not writer.rows:
            continue
        tables[family] = {
            "file": SCHEMAS[family].file_name,
            "rows": len(writer.rows),
            "complete": all(s == "complete" for s in statuses),
        }
    return tables
