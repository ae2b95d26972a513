"""Fitted op-family models: rooflines with efficiency curves, one small formula per op family.

Each model turns a kernel's shape into seconds from the GPU's datasheet peaks (tensor FLOP/s, HBM
bandwidth, link bandwidth) and a handful of fitted parameters (``fitted.yaml`` beside a profile, written
by ``scripts/fit_h200.py`` and ``scripts/fit_h20.py``). Efficiencies saturate in the problem size,
``e(x) = e_max * x / (x + x_half)``, and a compute-bound and a memory-bound time are joined by a smooth
maximum ``blend(a, b, p) = (a^p + b^p)^(1/p)`` (``p`` large: a sharp roofline knee; ``p = 1``: the times add).

- ``gemm_v1``: ``blend(2mnk / (peak * e_max * s(m) s(n) s(k)), bytes / (bw * e_mem * c(n) c(k)), p) + t0``
  with ``s(x) = x / (x + x_half)`` per dimension, ``bytes = nk*w + mk*a + mn*2``, and ``c(n)``, ``c(k)``
  memory-efficiency corrections piecewise linear in ``log2`` of the dimension (``exp`` of values at
  ``2^6, 2^8, ..., 2^16``; kernel choice makes skinny GEMMs stream worse or better than the average).
- ``attention_prefill_v1``: ``blend(4 H d pairs / (peak * e_max * s(keys per query) s(work units)),
  bytes / (bw * e_mem), p) + t0``; ``pairs`` are the causal query-key pairs; work units are the query
  tiles ``T*H/128``, times ``1 + P / split_keys`` when ``split_keys`` is set, ``P`` the cached prefix per
  request: FlashAttention kernels split a long cached prefix into chunks that run in parallel
  (split-KV), so a short extend over a long prefix fills the GPU although it has few query tiles.
- ``attention_decode_v1``: ``blend(c_unit * W^2 / (W + w_half), kv_bytes / (bw * e_mem * s(L)),
  flops_padded / (peak * e_c * s(L)), p) + t0`` with ``W = batch * kv_heads`` work units (one thread block
  each), ``L`` the mean KV length and ``flops_padded = 4 * head_dim * kv_tokens * kv_heads *
  max(heads / kv_heads, 128)``: the decode kernel packs a KV head's query heads into one tensor-core tile
  of :data:`DECODE_QUERY_TILE` rows, so a GPU with throttled tensor cores (the H20) is bound by that
  padded compute rather than by HBM bandwidth.
- ``stream_v1`` (elementwise): ``t0 + bytes / (bw * e_mem)`` per kernel.
- ``allreduce_v1``: ``t0 + 2 (tp - 1) / tp * bytes / (link_bw * e_link)`` per collective.
- ``copy_v1``: ``t0 + (chunks - 1) * chunk + bytes / (bw * e)`` per copy; ``bw`` is PCIe for host copies
  and HBM (reading and writing, so twice the bytes) for device-to-device copies.

The formulas use only ``+ - * / **`` and ``abs`` so that one function serves Python floats (the
predictor's scalar fast path) and numpy arrays (fitting and validation).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import MISSING, dataclass, fields
from typing import Any

from kvsim.core.errors import ConfigError

Number = Any  # a float or a numpy array: every formula below works on both

#: fitted.yaml model names per family
MODELS = {
    "gemm": "gemm_v1",
    "attention_prefill": "attention_prefill_v1",
    "attention_decode": "attention_decode_v1",
    "elementwise": "stream_v1",
    "communication": "allreduce_v1",
    "host_copy": "copy_v1",
}


def blend(a: Number, b: Number, p: float) -> Number:
    """Smooth maximum ``(a^p + b^p)^(1/p)``, computed relative to the larger term (no overflow)."""
    big = (a + b + abs(a - b)) * 0.5
    return big * ((a / big) ** p + (b / big) ** p) ** (1.0 / p)


def dtype_key(dtype: str) -> str:
    """The parameter key of a dtype: 16-bit floats share ``bf16``; fp8 variants are ``fp8``."""
    return "fp8" if dtype.startswith("fp8") else "bf16"


def _us(value: float) -> float:
    return value * 1e-6


@dataclass(frozen=True, slots=True)
class GemmParams:
    """``gemm_v1`` parameters (``t0`` in seconds)."""

    e_max: float
    m_half: float
    n_half: float
    k_half: float
    e_mem: float
    p: float
    t0: float
    mem_n: tuple[float, ...] = (0.0,) * 6  # log-efficiency corrections at n = 2^6, 2^8, ..., 2^16
    mem_k: tuple[float, ...] = (0.0,) * 6


@dataclass(frozen=True, slots=True)
class PrefillParams:
    """``attention_prefill_v1`` parameters (``split_keys`` 0: no split-KV term, fits without prefix rows)."""

    e_max: float
    kq_half: float
    tiles_half: float
    e_mem: float
    p: float
    t0: float
    split_keys: float = 0.0


@dataclass(frozen=True, slots=True)
class DecodeParams:
    """``attention_decode_v1`` parameters (``c_unit`` and ``t0`` in seconds)."""

    c_unit: float
    w_half: float
    e_mem: float
    e_c: float
    l_half: float
    p: float
    t0: float


@dataclass(frozen=True, slots=True)
class StreamParams:
    """``stream_v1`` parameters."""

    e_mem: float
    t0: float


@dataclass(frozen=True, slots=True)
class AllreduceParams:
    """``allreduce_v1`` parameters."""

    e_link: float
    t0: float


@dataclass(frozen=True, slots=True)
class CopyParams:
    """``copy_v1`` parameters of one direction (``t0`` and ``chunk`` in seconds)."""

    e: float
    t0: float
    chunk: float


PARAM_TYPES: dict[str, type] = {
    "gemm_v1": GemmParams,
    "attention_prefill_v1": PrefillParams,
    "attention_decode_v1": DecodeParams,
    "stream_v1": StreamParams,
    "allreduce_v1": AllreduceParams,
    "copy_v1": CopyParams,
}
#: YAML keys carrying microseconds; converted to seconds on load (and back on save).
_MICROSECONDS = {"t0": "t0_us", "c_unit": "c_unit_us", "chunk": "chunk_us"}


def params_from_yaml(model: str, values: dict[str, Any], where: str) -> Any:
    """Build the parameter object of ``model`` from its YAML mapping; errors name ``where``."""
    kind = PARAM_TYPES.get(model)
    if kind is None:
        raise ConfigError(f"{where}: unknown model {model!r}; known: {', '.join(PARAM_TYPES)}")
    kwargs: dict[str, Any] = {}
    for item in fields(kind):
        key = _MICROSECONDS.get(item.name, item.name)
        vector = isinstance(item.default, tuple)
        if key not in values:
            if item.default is not MISSING:
                continue  # optional terms (corrections, split-KV) default to none
            raise ConfigError(f"{where}: missing parameter {key!r}")
        try:
            if vector:
                numbers = tuple(float(v) for v in values[key])
                if len(numbers) != len(item.default):
                    raise ValueError
                kwargs[item.name] = numbers
                continue
            number = float(values[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: parameter {key!r}={values[key]!r} is not a number") from None
        kwargs[item.name] = _us(number) if key.endswith("_us") else number
    return kind(**kwargs)


def params_to_yaml(params: Any, digits: int = 6) -> dict[str, Any]:
    """The YAML mapping of a parameter object (times in microseconds), rounded to ``digits`` figures."""
    out: dict[str, Any] = {}
    for item in fields(params):
        value = getattr(params, item.name)
        key = _MICROSECONDS.get(item.name, item.name)
        if isinstance(value, tuple):
            out[key] = [float(f"{v:.{digits}g}") for v in value]
            continue
        if item.default is not MISSING and value == item.default:
            continue  # an optional term left off (e.g. no split-KV term) is not written
        if key.endswith("_us"):
            value = value * 1e6
        out[key] = float(f"{value:.{digits}g}")
    return out


# ---- the formulas ----------------------------------------------------------------------------------------


def gemm_bytes(m: Number, n: Number, k: Number, dtype: str) -> Number:
    """Bytes a GEMM moves: weights and activations at the dtype's width (fp8: 1 B), 16-bit outputs."""
    width = 1 if dtype_key(dtype) == "fp8" else 2
    return n * k * width + m * k * width + m * n * 2


#: log2 of the dimensions where the GEMM memory-efficiency corrections are given
CORRECTION_KNOTS = (6.0, 8.0, 10.0, 12.0, 14.0, 16.0)
#: query rows of the tensor-core tile the decode kernel packs one KV head's query heads into
DECODE_QUERY_TILE = 128.0


def log2_linear(x: Number, values: tuple[float, ...]) -> Number:
    """Piecewise-linear interpolation of ``values`` over ``log2(x)`` at :data:`CORRECTION_KNOTS` (clamped)."""
    if isinstance(x, int | float):
        position = math.log2(x)
        knots = CORRECTION_KNOTS
        if position <= knots[0]:
            return values[0]
        if position >= knots[-1]:
            return values[-1]
        i = bisect_right(knots, position)
        frac = (position - knots[i - 1]) / (knots[i] - knots[i - 1])
        return values[i - 1] + frac * (values[i] - values[i - 1])
    import numpy as np

    return np.interp(np.log2(x), CORRECTION_KNOTS, values)


def gemm_time(m: Number, n: Number, k: Number, dtype: str, peak: float, bw: float, prm: GemmParams) -> Number:
    """Seconds of one GEMM ``[m, k] x [k, n]``."""
    eff = prm.e_max * (m / (m + prm.m_half)) * (n / (n + prm.n_half)) * (k / (k + prm.k_half))
    compute = 2.0 * m * n * k / (peak * eff)
    correction = log2_linear(n, prm.mem_n) + log2_linear(k, prm.mem_k)
    e_mem = prm.e_mem * (math.exp(correction) if isinstance(correction, float) else _np_exp(correction))
    memory = gemm_bytes(m, n, k, dtype) / (bw * e_mem)
    return blend(compute, memory, prm.p) + prm.t0


def _np_exp(x: Any) -> Any:
    import numpy as np

    return np.exp(x)


def prefill_attention_time(
    pairs: Number,
    tokens: Number,
    context: Number,
    heads: Number,
    kv_heads: Number,
    head_dim: Number,
    act_bytes: float,
    kv_bytes: float,
    peak: float,
    bw: float,
    prm: PrefillParams,
    requests: Number = 1.0,
) -> Number:
    """Seconds of one extend/prefill attention kernel over a batch of ``requests`` (aggregate features)."""
    flops = 4.0 * heads * head_dim * pairs
    # Read Q, write O, read the whole context's K and V, write the new tokens' K and V (as ops.py counts).
    nbytes = 2.0 * tokens * heads * head_dim * act_bytes
    nbytes = nbytes + 2.0 * kv_heads * head_dim * kv_bytes * (context + tokens)
    keys_per_query = pairs / tokens
    units = tokens * heads / 128.0  # query tiles
    if prm.split_keys:
        # split-KV: each query tile's cached prefix runs as parallel chunks of about split_keys keys
        units = units * (1.0 + (context - tokens) / requests / prm.split_keys)
    eff = prm.e_max * keys_per_query / (keys_per_query + prm.kq_half) * units / (units + prm.tiles_half)
    return blend(flops / (peak * eff), nbytes / (bw * prm.e_mem), prm.p) + prm.t0


def decode_attention_time(
    batch: Number,
    context: Number,
    heads: Number,
    kv_heads: Number,
    head_dim: Number,
    act_bytes: float,
    kv_bytes: float,
    peak: float,
    bw: float,
    prm: DecodeParams,
) -> Number:
    """Seconds of one decode attention kernel: ``batch`` requests reading ``context`` KV tokens in all."""
    units = batch * kv_heads
    fixed = prm.c_unit * units * units / (units + prm.w_half)
    mean_len = context / batch
    short = (mean_len + prm.l_half) / mean_len  # split-KV work is less efficient on short sequences
    nbytes = 2.0 * kv_heads * head_dim * kv_bytes * context + 2.0 * batch * heads * head_dim * act_bytes
    memory = nbytes * short / (bw * prm.e_mem)
    group = heads / kv_heads
    rows = (group + DECODE_QUERY_TILE + abs(group - DECODE_QUERY_TILE)) * 0.5  # max(group, tile)
    compute = 4.0 * head_dim * context * kv_heads * rows * short / (peak * prm.e_c)
    big = (fixed + memory + abs(fixed - memory)) * 0.5
    big = (big + compute + abs(big - compute)) * 0.5
    p = prm.p
    return big * ((fixed / big) ** p + (memory / big) ** p + (compute / big) ** p) ** (1.0 / p) + prm.t0


def stream_time(nbytes: Number, bw: float, prm: StreamParams) -> Number:
    """Seconds of one memory-streaming (elementwise) kernel."""
    return prm.t0 + nbytes / (bw * prm.e_mem)


def allreduce_time(nbytes: Number, tp: int, link_bw: float, prm: AllreduceParams) -> Number:
    """Seconds of one ring all-reduce of ``nbytes`` per GPU over ``tp`` GPUs."""
    return prm.t0 + 2.0 * (tp - 1) / tp * nbytes / (link_bw * prm.e_link)


def copy_time(nbytes: Number, chunks: Number, bw: float, prm: CopyParams) -> Number:
    """Seconds of one copy of ``nbytes`` in ``chunks`` pieces over a path of bandwidth ``bw``."""
    return prm.t0 + (chunks - 1) * prm.chunk + nbytes / (bw * prm.e)


__all__ = [
    "CORRECTION_KNOTS",
    "DECODE_QUERY_TILE",
    "MODELS",
    "PARAM_TYPES",
    "AllreduceParams",
    "CopyParams",
    "DecodeParams",
    "GemmParams",
    "PrefillParams",
    "StreamParams",
    "allreduce_time",
    "blend",
    "copy_time",
    "decode_attention_time",
    "dtype_key",
    "gemm_bytes",
    "gemm_time",
    "log2_linear",
    "params_from_yaml",
    "params_to_yaml",
    "prefill_attention_time",
    "stream_time",
]
