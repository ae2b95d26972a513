"""Fitting the op-family models of :mod:`kvsim.perf.families` to measured kernel times.

Parameters are fitted in log space (every parameter is positive) with ``scipy.optimize.least_squares``
on the log of predicted over measured time, with a soft-L1 loss so that a few odd kernels (tile-size
steps, clock changes) do not drag the curve. Held-out error is measured by leave-one-out refits for small
tables and by k-fold cross-validation for large ones (the caller says which, and the report prints it).

scipy is imported lazily: the predictor never needs it, only the fitting scripts (``scripts/fit_h2*.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from kvsim.perf.families import (
    PARAM_TYPES,
    copy_time,
    decode_attention_time,
    gemm_time,
    prefill_attention_time,
    stream_time,
)

Data = Mapping[str, Any]


@dataclass(frozen=True)
class FitSpec:
    """What to fit: a model, its prediction over a data mapping, a start point and bounds (SI units)."""

    model: str
    predict: Callable[[Any, Data], np.ndarray]
    init: dict[str, Any]  # scalars, or tuples for vector parameters
    bounds: dict[str, tuple[float, float]]  # per element for vectors


def _fields(model: str) -> list[tuple[str, int]]:
    """Parameter names of ``model`` with their sizes (0 for a scalar, n for an n-vector)."""
    out = []
    for item in fields(PARAM_TYPES[model]):
        out.append((item.name, len(item.default) if isinstance(item.default, tuple) else 0))
    return out


def make_params(model: str, values: Mapping[str, Any]) -> Any:
    """Build a parameter object of ``model`` from natural-unit values (seconds for times)."""
    kwargs: dict[str, Any] = {}
    for name, size in _fields(model):
        if name not in values:
            continue
        kwargs[name] = tuple(float(v) for v in values[name]) if size else float(values[name])
    return PARAM_TYPES[model](**kwargs)


def fit(
    spec: FitSpec, data: Data, seconds: np.ndarray, fixed: Mapping[str, Any] | None = None
) -> tuple[Any, np.ndarray]:
    """Fit ``spec`` to measured ``seconds``; returns the parameters and the relative errors per row.

    Scalars are fitted in log space within ``spec.bounds``; vector parameters (corrections) linearly
    within their bounds. ``fixed`` holds parameters at given values (to transfer curve shapes between
    GPUs, or to leave corrections out); parameters in neither ``fixed`` nor ``spec.init`` keep their
    defaults.
    """
    from scipy.optimize import least_squares

    fixed = dict(fixed or {})
    layout = [(name, size) for name, size in _fields(spec.model) if name not in fixed and name in spec.init]
    lower: list[float] = []
    upper: list[float] = []
    start: list[float] = []
    for name, size in layout:
        lo, hi = spec.bounds[name]
        if size:
            lower += [lo] * size
            upper += [hi] * size
            start += list(spec.init[name])  # type: ignore[arg-type]
        else:
            lower.append(math.log(lo))
            upper.append(math.log(hi))
            start.append(math.log(spec.init[name]))  # type: ignore[arg-type]
    lo_arr, hi_arr = np.array(lower), np.array(upper)
    x0 = np.clip(np.array(start, dtype=float), lo_arr + 1e-9, hi_arr - 1e-9)
    log_t = np.log(seconds)

    def params_of(theta: np.ndarray) -> Any:
        values: dict[str, Any] = dict(fixed)
        i = 0
        for name, size in layout:
            if size:
                values[name] = tuple(theta[i : i + size])
                i += size
            else:
                values[name] = math.exp(theta[i])
                i += 1
        return make_params(spec.model, values)

    def residual(theta: np.ndarray) -> np.ndarray:
        return np.log(spec.predict(params_of(theta), data)) - log_t

    if layout:
        result = least_squares(residual, x0, bounds=(lo_arr, hi_arr), loss="soft_l1", f_scale=0.05)
        params = params_of(result.x)
    else:
        params = make_params(spec.model, fixed)
    return params, spec.predict(params, data) / seconds - 1.0


def subset(data: Data, index: np.ndarray) -> dict[str, Any]:
    """The rows ``index`` of a data mapping (arrays are indexed, scalars and strings kept)."""
    return {k: (v[index] if isinstance(v, np.ndarray) and v.ndim == 1 else v) for k, v in data.items()}


def held_out_errors(
    spec: FitSpec,
    data: Data,
    seconds: np.ndarray,
    folds: int | None = None,
    fixed: Mapping[str, float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Relative error of every row when the model is refitted without it.

    ``folds=None`` refits once per row (leave-one-out); an integer uses that many random folds.
    """
    n = len(seconds)
    errors = np.empty(n)
    if folds is None or folds >= n:
        groups = [np.array([i]) for i in range(n)]
    else:
        order = np.random.default_rng(seed).permutation(n)
        groups = [order[i::folds] for i in range(folds)]
    for held in groups:
        keep = np.setdiff1d(np.arange(n), held)
        params, _ = fit(spec, subset(data, keep), seconds[keep], fixed)
        errors[held] = spec.predict(params, subset(data, held)) / seconds[held] - 1.0
    return errors


# ---- the specs per family --------------------------------------------------------------------------------


def _gemm_predict(prm: Any, d: Data) -> np.ndarray:
    return gemm_time(d["m"], d["n"], d["k"], d["dtype"], d["peak"], d["bw"], prm)


GEMM = FitSpec(
    model="gemm_v1",
    predict=_gemm_predict,
    init={
        "e_max": 0.8,
        "m_half": 32.0,
        "n_half": 128.0,
        "k_half": 128.0,
        "e_mem": 0.8,
        "p": 8.0,
        "t0": 4e-6,
        "mem_n": (0.0,) * 6,
        "mem_k": (0.0,) * 6,
    },
    bounds={
        "e_max": (0.05, 1.0),
        "m_half": (1e-3, 1e5),
        "n_half": (1e-3, 1e5),
        "k_half": (1e-3, 1e5),
        "e_mem": (0.02, 1.0),
        "p": (1.0, 64.0),
        "t0": (1e-8, 1e-3),
        "mem_n": (-3.0, 3.0),
        "mem_k": (-3.0, 3.0),
    },
)
#: gemm_v1 without the per-dimension corrections (for tables with only a few shapes)
GEMM_PLAIN = FitSpec(
    model="gemm_v1",
    predict=_gemm_predict,
    init={k: v for k, v in GEMM.init.items() if k not in ("mem_n", "mem_k")},
    bounds=GEMM.bounds,
)


def _prefill_predict(prm: Any, d: Data) -> np.ndarray:
    return prefill_attention_time(
        d["pairs"],
        d["tokens"],
        d["context"],
        d["heads"],
        d["kv_heads"],
        d["head_dim"],
        d["act_bytes"],
        d["kv_bytes"],
        d["peak"],
        d["bw"],
        prm,
        d.get("requests", 1.0),
    )


PREFILL = FitSpec(
    model="attention_prefill_v1",
    predict=_prefill_predict,
    init={"e_max": 0.7, "kq_half": 100.0, "tiles_half": 30.0, "e_mem": 0.5, "p": 4.0, "t0": 10e-6},
    bounds={
        "e_max": (0.05, 2.0),
        "kq_half": (1e-3, 1e6),
        "tiles_half": (1e-3, 1e6),
        "e_mem": (0.01, 1.0),
        "p": (1.0, 64.0),
        "t0": (1e-8, 1e-3),
    },
)

#: attention_prefill_v1 with its split-KV term, for tables with extend rows (a cached prefix); without
#: them ``split_keys`` has nothing to fit
PREFILL_SPLIT = FitSpec(
    model="attention_prefill_v1",
    predict=_prefill_predict,
    init={**PREFILL.init, "split_keys": 2048.0},
    bounds={**PREFILL.bounds, "split_keys": (1.0, 1e7)},
)


def _decode_predict(prm: Any, d: Data) -> np.ndarray:
    return decode_attention_time(
        d["batch"],
        d["context"],
        d["heads"],
        d["kv_heads"],
        d["head_dim"],
        d["act_bytes"],
        d["kv_bytes"],
        d["peak"],
        d["bw"],
        prm,
    )


DECODE = FitSpec(
    model="attention_decode_v1",
    predict=_decode_predict,
    init={"c_unit": 1e-7, "w_half": 64.0, "e_mem": 0.7, "e_c": 0.8, "l_half": 10.0, "p": 2.0, "t0": 15e-6},
    bounds={
        "c_unit": (1e-10, 1e-4),
        "w_half": (1e-3, 1e6),
        "e_mem": (0.01, 1.0),
        "e_c": (0.01, 1.0),
        "l_half": (1e-6, 1e6),
        "p": (1.0, 64.0),
        "t0": (1e-8, 1e-3),
    },
)


def _stream_predict(prm: Any, d: Data) -> np.ndarray:
    return stream_time(d["bytes"], d["bw"], prm)


STREAM = FitSpec(
    model="stream_v1",
    predict=_stream_predict,
    init={"e_mem": 0.8, "t0": 4e-6},
    bounds={"e_mem": (0.01, 1.5), "t0": (1e-8, 1e-3)},
)


def _copy_predict(prm: Any, d: Data) -> np.ndarray:
    # d2d copies read and write every byte: ``mult`` is 2 for them, 1 for host copies
    return copy_time(d["bytes"] * d["mult"], d["chunks"], d["bw"], prm)


COPY = FitSpec(
    model="copy_v1",
    predict=_copy_predict,
    init={"e": 0.85, "t0": 10e-6, "chunk": 5e-6},
    bounds={"e": (0.01, 1.0), "t0": (1e-7, 1e-3), "chunk": (1e-8, 1e-3)},
)

SPECS = {
    "gemm": GEMM,
    "attention_prefill": PREFILL,
    "attention_decode": DECODE,
    "elementwise": STREAM,
    "host_copy": COPY,
}

__all__ = [
    "COPY",
    "DECODE",
    "GEMM",
    "GEMM_PLAIN",
    "PREFILL",
    "PREFILL_SPLIT",
    "SPECS",
    "STREAM",
    "FitSpec",
    "fit",
    "held_out_errors",
    "make_params",
    "subset",
]
