"""Workloads: what the simulated clients send, and when.

:func:`build_workload` turns ``bench_serving``-style options (``--dataset-name``, ``--num-prompts``,
``--request-rate``, ``--random-*``, ``--gsp-*``, ``--mooncake-slowdown-factor``, ``--seed``) into a
:class:`Workload`: a list of :class:`Request` objects with token ids, lengths and arrival times.

Layering: this package imports ``kvsim.core`` only (``kvsim.models`` and ``kvsim.cache`` block keys are
allowed but not needed); the model's context window comes in as a plain ``max_context_len``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from kvsim.core import UserInputError
from kvsim.workloads.arrivals import poisson_arrivals
from kvsim.workloads.base import DEFAULT_VOCAB_SIZE, Request, Workload, check_int, truncate_lengths
from kvsim.workloads.generators import generate_random, generate_shared_prefix
from kvsim.workloads.mooncake import MOONCAKE_BLOCK_SIZE, hash_id_tokens, read_mooncake


def _build_random(o: dict[str, Any]) -> Workload:
    return generate_random(
        num_prompts=o["num_prompts"],
        random_input_len=o["random_input_len"],
        random_output_len=o["random_output_len"],
        random_range_ratio=o["random_range_ratio"],
        request_rate=o["request_rate"],
        seed=o["seed"],
        max_context_len=o["max_context_len"],
        vocab_size=o["vocab_size"],
    )


def _build_gsp(o: dict[str, Any]) -> Workload:
    return generate_shared_prefix(
        gsp_num_groups=o["gsp_num_groups"],
        gsp_prompts_per_group=o["gsp_prompts_per_group"],
        gsp_system_prompt_len=o["gsp_system_prompt_len"],
        gsp_question_len=o["gsp_question_len"],
        gsp_output_len=o["gsp_output_len"],
        gsp_range_ratio=o["gsp_range_ratio"],
        request_rate=o["request_rate"],
        seed=o["seed"],
        max_context_len=o["max_context_len"],
        vocab_size=o["vocab_size"],
    )


def _build_mooncake(o: dict[str, Any]) -> Workload:
    if o["dataset_path"] is None:
        raise UserInputError("dataset mooncake needs dataset_path (a Mooncake JSONL trace)")
    return read_mooncake(
        o["dataset_path"],
        num_prompts=o["num_prompts"],
        max_context_len=o["max_context_len"],
        mooncake_slowdown_factor=o["mooncake_slowdown_factor"],
        block_size=o["mooncake_block_size"],
        vocab_size=o["vocab_size"],
    )


#: Dataset name -> builder. ``random-ids`` is ``bench_serving``'s token-id variant of ``random``; kvsim
#: always works on token ids, so the two are the same here.
DATASETS: dict[str, Callable[[dict[str, Any]], Workload]] = {
    "random": _build_random,
    "random-ids": _build_random,
    "generated-shared-prefix": _build_gsp,
    "mooncake": _build_mooncake,
}


def build_workload(
    dataset_name: str,
    *,
    max_context_len: int,
    seed: int = 1,
    num_prompts: int | None = 1000,
    request_rate: float = math.inf,
    random_input_len: int = 1024,
    random_output_len: int = 1024,
    random_range_ratio: float = 0.0,
    gsp_num_groups: int = 64,
    gsp_prompts_per_group: int = 16,
    gsp_system_prompt_len: int = 2048,
    gsp_question_len: int = 128,
    gsp_output_len: int = 256,
    gsp_range_ratio: float = 1.0,
    dataset_path: str | os.PathLike[str] | None = None,
    mooncake_slowdown_factor: float = 1.0,
    mooncake_block_size: int = MOONCAKE_BLOCK_SIZE,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Workload:
    """Build a workload the way ``sglang.bench_serving`` would sample it.

    Defaults are ``bench_serving``'s. Only the options of the chosen dataset are read (and checked):
    ``random`` uses ``num_prompts``, ``random_*`` and ``request_rate``; ``generated-shared-prefix`` uses
    ``gsp_*`` and ``request_rate`` (its size is groups x prompts per group, ``num_prompts`` is ignored);
    ``mooncake`` uses ``dataset_path``, ``num_prompts`` (``None``: the whole trace) and
    ``mooncake_slowdown_factor`` (``request_rate`` is ignored: the trace's timestamps are the arrivals).

    Args:
        dataset_name: One of :data:`DATASETS`.
        max_context_len: Model context window; longer requests are truncated and counted.
        seed: Run seed, >= 0.
        num_prompts: Number of requests (random) or records to read (mooncake).
        request_rate: Poisson arrival rate in requests/s; ``inf`` sends everything at t = 0.
        random_input_len: Maximum prompt length of ``random``.
        random_output_len: Maximum output length of ``random``.
        random_range_ratio: Lower length bound of ``random`` as a fraction of the maximum.
        gsp_num_groups: GSP system prompts.
        gsp_prompts_per_group: GSP questions per system prompt.
        gsp_system_prompt_len: GSP system prompt length.
        gsp_question_len: GSP question length.
        gsp_output_len: GSP output length.
        gsp_range_ratio: GSP lower length bound as a fraction (1.0: fixed lengths).
        dataset_path: Trace file for ``mooncake``.
        mooncake_slowdown_factor: Stretches trace time (2.0 = half speed).
        mooncake_block_size: Tokens per hash id in the trace.
        vocab_size: Synthetic token ids are in ``[0, vocab_size)``.

    Returns:
        The workload.

    Raises:
        UserInputError: Unknown dataset name or an invalid option (one line naming it).
    """
    if not isinstance(dataset_name, str) or dataset_name not in DATASETS:
        raise UserInputError(
            f"unknown dataset {dataset_name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    check_int("seed", seed, minimum=0)
    options = {
        "max_context_len": max_context_len,
        "seed": seed,
        "num_prompts": num_prompts,
        "request_rate": request_rate,
        "random_input_len": random_input_len,
        "random_output_len": random_output_len,
        "random_range_ratio": random_range_ratio,
        "gsp_num_groups": gsp_num_groups,
        "gsp_prompts_per_group": gsp_prompts_per_group,
        "gsp_system_prompt_len": gsp_system_prompt_len,
        "gsp_question_len": gsp_question_len,
        "gsp_output_len": gsp_output_len,
        "gsp_range_ratio": gsp_range_ratio,
        "dataset_path": dataset_path,
        "mooncake_slowdown_factor": mooncake_slowdown_factor,
        "mooncake_block_size": mooncake_block_size,
        "vocab_size": vocab_size,
    }
    return DATASETS[dataset_name](options)


__all__ = [
    "DATASETS",
    "DEFAULT_VOCAB_SIZE",
    "MOONCAKE_BLOCK_SIZE",
    "Request",
    "Workload",
    "build_workload",
    "generate_random",
    "generate_shared_prefix",
    "hash_id_tokens",
    "poisson_arrivals",
    "read_mooncake",
    "truncate_lengths",
]
