"""The load knob: how a sweep sets a run's request rate.

Synthetic datasets (``random``, ``random-ids``, ``generated-shared-prefix``) arrive as a Poisson process
at ``workload.request_rate``. A Mooncake trace arrives at its own timestamps and ``request_rate`` plays
no part, so its load is set with ``workload.mooncake_slowdown_factor``: the trace's own rate (requests
over its span, ``(n - 1) / span`` as for a Poisson process) divided by the slowdown. Either way the sweep
speaks in requests per second. A slowed-down trace keeps its bursts: requests that share a timestamp
still arrive together, so its TTFT has a floor no slowdown removes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvsim.core.errors import UserInputError
from kvsim.sweep.paths import get_path

RATE_PATH = "workload.request_rate"
SLOWDOWN_PATH = "workload.mooncake_slowdown_factor"
TRACE_DATASETS = ("mooncake",)


def _as_rate(value: Any, where: str) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserInputError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UserInputError(f"{where}: {value!r} is not a number") from None
    if not number > 0:
        raise UserInputError(f"{where}: must be > 0, got {value!r}")
    return number


@lru_cache(maxsize=32)
def trace_rate(path: str, num_prompts: int | None) -> float:
    """The Mooncake trace's own request rate (requests/s) over its first ``num_prompts`` records."""
    from kvsim.workloads.mooncake import read_mooncake_records

    records = read_mooncake_records(path, num_prompts)
    stamps = [record[0] for record in records]
    span_s = (max(stamps) - min(stamps)) / 1000.0
    if len(stamps) < 2 or span_s <= 0:
        raise UserInputError(
            f"{path}: the trace's first {len(stamps)} requests share one timestamp; no rate to scale"
        )
    return (len(stamps) - 1) / span_s


@dataclass(frozen=True, slots=True)
class LoadKnob:
    """The path that sets a configuration's load, and (for a trace) the trace's own rate."""

    path: str
    native_rate: float | None = None

    def value_for(self, rate: float) -> float:
        """The value of :attr:`path` that offers ``rate`` requests/s."""
        return rate if self.native_rate is None else self.native_rate / rate

    def rate_of(self, value: Any) -> float:
        """The rate (requests/s) that a value of :attr:`path` offers."""
        number = _as_rate(value, self.path)
        return number if self.native_rate is None else self.native_rate / number

    def base_rate(self, config: Mapping[str, Any]) -> float:
        """The rate the configuration offers as written (a trace without a slowdown: its own rate)."""
        default = 1.0 if self.native_rate is not None else math.inf
        value = get_path(config, self.path, None)
        return self.rate_of(default if value is None else value)


def knob_for(config: Mapping[str, Any]) -> LoadKnob:
    """The load knob of an experiment config (reads the trace's timestamps for a Mooncake workload)."""
    workload = config.get("workload") or {}
    if workload.get("dataset_name") not in TRACE_DATASETS:
        return LoadKnob(RATE_PATH)
    path = workload.get("dataset_path")
    if not path or not Path(path).is_file():
        raise UserInputError(f"workload.dataset_path: trace file not found: {path}")
    num_prompts = workload.get("num_prompts")
    return LoadKnob(SLOWDOWN_PATH, trace_rate(str(Path(path).resolve()), num_prompts))
