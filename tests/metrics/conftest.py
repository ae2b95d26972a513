"""Shared builders for the metrics tests: a hand-computable three-request timeline."""

from __future__ import annotations

import numpy as np
import pytest

from kvsim.metrics import RequestRecord


def make_record(
    request_id: int,
    send_s: float,
    token_times: list[float],
    *,
    input_len: int = 100,
    cached_tokens: int = 0,
    arrival_s: float | None = None,
    with_times: bool = True,
) -> RequestRecord:
    """A record whose first token and finish come from ``token_times``."""
    return RequestRecord(
        request_id=request_id,
        arrival_s=send_s if arrival_s is None else arrival_s,
        send_s=send_s,
        first_token_s=token_times[0],
        finish_s=token_times[-1],
        input_len=input_len,
        output_len=len(token_times),
        cached_tokens=cached_tokens,
        token_times=np.array(token_times) if with_times else None,
    )


@pytest.fixture
def three_requests() -> list[RequestRecord]:
    """Three requests with round times (seconds).

    r0: sent 0.0, tokens at 0.1 0.2 0.3 0.4 0.5 -> TTFT 100 ms, E2E 500 ms, TPOT 100 ms, ITL 4 x 100 ms
    r1: sent 0.2, tokens at 0.5 0.7 0.9         -> TTFT 300 ms, E2E 700 ms, TPOT 200 ms, ITL 2 x 200 ms
    r2: sent 0.4, one token at 0.6              -> TTFT 200 ms, E2E 200 ms, no TPOT, no ITL
    """
    return [
        make_record(0, 0.0, [0.1, 0.2, 0.3, 0.4, 0.5], input_len=100, cached_tokens=50),
        make_record(1, 0.2, [0.5, 0.7, 0.9], input_len=200, cached_tokens=0),
        make_record(2, 0.4, [0.6], input_len=300, cached_tokens=150),
    ]
