"""GEMM and attention shapes from the bundled models; the task plan and its budget rules."""

from __future__ import annotations

import pytest

from kvsim.calibrate.plan import (
    FAMILIES,
    STARTUP_S,
    TASKS,
    PlanRun,
    Task,
    all_complete,
    check_budget,
    select_tasks,
)
from kvsim.calibrate.shapes import (
    M_GRID,
    gemm_shapes,
    head_configs,
    projection_shapes,
    tp_supported,
)
from kvsim.calibrate.tables import read_table
from kvsim.core.errors import UserInputError
from kvsim.models.spec import load_model_spec, model_names
from tests.conftest import shared_path


def test_qwen3_8b_projection_shapes() -> None:
    spec = load_model_spec("Qwen3-8B")
    assert projection_shapes(spec, 1) == {
        "qkv": (6144, 4096),
        "o": (4096, 4096),
        "gate_up": (24576, 4096),
        "down": (4096, 12288),
        "lm_head": (151936, 4096),
    }
    # tp=8: 4 query heads and one KV head (8 KV heads split 8 ways) per GPU.
    assert projection_shapes(spec, 8) == {
        "qkv": (768, 4096),
        "o": (4096, 512),
        "gate_up": (3072, 4096),
        "down": (4096, 1536),
        "lm_head": (18992, 4096),
    }


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    spec = load_model_spec("Qwen3-0.6B")  # 16 heads, 8 KV heads
    assert spec.num_key_value_heads == 8
    assert projection_shapes(spec, 16 // 2)["qkv"][0] == (2 + 2 * 1) * spec.head_dim


def test_m_grid_is_powers_of_two_to_16k() -> None:
    assert M_GRID[0] == 1 and M_GRID[-1] == 16384 and len(M_GRID) == 15


def test_shapes_match_the_committed_h200_table() -> None:
    rows = read_table(shared_path("data", "calibration", "h200-2026-11-28", "gemm.csv"))
    committed = {(r["shape_of"], r["n"], r["k"]) for r in rows}
    ours = {
        (s.shape_of, s.n, s.k)
        for s in gemm_shapes([load_model_spec("Qwen3-8B"), load_model_spec("Qwen3-32B")], (1,))
    }
    assert ours == committed


def test_gemm_shapes_dedupe_and_fp8() -> None:
    specs = [load_model_spec(n) for n in model_names()]
    shapes = gemm_shapes(specs)
    keys = [(s.n, s.k, s.dtype) for s in shapes]
    assert len(keys) == len(set(keys))
    assert {s.dtype for s in shapes} == {"bf16"}
    with_fp8 = gemm_shapes(specs, fp8=True)
    fp8 = [s for s in with_fp8 if s.dtype == "fp8"]
    assert fp8 and all(":lm_head" not in s.shape_of for s in fp8)
    assert all(s.shape_of.split(":")[0].endswith("-FP8") for s in fp8)


def test_head_configs_and_tp_rules() -> None:
    spec = load_model_spec("Qwen3-8B")
    assert [(c.num_heads, c.num_kv_heads, c.label) for c in head_configs([spec])] == [
        (32, 8, "Qwen3-8B"),
        (16, 4, "Qwen3-8B:tp2"),
        (8, 2, "Qwen3-8B:tp4"),
        (4, 1, "Qwen3-8B:tp8"),
    ]
    assert tp_supported(spec, 8) and not tp_supported(load_model_spec("Qwen2.5-7B"), 8)  # 28 heads


def test_tasks_in_priority_order() -> None:
    assert [t.name for t in TASKS] == [
        "gemm_core",
        "prefill_attention",
        "decode_attention",
        "e2e",
        "copy",
        "elementwise",
        "launch",
        "extend_attention",
        "gemm_rest",
        "allreduce",
    ]
    assert FAMILIES[0] == "gemm" and "allreduce" in FAMILIES
    for task in TASKS:
        assert callable(task.function())


def test_select_tasks() -> None:
    assert "allreduce" not in [t.name for t in select_tasks(None, quick=False, device_count=1)]
    assert "allreduce" in [t.name for t in select_tasks(None, quick=False, device_count=8)]
    assert "allreduce" not in [t.name for t in select_tasks(None, quick=True, device_count=8)]
    assert [t.name for t in select_tasks(["gemm"], False, 1)] == ["gemm_core", "gemm_rest"]
    assert [t.name for t in select_tasks(["e2e", "gemm_core"], False, 1)] == ["gemm_core", "e2e"]
    with pytest.raises(UserInputError, match="--only: unknown family 'gemmm'; valid: allreduce, copy"):
        select_tasks(["gemmm"], False, 1)


def test_budget_too_small_for_any_family() -> None:
    tasks = select_tasks(None, quick=False, device_count=1)
    check_budget(tasks, 60, quick=False)
    message = r"--budget-s 10 is too small for any family: the cheapest \(copy\) needs about 18 s"
    with pytest.raises(UserInputError, match=message):
        check_budget(tasks, 10, quick=False)
    with pytest.raises(UserInputError, match="must be positive"):
        check_budget(tasks, 0, quick=True)
    assert STARTUP_S[True] < STARTUP_S[False]


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _task(name: str, estimate: float) -> Task:
    return Task(name, name, "x:y", estimate, estimate)


def test_plan_run_spends_the_budget_in_order() -> None:
    clock = _Clock()
    tasks = [_task("a", 10), _task("b", 100), _task("c", 4), _task("d", 8)]
    deadlines: dict[str, float] = {}

    def execute(task: Task, deadline: float) -> tuple[str, int, str]:
        deadlines[task.name] = deadline
        if task.name == "b":  # runs into its deadline: partial
            clock.t = deadline
            return "partial", 3, "stopped for the budget"
        clock.t += task.estimate_s
        return "complete", 1, ""

    updates: list[list[str]] = []
    run = PlanRun(
        tasks, quick=False, deadline=50.0, now=clock, execute=execute,
        on_update=lambda rs: updates.append([r.status for r in rs]),
    )  # fmt: skip
    results = run.run()
    assert [(r.name, r.status) for r in results] == [
        ("a", "complete"),
        ("b", "partial"),
        ("c", "skipped"),
        ("d", "skipped"),
    ]
    assert deadlines == {"a": 20.0, "b": 50.0}  # a: twice its estimate; b: the global deadline
    assert results[2].note == "budget: 0 s left, needs at least 1 s"
    assert updates[0] == ["pending"] * 4 and updates[-1] == ["complete", "partial", "skipped", "skipped"]
    assert not all_complete(results)


def test_plan_run_skip_hook_and_complete() -> None:
    clock = _Clock()
    run = PlanRun(
        [_task("a", 1), _task("b", 1)], quick=True, deadline=100.0, now=clock,
        execute=lambda task, deadline: ("complete", 1, ""),
        skip=lambda task: "not here" if task.name == "b" else None,
    )  # fmt: skip
    results = run.run()
    assert [(r.status, r.note) for r in results] == [("complete", ""), ("skipped", "not here")]
    assert all_complete(results[:1])
