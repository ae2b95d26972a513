"""What a run records: one :class:`RequestRecord` per finished request, one :class:`IterationRecord` per step.

Times are simulated seconds from the start of the run. The request record carries exactly what
``sglang.bench_serving`` observes from the client side (send time, the time each streamed token
arrived, the finish time), so :mod:`kvsim.metrics.summary` can compute its metrics with its rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: What a forward step did: only prefill (extend) work, only decode, both, or nothing (waiting).
IterationKind = Literal["prefill", "decode", "mixed", "idle"]
ITERATION_KINDS: frozenset[str] = frozenset(("prefill", "decode", "mixed", "idle"))


@dataclass(frozen=True, slots=True, eq=False)
class RequestRecord:
    """Timeline of one finished request.

    Attributes:
        request_id: The workload's request id.
        arrival_s: When the workload issued the request.
        send_s: When the client sent it (later than ``arrival_s`` only under a concurrency limit);
            latencies are measured from here, as ``bench_serving`` starts its timer at send.
        first_token_s: When the first output token reached the client.
        finish_s: When the last output token reached the client.
        input_len: Prompt tokens.
        output_len: Generated tokens.
        cached_tokens: Prompt tokens served from the prefix cache (any tier) instead of computed.
        token_times: Optional ``float64`` times at which output arrived, first token included: one
            entry per streamed chunk, i.e. one per token, or one per step under speculative decoding.
            ITL is computed from it; records without it add nothing to ITL.
        cached_tokens_device: With a tiered prefix cache, the part of ``cached_tokens`` found in device
            memory (L1); None when the engine has no tiers.
        cached_tokens_host: With a tiered prefix cache, the part of ``cached_tokens`` loaded back from
            host memory (L2); None when the engine has no tiers.
        cached_tokens_storage: With an L3 storage tier, the part of ``cached_tokens_host`` that this
            request's own prefetch brought from storage into host memory; None without L3.
        prefetched_tokens: With an L3 storage tier, tokens this request's prefetch brought from storage
            into host memory (used or not); None without L3.
        prefetch_s: With an L3 storage tier, how long this request's prefetch moved data: from the
            request's arrival at the server until its last page landed in host memory, or until the
            scheduler stopped it if that came first; None when the request made no prefetch.

    Equality compares every field, ``token_times`` element-wise.
    """

    request_id: int
    arrival_s: float
    send_s: float
    first_token_s: float
    finish_s: float
    input_len: int
    output_len: int
    cached_tokens: int = 0
    token_times: np.ndarray | None = None
    cached_tokens_device: int | None = None
    cached_tokens_host: int | None = None
    cached_tokens_storage: int | None = None
    prefetched_tokens: int | None = None
    prefetch_s: float | None = None

    def __post_init__(self) -> None:
        # Violations are engine bugs, so ValueError rather than UserInputError.
        if not self.arrival_s <= self.send_s <= self.first_token_s <= self.finish_s:
            raise ValueError(
                f"request {self.request_id}: times must satisfy arrival <= send <= first_token <= finish, "
                f"got {self.arrival_s}, {self.send_s}, {self.first_token_s}, {self.finish_s}"
            )
        if self.output_len < 1 or self.input_len < 0 or not 0 <= self.cached_tokens <= self.input_len:
            raise ValueError(
                f"request {self.request_id}: need output_len >= 1 and 0 <= cached_tokens <= input_len, "
                f"got input_len={self.input_len}, output_len={self.output_len}, "
                f"cached_tokens={self.cached_tokens}"
            )
        if self.token_times is not None and self.token_times.ndim != 1:
            raise ValueError(f"request {self.request_id}: token_times must be one-dimensional")
        device, host = self.cached_tokens_device, self.cached_tokens_host
        if (device is None) != (host is None):
            raise ValueError(f"request {self.request_id}: give both per-tier cached counts or neither")
        if (
            device is not None
            and host is not None
            and not (device >= 0 and host >= 0 and device + host == self.cached_tokens)
        ):
            raise ValueError(
                f"request {self.request_id}: per-tier cached counts {device} + {host} must be >= 0 and "
                f"add up to cached_tokens={self.cached_tokens}"
            )
        storage = self.cached_tokens_storage
        if storage is not None and not 0 <= storage <= (host if host is not None else self.cached_tokens):
            raise ValueError(
                f"request {self.request_id}: cached_tokens_storage={storage} must lie in [0, the host part]"
            )
        if self.prefetched_tokens is not None and self.prefetched_tokens < 0:
            raise ValueError(f"request {self.request_id}: prefetched_tokens must be >= 0")
        if self.prefetch_s is not None and not self.prefetch_s >= 0:
            raise ValueError(f"request {self.request_id}: prefetch_s must be >= 0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestRecord):
            return NotImplemented
        if (self.token_times is None) != (other.token_times is None):
            return False
        return (
            self.request_id == other.request_id
            and self.arrival_s == other.arrival_s
            and self.send_s == other.send_s
            and self.first_token_s == other.first_token_s
            and self.finish_s == other.finish_s
            and self.input_len == other.input_len
            and self.output_len == other.output_len
            and self.cached_tokens == other.cached_tokens
            and self.cached_tokens_device == other.cached_tokens_device
            and self.cached_tokens_host == other.cached_tokens_host
            and self.cached_tokens_storage == other.cached_tokens_storage
            and self.prefetched_tokens == other.prefetched_tokens
            and self.prefetch_s == other.prefetch_s
            and (self.token_times is None or np.array_equal(self.token_times, other.token_times))
        )

    def __hash__(self) -> int:
        return hash((self.request_id, self.send_s, self.finish_s, self.input_len, self.output_len))

    @property
    def ttft_s(self) -> float:
        """Time to first token: ``first_token_s - send_s``."""
        return self.first_token_s - self.send_s

    @property
    def e2e_latency_s(self) -> float:
        """End-to-end latency: ``finish_s - send_s``."""
        return self.finish_s - self.send_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; ``None`` for single-token outputs."""
        if self.output_len <= 1:
            return None
        return (self.e2e_latency_s - self.ttft_s) / (self.output_len - 1)


@dataclass(frozen=True, slots=True)
class IterationRecord:
    """One forward step of an engine.

    Attributes:
        time_s: When the step started.
        kind: ``"prefill"``, ``"decode"``, ``"mixed"`` or ``"idle"``.
        batch: ``[extend_len, past_len]`` per request in the step (lists or tuples); decode is
            ``extend_len == 1``. This is the step-time predictor's input, so the log doubles as
            training data for it.
        step_time_ms: Duration of the step.
        num_running: Requests in the running batch after scheduling.
        num_waiting: Requests left in the waiting queue.
        extra: Optional named numbers (e.g. ``{"l2_load_ms": 0.4}``), written under ``"extra"``.
    """

    time_s: float
    kind: IterationKind
    batch: Sequence[Sequence[int]]
    step_time_ms: float
    num_running: int
    num_waiting: int
    extra: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ITERATION_KINDS:
            raise ValueError(f"kind(={self.kind!r}) must be one of {sorted(ITERATION_KINDS)}")

    @property
    def num_tokens(self) -> int:
        """Tokens computed in the step (sum of ``extend_len``)."""
        return sum(extend for extend, _ in self.batch)
