"""``kvsim calibrate``: measure a GPU into calibration tables, and install them as a profile.

Measure (and, with ``--name``, install in the same command)::

    kvsim calibrate --out ./my-gpu [--budget-s 600] [--only gemm,decode_attention] [--name MY-GPU]

Install an earlier run as ``--gpu MY-GPU``::

    kvsim calibrate --install ./my-gpu --name MY-GPU

``--quick`` runs tiny shapes on the CPU (Triton kernels in its interpreter) to check the whole pipeline
without a GPU. This module imports neither torch nor triton at import time, so ``kvsim --help`` and the
other subcommands never pay for them; it also runs alone as ``python -m kvsim.cli.calibrate``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kvsim.core.errors import UserInputError

DEFAULT_BUDGET_S = 600.0
DEFAULT_QUICK_BUDGET_S = 300.0
DEFAULT_OUT = "kvsim-calibration"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"folder for the tables and meta.json (default ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--install",
        type=Path,
        metavar="DIR",
        help="install the calibration in DIR as a profile (needs --name)",
    )
    parser.add_argument("--name", help="profile name to install as (after measuring, when given with --out)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        metavar="N",
        help=f"time budget in seconds, start-up included (default {DEFAULT_BUDGET_S:g}; "
        f"{DEFAULT_QUICK_BUDGET_S:g} with --quick)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="FAMILY",
        help="measure only these table families or tasks (comma-separated or repeated)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU: checks the pipeline")
    parser.add_argument(
        "--plan", action="store_true", help="print the tasks and their estimates, measure nothing"
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="install an incomplete calibration (marked partial)"
    )
    parser.add_argument("--force", action="store_true", help="replace an installed profile of the same name")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        metavar="DIR",
        help="install under DIR (default: first folder of KVSIM_PROFILE_PATH, else ~/.config/kvsim/profiles)",
    )


def _only(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def run(args: argparse.Namespace) -> int:
    """Measure, install, or both; returns 0 when complete, 1 when the measurement is incomplete."""
    from kvsim.core.timer import PerfTimer

    timer = PerfTimer()
    started = timer.monotonic()
    only = _only(args.only)
    if args.install is not None:
        if args.out is not None or args.quick or only:
            raise UserInputError("--install takes only --name, --force, --allow-partial and --profile-dir")
        if not args.name:
            raise UserInputError("--install needs --name NAME (the name to pass as --gpu)")
        return _install(args.install, args)
    if args.plan:
        return _print_plan(only, args.quick, _budget(args))
    out = args.out if args.out is not None else Path(DEFAULT_OUT)
    _prepare_triton_env(args.quick)
    from kvsim.calibrate.runner import CalibrationRequest, run_calibration

    request = CalibrationRequest(
        out=out, budget_s=_budget(args), only=only, quick=args.quick, date=datetime.date.today().isoformat()
    )
    meta = run_calibration(request, timer, started, log=lambda line: print(line, flush=True))
    _print_summary(meta, out)
    if not meta["complete"]:
        unfinished = [n for n, t in meta["tasks"].items() if t["status"] != "complete"]
        print(
            f"kvsim calibrate: incomplete: {', '.join(unfinished)} did not finish; the tables in {out} are "
            "partial (meta.json says complete: false)",
            file=sys.stderr,
        )
        return 1
    if args.name:
        return _install(out, args)
    return 0


def _budget(args: argparse.Namespace) -> float:
    if args.budget_s is not None:
        return float(args.budget_s)
    return DEFAULT_QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S


def _prepare_triton_env(quick: bool) -> None:
    """Triton reads TRITON_INTERPRET when kernels are defined: --quick sets it, a GPU run leaves it alone."""
    if quick:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _install(source: Path, args: argparse.Namespace) -> int:
    from kvsim.calibrate.install import install_profile

    target = install_profile(
        source, args.name, dest_root=args.profile_dir, allow_partial=args.allow_partial, force=args.force
    )
    print(f"installed profile {args.name} at {target}")
    print(f"use it with: kvsim step-time --gpu {args.name} --batch 32x1:2048")
    return 0


def _print_plan(only: list[str] | None, quick: bool, budget: float) -> int:
    from kvsim.calibrate.plan import STARTUP_S, check_budget, select_tasks

    tasks = select_tasks(only, quick, device_count=1)
    check_budget(tasks, budget, quick)
    left = budget - STARTUP_S[quick]
    print(f"budget {budget:g} s, start-up ~{STARTUP_S[quick]:g} s; tasks in order:")
    for task in tasks:
        fits = (
            "fits"
            if left >= task.estimate(quick)
            else "partial"
            if left >= task.minimum(quick)
            else "skipped"
        )
        print(f"  {task.name:<18} table {task.family:<18} ~{task.estimate(quick):5.0f} s  {fits}")
        left -= min(max(left, 0.0), task.estimate(quick))
    print("all-reduce is added when the machine has several GPUs")
    return 0


def _print_summary(meta: dict, out: Path) -> None:  # type: ignore[type-arg]
    print(f"{'task':<18} {'status':<9} {'rows':>6} {'seconds':>8}  note")
    for name, task in meta.get("tasks", {}).items():
        print(f"{name:<18} {task['status']:<9} {task['rows']:>6} {task['seconds']:>8.1f}  {task['note']}")
    state = "complete" if meta.get("complete") else "INCOMPLETE"
    print(f"{state}: {len(meta.get('tables', {}))} tables in {out} after {meta.get('elapsed_s')} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kvsim calibrate`` on its own (``python -m kvsim.cli.calibrate``), e.g. where simpy is absent."""
    parser = argparse.ArgumentParser(prog="kvsim calibrate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserInputError as exc:
        print(f"kvsim calibrate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kvsim calibrate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
