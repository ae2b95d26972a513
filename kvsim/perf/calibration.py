"""A profile's calibration turned into lookups: table rows as interpolation points, fitted parameters.

Every table row becomes a point ``(group, x, work, seconds)`` for :class:`~kvsim.perf.interp.GroupedTable`
(see that module for the interpolation rules); the same conversion serves the predictor and the
leave-one-out validation, so both see the tables identically:

============= =============================== ========= =========================== ==================
table         key                             group     x (efficiency variable)     work
============= =============================== ========= =========================== ==================
gemm          ``(n, k, dtype)``               --        ``m``                       ``m``
prefill attn  ``(heads, kv_heads, head_dim,   batch     mean keys per query         causal pairs
              dtype, backend)``
decode attn   ``(heads, kv_heads, head_dim,   batch     KV length per request       KV tokens read
              dtype, backend)``
host copy     ``(direction, pattern)``        chunks    bytes                       bytes
elementwise   ``(op, dtype)``                 width     bytes                       bytes
allreduce     ``(tp, dtype)``                 --        bytes                       bytes
============= =============================== ========= =========================== ==================

Elementwise rows are keyed by their ``op`` (``rmsnorm``, ``silu_and_mul``, ...) and grouped by their row
``width`` when the table has that column (else one group): different kernels moving the same bytes take
different times, and an RMSNorm over 128-wide head rows streams far slower than one over hidden-size rows.
The predictor maps its ops onto these names (:data:`kvsim.perf.predictor.ELEMENTWISE_TABLE_OPS`).

When the profile also has fitted parameters for the family, the table is *guided* by that model (see
:mod:`kvsim.perf.interp`): each point carries the model's time for its row, and lookups interpolate the
ratio of table to model. :func:`row_guide` builds that per-row model.

Attention rows without a ``backend`` column take the backend the profile's ``table_backends`` names
(``unknown`` when it names none). Where a table holds the same shapes under two backends, the geometric
mean of their time ratio is the correction factor between them (:func:`backend_factor`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

from kvsim.core.errors import ConfigError
from kvsim.hardware.profile import GpuProfile
from kvsim.hardware.tables import Table
from kvsim.perf.families import (
    copy_time,
    decode_attention_time,
    dtype_key,
    gemm_time,
    params_from_yaml,
    prefill_attention_time,
    stream_time,
)
from kvsim.perf.interp import GroupedTable

Point = tuple[float, ...]
Key = tuple[Any, ...]
Guide = Callable[[dict[str, Any]], float]


def causal_pairs(seq_len: int, past_len: int = 0) -> int:
    """Query-key pairs of one causal sequence of ``seq_len`` new tokens on ``past_len`` cached ones."""
    return seq_len * past_len + seq_len * (seq_len + 1) // 2


def row_point(
    family: str, row: dict[str, Any], default_backend: str = "unknown", guide: Guide | None = None
) -> tuple[Key, Point] | None:
    """The lookup key and interpolation point of one table row (see the module table).

    ``None`` for rows the predictor never reads (non-causal prefill). With a ``guide`` (:func:`row_guide`)
    the point gets the model's time for the row as a fifth element.
    """
    if family == "attention_prefill" and int(row["causal"]) != 1:
        return None  # language-model prefill is causal; other rows stay in the file, unused
    seconds = float(row["latency_ms"]) * 1e-3
    if family == "gemm":
        m = float(row["m"])
        key: Key = (int(row["n"]), int(row["k"]), dtype_key(str(row["dtype"])))
        point: Point = (1.0, m, m, seconds)
    elif family == "attention_prefill":
        batch, seq = int(row["batch"]), int(row["seq_len"])
        pairs = batch * causal_pairs(seq, int(row.get("past_len", 0) or 0))
        key = _attention_key(row, default_backend)
        point = (float(batch), pairs / (batch * seq), float(pairs), seconds)
    elif family == "attention_decode":
        batch, kv_len = int(row["batch"]), int(row["kv_len"])
        key = _attention_key(row, default_backend)
        point = (float(batch), float(kv_len), float(batch * kv_len), seconds)
    elif family == "host_copy":
        nbytes = float(row["bytes"])
        key = (str(row["direction"]), str(row["pattern"]))
        point = (float(row["chunks"]), nbytes, nbytes, seconds)
    elif family == "elementwise":
        nbytes = float(row["bytes"])
        key = (str(row["op"]), dtype_key(str(row["dtype"])))
        point = (float(row.get("width") or 1), nbytes, nbytes, seconds)
    else:  # communication
        nbytes = float(row["bytes"])
        key = (int(row["tp"]), dtype_key(str(row["dtype"])))
        point = (1.0, nbytes, nbytes, seconds)
    if guide is not None:
        point = (*point, guide(row))
    return key, point


def table_points(
    table: Table, default_backend: str = "unknown", guide: Guide | None = None
) -> dict[Key, list[tuple[float, ...]]]:
    """Group a table's rows into interpolation points per lookup key (see the module table).

    With a ``guide`` (:func:`row_guide`) every point gets the model's time for its row as a fifth element.
    """
    points: dict[Key, list[tuple[float, ...]]] = defaultdict(list)
    for row in table.rows:
        item = row_point(table.family, row, default_backend, guide)
        if item is not None:
            points[item[0]].append(item[1])
    return dict(points)


def _attention_key(row: dict[str, Any], default_backend: str) -> Key:
    backend = str(row.get("backend") or default_backend)
    return (
        int(row["num_heads"]),
        int(row["num_kv_heads"]),
        int(row["head_dim"]),
        dtype_key(str(row["dtype"])),
        backend,
    )


#: rows of recently indexed tables by lookup key; each entry holds its table, so an id is never reused
_INDEX: OrderedDict[tuple[int, str], tuple[Table, dict[Key, list[dict[str, Any]]]]] = OrderedDict()
_INDEX_SIZE = 32


def table_index(table: Table, default_backend: str = "unknown") -> dict[Key, list[dict[str, Any]]]:
    """The rows of ``table`` the predictor reads, by lookup key (cached: a profile's tables are indexed once).

    A predictor needs one key per op; indexing first means the guide is evaluated only for that key's rows
    (a 3780-row GEMM table would otherwise cost every predictor tens of milliseconds).
    """
    cache_key = (id(table), default_backend)
    hit = _INDEX.get(cache_key)
    if hit is not None and hit[0] is table:
        _INDEX.move_to_end(cache_key)
        return hit[1]
    index: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for row in table.rows:
        item = row_point(table.family, row, default_backend)
        if item is not None:
            index[item[0]].append(row)
    _INDEX[cache_key] = (table, dict(index))
    while len(_INDEX) > _INDEX_SIZE:
        _INDEX.popitem(last=False)
    return _INDEX[cache_key][1]


def table_lookup(
    table: Table, key: Key, default_backend: str = "unknown", guide: Guide | None = None
) -> GroupedTable | None:
    """The :class:`GroupedTable` of one key of ``table`` (guided by ``guide`` if given), or ``None``."""
    rows = table_index(table, default_backend).get(key)
    if not rows:
        return None
    points = []
    for row in rows:
        item = row_point(table.family, row, default_backend, guide)
        assert item is not None  # the index holds only rows with a point
        points.append(item[1])
    return GroupedTable(points)


def table_lookups(
    table: Table, default_backend: str = "unknown", guide: Guide | None = None
) -> dict[Key, GroupedTable]:
    """One :class:`GroupedTable` per lookup key of ``table`` (guided when ``guide`` is given)."""
    return {key: GroupedTable(points) for key, points in table_points(table, default_backend, guide).items()}


def row_guide(profile: GpuProfile, family: str) -> Guide | None:
    """The profile's fitted model of ``family`` as a function of one table row (seconds, as measured).

    ``None`` when the profile has no fitted parameters for the family. The model's own timing floor is
    kept (the rows include theirs), so table-to-model ratios compare like with like.
    """
    if family not in profile.fitted:
        return None
    _, params, _ = fitted_params(profile, family)
    where = f"profile {profile.name} fitted {family}"
    bw = profile.memory_bandwidth
    if family == "gemm":

        def gemm_guide(row: dict[str, Any]) -> float:
            dtype = str(row["dtype"])
            prm = pick(params, dtype, where)
            peak = profile.peak_flops(dtype_key(dtype))
            return float(gemm_time(row["m"], row["n"], row["k"], dtype, peak, bw, prm))

        return gemm_guide
    if family == "attention_prefill":
        peak16 = profile.peak_flops("bf16")

        def prefill_guide(row: dict[str, Any]) -> float:
            dtype = str(row["dtype"])
            batch, seq = int(row["batch"]), int(row["seq_len"])
            past = int(row.get("past_len", 0) or 0)
            tokens, context = batch * seq, batch * (seq + past)
            pairs = batch * causal_pairs(seq, past)
            kvb = 1.0 if dtype_key(dtype) == "fp8" else 2.0
            prm = pick(params, dtype, where)
            return float(
                prefill_attention_time(
                    pairs,
                    tokens,
                    context,
                    row["num_heads"],
                    row["num_kv_heads"],
                    row["head_dim"],
                    2.0,
                    kvb,
                    peak16,
                    bw,
                    prm,
                    batch,
                )
            )

        return prefill_guide
    if family == "attention_decode":

        def decode_guide(row: dict[str, Any]) -> float:
            dtype = str(row["dtype"])
            fp8 = dtype_key(dtype) == "fp8"
            peak = (
                profile.compute_flops.get("fp8", profile.peak_flops("bf16"))
                if fp8
                else profile.peak_flops("bf16")
            )
            batch = int(row["batch"])
            prm = pick(params, dtype, where)
            return float(
                decode_attention_time(
                    batch,
                    batch * int(row["kv_len"]),
                    row["num_heads"],
                    row["num_kv_heads"],
                    row["head_dim"],
                    2.0,
                    1.0 if fp8 else 2.0,
                    peak,
                    bw,
                    prm,
                )
            )

        return decode_guide
    if family == "host_copy":

        def copy_guide(row: dict[str, Any]) -> float:
            direction = str(row["direction"])
            prm = pick(params, direction, where)
            d2d = direction == "d2d"
            nbytes = float(row["bytes"]) * (2 if d2d else 1)
            return float(copy_time(nbytes, row["chunks"], bw if d2d else profile.pcie_bandwidth, prm))

        return copy_guide
    if family == "elementwise":

        def stream_guide(row: dict[str, Any]) -> float:
            prm = pick(params, str(row["dtype"]), where)
            return float(stream_time(float(row["bytes"]), bw, prm))

        return stream_guide
    return None


def backend_factor(points: dict[Key, list[Point]], measured: str, target: str) -> float | None:
    """Time ratio target/measured over rows present under both backends; ``None`` without such rows."""
    if measured == target:
        return 1.0
    by_shape: dict[tuple[Key, float, float], dict[str, float]] = defaultdict(dict)
    for key, rows in points.items():
        for g, x, _w, t in rows:
            by_shape[(key[:-1], g, x)][key[-1]] = t
    pairs = [both for both in by_shape.values() if {measured, target} <= set(both)]
    logs = [math.log(both[target] / both[measured]) for both in pairs]
    if not logs:
        return None
    return math.exp(sum(logs) / len(logs))


def fitted_params(profile: GpuProfile, family: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The fitted model name, its parameter objects by key, and the family entry of ``fitted.yaml``."""
    entry = profile.fitted.get(family)
    if entry is None:
        raise ConfigError(f"profile {profile.name}: no fitted {family} parameters")
    model = str(entry["model"])
    values = entry["params"]
    where = f"profile {profile.name} fitted.yaml families.{family}"
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{where}.params: expected a mapping of parameter sets")
    params = {
        str(key): params_from_yaml(model, dict(sub), f"{where}.params.{key}") for key, sub in values.items()
    }
    return model, params, entry


def pick(params: dict[str, Any], key: str, where: str) -> Any:
    """``params[key]``, else the ``bf16`` set for 16-bit keys, else the ``any`` set; error otherwise."""
    for candidate in (key, dtype_key(key), "any"):
        if candidate in params:
            return params[candidate]
    raise ConfigError(f"{where}: no parameters for {key!r} (have {', '.join(sorted(params))})")


__all__ = [
    "backend_factor",
    "causal_pairs",
    "fitted_params",
    "pick",
    "row_guide",
    "row_point",
    "table_index",
    "table_lookup",
    "table_lookups",
    "table_points",
]
