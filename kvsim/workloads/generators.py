"""Synthetic workloads with ``sglang.bench_serving`` semantics: ``random`` and ``generated-shared-prefix``.

Lengths follow ``bench_serving``'s ``compute_random_lens``: uniform integers in
``[max(int(L * range_ratio), 1), L]``. Arrivals follow its ``get_request``: a Poisson process at
``request_rate`` whose first request is sent at t = 0 (all at 0 when the rate is ``inf``).

Where kvsim differs from ``bench_serving``, on purpose:

- Prompts are token ids drawn uniformly from ``[0, vocab_size)``, not ShareGPT text re-tokenized, so
  no tokenizer is needed and lengths are exact. The first token of every ``random`` prompt (and of
  every GSP system prompt, and of every question within a GSP group) is distinct whenever there are
  at most ``vocab_size`` of them, so prompts never share a prefix by accident.
- GSP joins system prompt and question directly; ``bench_serving`` puts ``"\\n\\n"`` between them and
  re-tokenizes, which adds a token or two.
- Each aspect draws from its own named random stream (lengths, tokens, shuffle, arrivals) derived
  from the seed, so changing ``request_rate`` does not change the prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvsim.core import spawn_rng
from kvsim.workloads.arrivals import poisson_arrivals
from kvsim.workloads.base import (
    DEFAULT_VOCAB_SIZE,
    Workload,
    build_requests,
    check_context,
    check_int,
    check_positive_float,
    check_ratio,
    freeze,
)


def random_lengths(rng: np.random.Generator, full_len: int, range_ratio: float, num: int) -> np.ndarray:
    """``num`` lengths uniform in ``[max(int(full_len * range_ratio), 1), full_len]`` (``bench_serving``).

    Args:
        rng: Generator to draw from.
        full_len: Upper bound, >= 1.
        range_ratio: Lower bound as a fraction of ``full_len``, in [0, 1].
        num: How many lengths.

    Returns:
        ``int64`` array of lengths.
    """
    low = max(int(full_len * range_ratio), 1)
    return rng.integers(low, full_len + 1, size=num, dtype=np.int64)


def random_prompts(rng: np.random.Generator, lengths: np.ndarray, vocab_size: int) -> list[np.ndarray]:
    """Random prompts of the given lengths that share no prefix with each other.

    All tokens come from one draw (one buffer; the prompts are read-only views into it). The first
    tokens are then redrawn without replacement so that no two prompts start alike; with more
    prompts than the vocabulary that is impossible and the first tokens stay independent draws.

    Args:
        rng: Generator to draw from.
        lengths: Prompt lengths, each >= 1.
        vocab_size: Token ids are in ``[0, vocab_size)``.

    Returns:
        One read-only ``int64`` array per length.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    tokens = rng.integers(0, vocab_size, size=int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    if 0 < len(lengths) <= vocab_size:
        tokens[ends - lengths] = rng.choice(vocab_size, size=len(lengths), replace=False)
    freeze(tokens)
    return np.split(tokens, ends[:-1])


def generate_random(
    *,
    num_prompts: int,
    random_input_len: int,
    random_output_len: int,
    random_range_ratio: float,
    request_rate: float,
    seed: int,
    max_context_len: int,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Workload:
    """The ``random`` dataset: independent random prompts with uniform random lengths.

    Args:
        num_prompts: Number of requests, >= 1.
        random_input_len: Maximum prompt length, >= 1.
        random_output_len: Maximum output length, >= 1.
        random_range_ratio: Lower length bound as a fraction of the maximum, in [0, 1].
        request_rate: Poisson arrival rate in requests per second (``inf``: all at t = 0).
        seed: Run seed (>= 0).
        max_context_len: Requests are truncated to fit (see :func:`~kvsim.workloads.base.truncate_lengths`).
        vocab_size: Token ids are drawn from ``[0, vocab_size)``.

    Returns:
        The workload, requests in arrival order.
    """
    num_prompts = check_int("num_prompts", num_prompts)
    random_input_len = check_int("random_input_len", random_input_len)
    random_output_len = check_int("random_output_len", random_output_len)
    random_range_ratio = check_ratio("random_range_ratio", random_range_ratio)
    request_rate = check_positive_float("request_rate", request_rate, allow_inf=True)
    seed = check_int("seed", seed, minimum=0)
    max_context_len = check_context(max_context_len)
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)

    lengths_rng = spawn_rng(seed, "workloads.random.lengths")
    input_lens = random_lengths(lengths_rng, random_input_len, random_range_ratio, num_prompts)
    output_lens = random_lengths(lengths_rng, random_output_len, random_range_ratio, num_prompts)
    prompts = random_prompts(spawn_rng(seed, "workloads.random.tokens"), input_lens, vocab_size)
    arrivals = poisson_arrivals(num_prompts, request_rate, spawn_rng(seed, "workloads.arrivals"))

    requests, truncated = build_requests(prompts, output_lens, arrivals, max_context_len)
    params: dict[str, Any] = {
        "num_prompts": num_prompts,
        "random_input_len": random_input_len,
        "random_output_len": random_output_len,
        "random_range_ratio": random_range_ratio,
        "request_rate": request_rate,
        "seed": seed,
        "max_context_len": max_context_len,
        "vocab_size": vocab_size,
    }
    return Workload(name="random", requests=requests, truncated_requests=truncated, params=params)


def generate_shared_prefix(
    *,
    gsp_num_groups: int,
    gsp_prompts_per_group: int,
    gsp_system_prompt_len: int,
    gsp_question_len: int,
    gsp_output_len: int,
    gsp_range_ratio: float = 1.0,
    request_rate: float,
    seed: int,
    max_context_len: int,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Workload:
    """The ``generated-shared-prefix`` (GSP) dataset: groups of prompts sharing one system prompt.

    Each of ``gsp_num_groups`` groups has one system prompt; each of its ``gsp_prompts_per_group``
    prompts is that system prompt followed by its own question. The prompts of all groups are
    shuffled together (``bench_serving`` shuffles them too), then given Poisson arrival times. The
    number of requests is ``gsp_num_groups * gsp_prompts_per_group``; ``num_prompts`` plays no part.

    Lengths use ``gsp_range_ratio`` like ``bench_serving``: system prompts, questions and outputs are
    each uniform in ``[max(int(L * ratio), 1), L]``; the default 1.0 makes them exactly ``L``.

    Args:
        gsp_num_groups: Number of system prompts, >= 1.
        gsp_prompts_per_group: Questions per system prompt, >= 1.
        gsp_system_prompt_len: System prompt length in tokens, >= 1.
        gsp_question_len: Question length in tokens, >= 1.
        gsp_output_len: Output length in tokens, >= 1.
        gsp_range_ratio: Lower length bound as a fraction of each length, in [0, 1].
        request_rate: Poisson arrival rate in requests per second (``inf``: all at t = 0).
        seed: Run seed (>= 0).
        max_context_len: Requests are truncated to fit.
        vocab_size: Token ids are drawn from ``[0, vocab_size)``.

    Returns:
        The workload, requests in arrival order.
    """
    num_groups = check_int("gsp_num_groups", gsp_num_groups)
    per_group = check_int("gsp_prompts_per_group", gsp_prompts_per_group)
    system_len = check_int("gsp_system_prompt_len", gsp_system_prompt_len)
    question_len = check_int("gsp_question_len", gsp_question_len)
    output_len = check_int("gsp_output_len", gsp_output_len)
    ratio = check_ratio("gsp_range_ratio", gsp_range_ratio)
    request_rate = check_positive_float("request_rate", request_rate, allow_inf=True)
    seed = check_int("seed", seed, minimum=0)
    max_context_len = check_context(max_context_len)
    vocab_size = check_int("vocab_size", vocab_size, minimum=2)
    total = num_groups * per_group

    lengths_rng = spawn_rng(seed, "workloads.gsp.lengths")
    system_lens = random_lengths(lengths_rng, system_len, ratio, num_groups)
    question_lens = random_lengths(lengths_rng, question_len, ratio, total)
    output_lens = random_lengths(lengths_rng, output_len, ratio, total)

    tokens_rng = spawn_rng(seed, "workloads.gsp.tokens")
    system_prompts = random_prompts(tokens_rng, system_lens, vocab_size)
    prompts: list[np.ndarray] = []
    for group in range(num_groups):
        # Questions are drawn per group so their first tokens differ within the group: a prompt then
        # shares exactly the system prompt with its siblings, never a token more.
        lens = question_lens[group * per_group : (group + 1) * per_group]
        for question in random_prompts(tokens_rng, lens, vocab_size):
            prompts.append(freeze(np.concatenate((system_prompts[group], question))))

    order = spawn_rng(seed, "workloads.gsp.shuffle").permutation(total)
    prompts = [prompts[i] for i in order]
    shuffled_outputs = output_lens[order]
    arrivals = poisson_arrivals(total, request_rate, spawn_rng(seed, "workloads.arrivals"))

    requests, truncated = build_requests(prompts, shuffled_outputs, arrivals, max_context_len)
    params: dict[str, Any] = {
        "gsp_num_groups": num_groups,
        "gsp_prompts_per_group": per_group,
        "gsp_system_prompt_len": system_len,
        "gsp_question_len": question_len,
        "gsp_output_len": output_len,
        "gsp_range_ratio": ratio,
        "request_rate": request_rate,
        "seed": seed,
        "max_context_len": max_context_len,
        "vocab_size": vocab_size,
    }
    return Workload(
        name="generated-shared-prefix", requests=requests, truncated_requests=truncated, params=params
    )
