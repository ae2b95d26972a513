"""Tests of build_workload: dispatch by dataset name and refusal of bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvsim.core import UserInputError
from kvsim.workloads import DATASETS, build_workload, generate_random


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(UserInputError) as caught:
        build_workload("sharegpt", max_context_len=4096)
    assert str(caught.value) == (
        "unknown dataset 'sharegpt'; choose one of: generated-shared-prefix, mooncake, random, random-ids"
    )


def test_random_dispatch_matches_the_generator() -> None:
    built = build_workload("random", max_context_len=4096, num_prompts=20, request_rate=3.0, seed=4)
    direct = generate_random(
        num_prompts=20,
        random_input_len=1024,
        random_output_len=1024,
        random_range_ratio=0.0,
        request_rate=3.0,
        seed=4,
        max_context_len=4096,
    )
    assert built == direct
    assert (
        build_workload("random-ids", max_context_len=4096, num_prompts=20, request_rate=3.0, seed=4) == direct
    )


def test_gsp_ignores_num_prompts_and_uses_bench_serving_defaults() -> None:
    workload = build_workload("generated-shared-prefix", max_context_len=4096, num_prompts=3)
    assert len(workload) == 64 * 16
    assert {(r.input_len, r.output_len) for r in workload} == {(2048 + 128, 256)}


def test_mooncake_dispatch_ignores_request_rate(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        json.dumps({"timestamp": 0, "input_length": 4, "output_length": 2, "hash_ids": [1]})
        + "\n"
        + json.dumps({"timestamp": 500, "input_length": 4, "output_length": 2, "hash_ids": [2]})
        + "\n",
        encoding="utf-8",
    )
    workload = build_workload("mooncake", max_context_len=100, dataset_path=trace, request_rate=0.001)
    assert [r.arrival_s for r in workload] == [0.0, 0.5]


def test_mooncake_needs_a_path() -> None:
    with pytest.raises(UserInputError, match="dataset mooncake needs dataset_path"):
        build_workload("mooncake", max_context_len=100)


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("random", {"num_prompts": 0}, "num_prompts must be >= 1, got 0"),
        ("random", {"num_prompts": None}, "num_prompts must be an integer, got None"),
        ("random", {"random_input_len": -5}, "random_input_len must be >= 1, got -5"),
        ("random", {"random_output_len": 0}, "random_output_len must be >= 1, got 0"),
        ("random", {"random_range_ratio": -0.1}, "random_range_ratio must be in [0, 1], got -0.1"),
        ("random", {"request_rate": 0}, "request_rate must be a positive number or inf, got 0"),
        ("random", {"request_rate": -2.0}, "request_rate must be a positive number or inf, got -2.0"),
        ("random", {"request_rate": float("nan")}, "request_rate must be a positive number or inf, got nan"),
        ("random", {"seed": -1}, "seed must be >= 0, got -1"),
        ("random", {"max_context_len": 1}, "max_context_len must be >= 2, got 1"),
        ("random", {"vocab_size": 1}, "vocab_size must be >= 2, got 1"),
        ("generated-shared-prefix", {"gsp_num_groups": 0}, "gsp_num_groups must be >= 1, got 0"),
        ("generated-shared-prefix", {"gsp_prompts_per_group": -1}, "gsp_prompts_per_group must be >= 1"),
        ("generated-shared-prefix", {"gsp_system_prompt_len": 0}, "gsp_system_prompt_len must be >= 1"),
        ("generated-shared-prefix", {"gsp_question_len": 0}, "gsp_question_len must be >= 1"),
        ("generated-shared-prefix", {"gsp_output_len": 0}, "gsp_output_len must be >= 1"),
        ("generated-shared-prefix", {"gsp_range_ratio": 2}, "gsp_range_ratio must be in [0, 1], got 2"),
        ("generated-shared-prefix", {"request_rate": 0.0}, "request_rate must be a positive number or inf"),
        ("mooncake", {"dataset_path": "x.jsonl", "num_prompts": -3}, "num_prompts must be >= 1, got -3"),
        (
            "mooncake",
            {"dataset_path": "x.jsonl", "mooncake_slowdown_factor": 0},
            "mooncake_slowdown_factor must be a finite positive number, got 0",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(dataset: str, options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"max_context_len": 4096, **options}
    with pytest.raises(UserInputError) as caught:
        build_workload(dataset, **arguments)  # type: ignore[arg-type]
    assert str(caught.value) == message or str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_registered_dataset_names() -> None:
    assert set(DATASETS) == {"random", "random-ids", "generated-shared-prefix", "mooncake"}
