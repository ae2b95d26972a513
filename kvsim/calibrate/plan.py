"""The calibration plan: tasks in priority order, their cost estimates, and how the time budget is spent.

A *task* measures part of one table family (``gemm`` has two tasks: the core models first, every other
model later). Tasks run most important first; each gets a deadline of at most twice its estimate so that
one slow task cannot starve the ones after it, and a task whose minimum does not fit in what is left is
skipped. Inside a task, benchmarks check the deadline before every item, so a task cut short still leaves
its finished rows (marked ``partial``). Nothing here imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsim.core.errors import UserInputError


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of the plan.

    ``estimate_s`` is the time on an H100/H200-class GPU (``quick_s`` on the CPU with ``--quick``);
    ``min_fraction`` of it is the least time worth starting the task with.
    """

    name: str
    family: str
    entry: str  # "module:function", imported only when the task runs
    estimate_s: float
    quick_s: float
    needs_triton: bool = False
    multi_gpu: bool = False
    min_fraction: float = 0.25

    def estimate(self, quick: bool) -> float:
        """Expected seconds."""
        return self.quick_s if quick else self.estimate_s

    def minimum(self, quick: bool) -> float:
        """Least seconds worth starting with."""
        return self.estimate(quick) * self.min_fraction

    def function(self) -> Callable[..., None]:
        """Import and return the task's benchmark function."""
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


_M = "kvsim.calibrate"
#: Every task, most important first.
TASKS: tuple[Task, ...] = (
    Task("gemm_core", "gemm", f"{_M}.bench_gemm:run_core", 25, 2),
    Task("prefill_attention", "prefill_attention", f"{_M}.bench_attention:run_prefill", 20, 2),
    Task(
        "decode_attention", "decode_attention", f"{_M}.bench_attention:run_decode", 40, 10, needs_triton=True
    ),
    Task("e2e", "e2e", f"{_M}.e2e:run_e2e", 60, 8, min_fraction=0.5),
    Task("copy", "copy", f"{_M}.bench_misc:run_copy", 10, 1),
    Task("elementwise", "elementwise", f"{_M}.bench_misc:run_elementwise", 25, 4, needs_triton=True),
    Task("launch", "launch", f"{_M}.bench_misc:run_launch", 5, 0.5, min_fraction=0.5),
    Task("extend_attention", "extend_attention", f"{_M}.bench_attention:run_extend", 15, 1),
    Task("gemm_rest", "gemm", f"{_M}.bench_gemm:run_rest", 120, 2),
    Task("allreduce", "allreduce", f"{_M}.bench_allreduce:run_allreduce", 40, 0, multi_gpu=True),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}
FAMILIES = tuple(dict.fromkeys(task.family for task in TASKS))

#: Seconds from process start to the first measurement (torch import, CUDA context, device query).
STARTUP_S = {True: 3.0, False: 15.0}


def select_tasks(only: Sequence[str] | None, quick: bool, device_count: int) -> list[Task]:
    """The tasks a run plans: all (or those named by ``--only``, by family or task name), in priority order.

    All-reduce is planned only with several GPUs (never in ``--quick``), unless ``--only`` names it.
    """
    if only:
        wanted = set()
        for name in only:
            matches = [t.name for t in TASKS if name in (t.name, t.family)]
            if not matches:
                valid = sorted(set(FAMILIES) | set(TASKS_BY_NAME))
                raise UserInputError(f"--only: unknown family {name!r}; valid: {', '.join(valid)}")
            wanted.update(matches)
        return [t for t in TASKS if t.name in wanted]
    return [t for t in TASKS if not t.multi_gpu or (device_count > 1 and not quick)]


def check_budget(tasks: Sequence[Task], budget_s: float, quick: bool) -> None:
    """Refuse a budget too small for any planned task (a one-line error; the CLI exits 2)."""
    if budget_s <= 0:
        raise UserInputError(f"--budget-s must be positive, got {budget_s:g}")
    usable = budget_s - STARTUP_S[quick]
    cheapest = min(tasks, key=lambda t: t.minimum(quick))
    if usable < cheapest.minimum(quick):
        need = STARTUP_S[quick] + cheapest.minimum(quick)
        raise UserInputError(
            f"--budget-s {budget_s:g} is too small for any family: the cheapest ({cheapest.family}) needs "
            f"about {need:.0f} s including {STARTUP_S[quick]:.0f} s of start-up"
        )


@dataclass
class TaskResult:
    """How one task ended: ``complete``, ``partial`` (budget), ``failed`` (error) or ``skipped``."""

    name: str
    family: str
    status: str = "pending"
    rows: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``meta.json`` form."""
        return {
            "family": self.family,
            "status": self.status,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            "note": self.note,
        }


@dataclass
class PlanRun:
    """Runs tasks against a deadline; ``execute(task, deadline)`` runs one, returns (status, rows, note)."""

    tasks: Sequence[Task]
    quick: bool
    deadline: float
    now: Callable[[], float]
    execute: Callable[[Task, float], tuple[str, int, str]]
    on_update: Callable[[list[TaskResult]], None] = lambda results: None
    skip: Callable[[Task], str | None] = lambda task: None
    results: list[TaskResult] = field(default_factory=list)

    def run(self) -> list[TaskResult]:
        """Run every task in order; returns the results (also passed to ``on_update`` after each task)."""
        self.results = [TaskResult(t.name, t.family) for t in self.tasks]
        self.on_update(self.results)
        for task, result in zip(self.tasks, self.results, strict=True):
            start = self.now()
            left = self.deadline - start
            reason = self.skip(task)
            if reason is None and left < task.minimum(self.quick):
                reason = f"budget: {left:.0f} s left, needs at least {task.minimum(self.quick):.0f} s"
            if reason is not None:
                result.status, result.note = "skipped", reason
            else:
                cap = max(2.0 * task.estimate(self.quick), task.minimum(self.quick))
                result.status, result.rows, result.note = self.execute(task, min(self.deadline, start + cap))
            result.seconds = self.now() - start
            self.on_update(self.results)
        return self.results


def all_complete(results: Iterable[TaskResult]) -> bool:
    """Whether every planned task finished in full."""
    return all(r.status == "complete" for r in results)
