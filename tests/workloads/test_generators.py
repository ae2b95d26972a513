"""Tests of the random and generated-shared-prefix generators."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.workloads import DEFAULT_VOCAB_SIZE, Workload, generate_random, generate_shared_prefix


def random_workload(**overrides: object) -> Workload:
    options: dict[str, object] = {
        "num_prompts": 200,
        "random_input_len": 1000,
        "random_output_len": 100,
        "random_range_ratio": 0.5,
        "request_rate": 4.0,
        "seed": 1,
        "max_context_len": 4096,
    }
    options.update(overrides)
    return generate_random(**options)  # type: ignore[arg-type]


def gsp_workload(**overrides: object) -> Workload:
    options: dict[str, object] = {
        "gsp_num_groups": 4,
        "gsp_prompts_per_group": 8,
        "gsp_system_prompt_len": 64,
        "gsp_question_len": 16,
        "gsp_output_len": 32,
        "request_rate": float("inf"),
        "seed": 1,
        "max_context_len": 4096,
    }
    options.update(overrides)
    return generate_shared_prefix(**options)  # type: ignore[arg-type]


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    mismatch = np.nonzero(a[:n] != b[:n])[0]
    return int(mismatch[0]) if mismatch.size else n


# --- random -----------------------------------------------------------------------------------------


def test_random_lengths_stay_in_bench_serving_range() -> None:
    """Lengths are uniform integers in [max(int(L * r), 1), L]."""
    workload = random_workload()
    inputs = np.array([r.input_len for r in workload])
    outputs = np.array([r.output_len for r in workload])
    assert inputs.min() >= 500 and inputs.max() <= 1000
    assert outputs.min() >= 50 and outputs.max() <= 100
    # 200 uniform draws over 501 values spread over most of the range.
    assert inputs.min() < 520 and inputs.max() > 980


def test_random_range_ratio_extremes() -> None:
    fixed = random_workload(random_range_ratio=1.0)
    assert {r.input_len for r in fixed} == {1000} and {r.output_len for r in fixed} == {100}
    wide = random_workload(random_range_ratio=0.0, num_prompts=2000, random_input_len=10, random_output_len=3)
    assert {r.input_len for r in wide} == set(range(1, 11))
    assert {r.output_len for r in wide} == {1, 2, 3}


def test_random_tokens_are_int64_in_vocab_and_unshared() -> None:
    workload = random_workload(vocab_size=1000)
    for request in workload:
        assert request.token_ids.dtype == np.int64
        assert len(request.token_ids) == request.input_len
        assert request.token_ids.min() >= 0 and request.token_ids.max() < 1000
        assert not request.token_ids.flags.writeable
    # Distinct first tokens: no two prompts share even a one-token prefix.
    assert len({int(r.token_ids[0]) for r in workload}) == len(workload)


def test_random_is_deterministic_per_seed() -> None:
    assert random_workload().requests == random_workload().requests
    assert random_workload().requests != random_workload(seed=2).requests


def test_random_exact_first_values_for_seed_1() -> None:
    workload = random_workload(num_prompts=4, random_input_len=1024, random_output_len=128)
    first = workload.requests[:2]
    assert [(r.request_id, r.input_len, r.output_len) for r in first] == [(0, 981, 76), (1, 633, 119)]
    assert first[0].arrival_s == 0.0
    assert first[1].arrival_s == pytest.approx(0.12060058250039248, abs=1e-15)
    assert first[0].token_ids[:4].tolist() == [21348, 16685, 65094, 1431]


def test_request_rate_does_not_change_prompts() -> None:
    """Lengths, tokens and arrivals come from separate random streams."""
    slow, fast = random_workload(request_rate=1.0), random_workload(request_rate=float("inf"))
    assert [r.input_len for r in slow] == [r.input_len for r in fast]
    assert all(np.array_equal(a.token_ids, b.token_ids) for a, b in zip(slow, fast, strict=True))
    assert {r.arrival_s for r in fast} == {0.0}
    assert [r.arrival_s for r in slow] != [r.arrival_s for r in fast]


def test_random_truncation_is_counted() -> None:
    workload = random_workload(random_range_ratio=1.0, max_context_len=1050)
    assert workload.truncated_requests == len(workload)
    assert {(r.input_len, r.output_len) for r in workload} == {(1000, 50)}
    assert random_workload(random_range_ratio=1.0).truncated_requests == 0


def test_random_records_its_parameters() -> None:
    workload = random_workload()
    assert workload.name == "random"
    assert workload.params["num_prompts"] == 200
    assert workload.params["vocab_size"] == DEFAULT_VOCAB_SIZE


# --- generated-shared-prefix -----------------------------------------------------------------------


def test_gsp_shape() -> None:
    workload = gsp_workload()
    assert len(workload) == 32
    assert {(r.input_len, r.output_len) for r in workload} == {(80, 32)}
    assert [r.request_id for r in workload] == list(range(32))


def test_gsp_prompts_share_exactly_their_system_prompt() -> None:
    """Within a group the longest common prefix is the system prompt; across groups it is empty."""
    workload = gsp_workload()
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for request in workload:
        groups.setdefault(tuple(request.token_ids[:64].tolist()), []).append(request.token_ids)
    assert len(groups) == 4
    assert sorted(len(members) for members in groups.values()) == [8, 8, 8, 8]
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                assert common_prefix(members[i], members[j]) == 64
    heads = [members[0] for members in groups.values()]
    for i in range(len(heads)):
        for j in range(i + 1, len(heads)):
            assert common_prefix(heads[i], heads[j]) == 0


def test_gsp_is_shuffled_deterministically() -> None:
    """bench_serving shuffles GSP prompts, so groups are interleaved; the order is fixed by the seed."""
    first_tokens = [int(r.token_ids[0]) for r in gsp_workload()]
    assert first_tokens[:6] == [11014, 1658, 11014, 74078, 74078, 74078]
    assert first_tokens != sorted(first_tokens, key=first_tokens.index)  # not grouped together
    assert gsp_workload().requests == gsp_workload().requests
    assert gsp_workload(seed=5).requests != gsp_workload().requests


def test_gsp_range_ratio_keeps_one_system_prompt_length_per_group() -> None:
    workload = gsp_workload(gsp_range_ratio=0.5, gsp_prompts_per_group=20)
    lengths_by_group: dict[int, set[int]] = {}
    for request in workload:
        assert 16 <= request.output_len <= 32
        lengths_by_group.setdefault(int(request.token_ids[0]), set()).add(request.input_len)
    assert len(lengths_by_group) == 4
    # input = system (32..64, fixed per group) + question (8..16): at most 9 distinct values per group.
    for lengths in lengths_by_group.values():
        assert max(lengths) - min(lengths) <= 8
        assert min(lengths) >= 32 + 8 and max(lengths) <= 64 + 16


def test_gsp_poisson_arrivals() -> None:
    arrivals = [r.arrival_s for r in gsp_workload(request_rate=2.0)]
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals) and arrivals[-1] > 0


def test_gsp_truncation_is_counted() -> None:
    workload = gsp_workload(max_context_len=70)
    assert workload.truncated_requests == 32
    assert {(r.input_len, r.output_len) for r in workload} == {(69, 1)}
