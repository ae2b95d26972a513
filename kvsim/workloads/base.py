"""The workload data model: one :class:`Request` per prompt and the :class:`Workload` that holds them.

A request carries its prompt as token ids so that a prefix cache (radix tree or block keys) can match
prompts exactly as a real server would. Generators and trace readers in this package build
:class:`Workload` objects; engines only read them.

This module also holds the shared input checks (every bad value raises
:class:`~kvsim.core.UserInputError` with a one-line message naming the parameter and the value) and
the context-length truncation rule that every workload source applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvsim.core import UserInputError

#: Vocabulary size used for synthetic token ids unless the caller says otherwise (Qwen2/Qwen3).
DEFAULT_VOCAB_SIZE = 151_936


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """One request of a workload.

    Attributes:
        request_id: Dense id, 0..n-1 in arrival order within its workload.
        arrival_s: Time the client issues the request, in seconds from the start of the run.
        input_len: Prompt length in tokens (after context-length truncation).
        output_len: Number of tokens to generate (the client sets ``max_new_tokens`` to this and
            ignores EOS, as ``bench_serving`` does).
        token_ids: The prompt, ``int64`` of length ``input_len``; read-only. Equal prefixes mean a
            prefix cache may reuse the KV of those tokens.
        session_id: Conversation the request belongs to, for multi-turn workloads; ``None`` otherwise.

    Equality compares every field, the tokens element-wise (the generated ``__eq__`` of a dataclass
    would call ``bool()`` on an array comparison, which numpy refuses).
    """

    request_id: int
    arrival_s: float
    input_len: int
    output_len: int
    token_ids: np.ndarray
    session_id: int | None = None

    def __post_init__(self) -> None:
        # A mismatch here is a bug in a generator, not a user error, hence ValueError.
        if self.token_ids.ndim != 1 or len(self.token_ids) != self.input_len:
            raise ValueError(
                f"request {self.request_id}: token_ids has shape {self.token_ids.shape}, "
                f"expected ({self.input_len},)"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.request_id == other.request_id
            and self.arrival_s == other.arrival_s
            and self.input_len == other.input_len
            and self.output_len == other.output_len
            and self.session_id == other.session_id
            and np.array_equal(self.token_ids, other.token_ids)
        )

    def __hash__(self) -> int:
        # Consistent with __eq__: equal requests have equal scalar fields.
        return hash((self.request_id, self.arrival_s, self.input_len, self.output_len, self.session_id))


@dataclass(eq=True)
class Workload:
    """A list of requests in arrival order plus how it was made.

    Attributes:
        name: Dataset name that produced it (``"random"``, ``"generated-shared-prefix"``, ``"mooncake"``).
        requests: Requests sorted by ``arrival_s`` (ties keep generation order); ids are 0..n-1.
        truncated_requests: How many requests were cut to fit ``max_context_len``.
        params: The resolved parameters that made the workload (for the run's resolved config).
    """

    name: str
    requests: list[Request]
    truncated_requests: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    @property
    def total_input_tokens(self) -> int:
        """Sum of prompt lengths."""
        return sum(r.input_len for r in self.requests)

    @property
    def total_output_tokens(self) -> int:
        """Sum of requested output lengths."""
        return sum(r.output_len for r in self.requests)


# ---------------------------------------------------------------------------------------------------
# Context-length truncation
# ---------------------------------------------------------------------------------------------------


def truncate_lengths(input_len: int, output_len: int, max_context_len: int) -> tuple[int, int]:
    """Fit one request into ``max_context_len`` tokens.

    The rule follows what an SGLang server does with ``--allow-auto-truncate``: the prompt is cut
    first, keeping its *prefix* (so prefix-cache matches survive) and leaving room for at least one
    output token (``input <= max_context_len - 1``); then ``max_new_tokens`` is clipped to the room
    that is left (``output <= max_context_len - input``). Afterwards
    ``input + output <= max_context_len``, ``input >= 1`` and ``output >= 1``.

    Args:
        input_len: Prompt length, >= 1.
        output_len: Requested output length, >= 1.
        max_context_len: Context window of the model, >= 2.

    Returns:
        ``(input_len, output_len)`` after truncation; unchanged when the request already fits.
    """
    new_input = min(input_len, max_context_len - 1)
    new_output = min(output_len, max_context_len - new_input)
    return new_input, new_output


# ---------------------------------------------------------------------------------------------------
# Input checks shared by the generators and readers (one line each, naming parameter and value)
# ---------------------------------------------------------------------------------------------------


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= ``minimum``, else raise UserInputError."""
    # bool is an int subclass; True as a length is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UserInputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserInputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_ratio(name: str, value: object) -> float:
    """Return ``value`` as a float in ``[0, 1]``, else raise UserInputError."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise UserInputError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise UserInputError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def check_positive_float(name: str, value: object, *, allow_inf: bool = False) -> float:
    """Return ``value`` as a float > 0 (``inf`` only when ``allow_inf``), else raise UserInputError."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise UserInputError(f"{name} must be a positive number, got {value!r}")
    number = float(value)
    if math.isnan(number) or number <= 0.0 or (math.isinf(number) and not allow_inf):
        allowed = "a positive number or inf" if allow_inf else "a finite positive number"
        raise UserInputError(f"{name} must be {allowed}, got {value}")
    return number


def check_context(max_context_len: object) -> int:
    """Validate ``max_context_len``: at least 2 tokens (one prompt token plus one output token)."""
    return check_int("max_context_len", max_context_len, minimum=2)


def freeze(array: np.ndarray) -> np.ndarray:
    """Mark ``array`` read-only and return it.

    Prompts are shared between requests (views of one buffer, or the same system prompt), so a
    consumer writing into one must fail loudly instead of corrupting another request.
    """
    array.flags.writeable = False
    return array


def build_requests(
    prompts: list[np.ndarray],
    output_lens: np.ndarray | list[int],
    arrivals: np.ndarray,
    max_context_len: int,
    session_ids: list[int | None] | None = None,
) -> tuple[list[Request], int]:
    """Turn prompts, output lengths and arrival times (already in arrival order) into requests.

    Applies :func:`truncate_lengths` to each request; a truncated prompt keeps its prefix.

    Args:
        prompts: One read-only ``int64`` token array per request.
        output_lens: Requested output length per request (each >= 1).
        arrivals: Non-decreasing arrival times in seconds, one per request.
        max_context_len: Context window the requests must fit in.
        session_ids: Optional session id per request.

    Returns:
        ``(requests, truncated_requests)`` with request ids 0..n-1 in the given order.
    """
    requests: list[Request] = []
    truncated = 0
    for i, tokens in enumerate(prompts):
        input_len = len(tokens)
        output_len = int(output_lens[i])
        new_input, new_output = truncate_lengths(input_len, output_len, max_context_len)
        if (new_input, new_output) != (input_len, output_len):
            truncated += 1
            tokens = tokens[:new_input]  # a view of a read-only array stays read-only
        requests.append(
            Request(
                request_id=i,
                arrival_s=float(arrivals[i]),
                input_len=new_input,
                output_len=new_output,
                token_ids=tokens,
                session_id=None if session_ids is None else session_ids[i],
            )
        )
    return requests, truncated
