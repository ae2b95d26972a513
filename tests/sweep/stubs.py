"""Stub simulators for the sweep tests: known answers, no simulation.

A sweep names its simulator by import string, so these run inline, in worker processes and on Ray
alike (``tests.sweep.stubs:...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The rate (req/s) up to which :func:`linear_latency` meets ``p90_ttft_ms <= 1000``.
KNOWN_GOODPUT = 4.0
#: TTFT per unit of offered rate: p90 TTFT = 250 ms x rate, so 1000 ms is reached at exactly 4 req/s.
TTFT_MS_PER_RATE = 1000.0 / KNOWN_GOODPUT


def linear_latency(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """p90 TTFT grows linearly with ``workload.request_rate``; a bigger ``server.tp`` divides it."""
    rate = float(config["workload"]["request_rate"])
    tp = int(config["server"].get("tp") or 1)
    ttft = TTFT_MS_PER_RATE * rate / tp
    return {"p90_ttft_ms": ttft, "p90_tpot_ms": 10.0, "completed": 100}, {
        "l2_bytes": 0,
        "l3_bytes": 0,
        "l3_tiers": "",
    }


def fails_on_h100(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`linear_latency`, except that any run on an H100 raises."""
    if config["gpu"] == "H100":
        raise RuntimeError("stub failure on H100")
    return linear_latency(config)
