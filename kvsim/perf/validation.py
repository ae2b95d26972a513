"""Validation data and error measures for the step-time predictor (used by the fitting and report scripts).

Two kinds of held-out error, per op family:

- **table leave-one-out**: drop one row of a measured table, predict it by interpolating the rest with
  exactly the predictor's lookup (:mod:`kvsim.perf.calibration`), compare;
- **fitted-model held-out error**: refit the family model without the row (leave-one-out on small tables)
  or without a tenth of the rows (10-fold cross-validation on the 5k-8k-row AIConfigurator tables), then
  predict the held-out rows.

Errors are relative (``predicted / measured - 1``); summaries report the median of their absolute values
and the 90th percentile. The third-party H20-3e tables are read from ``../shared`` and never copied:
:func:`aic_tables` returns them filtered to the dtypes kvsim models.

:func:`merge_runs` turns two runs of ``kvsim calibrate`` into one table, discarding host-bound rows (see
there); :func:`run_spread` measures how far two runs of the same rows differ, the noise floor that no
held-out error can be expected to beat.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvsim.hardware.tables import Table
from kvsim.perf.calibration import Guide, Key, Point, row_point, table_points
from kvsim.perf.interp import GroupedTable, leave_one_out

#: AIConfigurator dtype labels -> kvsim parameter keys. kvsim's fp8 checkpoints are 128x128
#: block-quantized, which AIConfigurator's SGLang collector calls ``fp8_block``.
AIC_GEMM_DTYPES = {"float16": "bf16", "fp8_block": "fp8"}
#: (attention dtype, KV-cache dtype) -> kvsim KV key; attention runs in 16 bit in both.
AIC_ATTENTION_DTYPES = {("float16", "float16"): "bf16", ("float16", "fp8"): "fp8"}
AIC_DIR = Path("data") / "third_party" / "aic-h20-3e-sglang-0.5.1.post1"


@dataclass(frozen=True)
class ErrorSummary:
    """Median and 90th percentile of absolute relative errors over ``rows`` rows."""

    median: float
    p90: float
    rows: int

    @classmethod
    def of(cls, errors: Iterable[float | None]) -> ErrorSummary:
        """Summarize relative errors (``None`` entries, rows that could not be predicted, are skipped)."""
        values = np.abs(np.array([e for e in errors if e is not None], dtype=float))
        if values.size == 0:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(np.median(values)), float(np.percentile(values, 90)), int(values.size))

    def as_dict(self) -> dict[str, Any]:
        """Rounded mapping for YAML and JSON."""
        return {"median_rel_err": round(self.median, 4), "p90_rel_err": round(self.p90, 4), "rows": self.rows}


def table_loo(table: Table, default_backend: str = "unknown") -> dict[tuple[Any, ...], list[float | None]]:
    """Leave-one-out relative errors of every row of ``table``, per lookup key."""
    return {key: leave_one_out(points) for key, points in table_points(table, default_backend).items()}


def guided_table_loo(
    table: Table, guide_for: Callable[[int], Guide | None], default_backend: str = "unknown"
) -> list[float | None]:
    """Leave-one-out of a model-guided table, the guide refitted without the held-out row.

    ``guide_for(i)`` returns the per-row guide fitted without row ``i`` (``None``: unguided); rows that
    share a guide object (one fold of a k-fold refit) share its evaluation, so return the same object
    for them. Rows the predictor never reads (non-causal prefill) and rows alone under their key give
    ``None``.
    """
    by_guide: dict[int, tuple[Guide | None, dict[Key, list[tuple[int, Point]]]]] = {}
    errors: list[float | None] = []
    for index, row in enumerate(table.rows):
        guide = guide_for(index)
        # Keyed by identity; the guide itself is kept in the value, so an id is never reused.
        cached = by_guide.get(id(guide))
        if cached is None:
            grouped: dict[Key, list[tuple[int, Point]]] = defaultdict(list)
            for j, other in enumerate(table.rows):
                item = row_point(table.family, other, default_backend, guide)
                if item is not None:
                    grouped[item[0]].append((j, item[1]))
            cached = (guide, grouped)
            by_guide[id(guide)] = cached
        own = row_point(table.family, row, default_backend, guide)
        if own is None:
            errors.append(None)
            continue
        key, point = own
        rest = [p for j, p in cached[1][key] if j != index]
        if not rest:
            errors.append(None)
            continue
        g, x, w, t = point[:4]
        guide_value = point[4] if len(point) == 5 else None
        errors.append(GroupedTable(rest)(g, x, w, guide_value) / t - 1.0)
    return errors


def flatten(errors_by_key: dict[Any, list[float | None]]) -> list[float | None]:
    """All errors of a per-key mapping in one list."""
    return [error for errors in errors_by_key.values() for error in errors]


# ---- two calibration runs into one table ------------------------------------------------------------------

#: A row counts as host-bound when it is this many times slower than the same row in the other run, or than
#: a row of the same shape that does at least as much work along every axis.
HOST_BOUND_RATIO = 1.5
#: Per ``kvsim calibrate`` table: the columns naming a kernel shape, and the columns whose growth adds work
#: (a row whose work columns are all >= another's, at the same shape, cannot take less time). More query heads
#: over the same KV heads add prefill FLOPs, and more KV heads under the same query heads add decode bytes.
ROW_SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gemm": (("n", "k", "dtype"), ("m",)),
    "attention_prefill": (
        ("num_kv_heads", "head_dim", "causal", "dtype", "backend", "past_len"),
        ("batch", "seq_len", "num_heads"),
    ),
    "attention_decode": (
        ("num_heads", "head_dim", "dtype", "backend", "page_size"),
        ("batch", "kv_len", "num_kv_heads"),
    ),
    "extend_attention": (
        ("batch", "num_kv_heads", "head_dim", "dtype"),
        ("extend_len", "prefix_len", "num_heads"),
    ),
    "elementwise": (("op", "width", "dtype"), ("tokens",)),
    "host_copy": (("direction", "pattern"), ("bytes", "chunks")),
}


@dataclass(frozen=True)
class RowFix:
    """A row :func:`merge_runs` changed: ``action`` is ``"run2"`` (the other run's value) or ``"dropped"``."""

    row: dict[str, str]
    action: str
    faster_ms: float  # the run-2 twin, or the fastest row doing at least as much work


def _shape(row: dict[str, str], columns: Sequence[str]) -> tuple[str, ...]:
    return tuple(row.get(column, "") for column in columns)


def merge_runs(
    family: str,
    run1: Sequence[dict[str, str]],
    run2: Sequence[dict[str, str]] | None = None,
    drop_dominated: bool = True,
) -> tuple[list[dict[str, str]], list[RowFix]]:
    """One table from two calibration runs of the same rows, host-bound rows replaced or dropped.

    ``kvsim calibrate`` keeps the GPU asleep while the host queues a row's repeats, so that the rows are
    kernel time; a call whose host side outlasts that sleep (a Python-heavy call such as a Triton
    launch or an SDPA call inside a backend context manager, on a kernel of a few microseconds) leaves
    the GPU waiting on the host, and its row measures the host instead. That error only ever adds time,
    so: a run-1 row more than :data:`HOST_BOUND_RATIO` times slower than its run-2 twin takes the twin's
    value; then, with ``drop_dominated``, a row that many times slower than a row of its shape with at
    least as much work along every axis (:data:`ROW_SHAPES`) is dropped, both runs having been
    host-bound there. Leave ``drop_dominated`` off for tables of single cheap launches (cuBLAS GEMMs,
    one-kernel elementwise ops), whose host side fits the sleep and whose few non-monotone rows are
    kernel choices that both runs reproduce. Rows are the CSV text as read (strings), so kept rows are
    written back byte for byte. Returns the rows (run-1 order) and what was changed.
    """
    shape_cols, work_cols = ROW_SHAPES[family]
    twin_cols = (*shape_cols, *work_cols)
    twins = {_shape(row, twin_cols): row for row in run2 or ()}
    fixes: list[RowFix] = []
    merged: list[dict[str, str]] = []
    for row in run1:
        twin = twins.get(_shape(row, twin_cols))
        if twin is not None and float(twin["latency_ms"]) * HOST_BOUND_RATIO < float(row["latency_ms"]):
            fixes.append(RowFix(dict(row), "run2", float(twin["latency_ms"])))
            row = twin
        merged.append(dict(row))
    by_shape: dict[tuple[str, ...], list[tuple[tuple[float, ...], float]]] = defaultdict(list)
    for row in merged:
        work = tuple(float(row[c]) for c in work_cols)
        by_shape[_shape(row, shape_cols)].append((work, float(row["latency_ms"])))
    kept: list[dict[str, str]] = []
    for row in merged:
        work = tuple(float(row[c]) for c in work_cols)
        own = float(row["latency_ms"])
        larger = [
            t
            for w, t in by_shape[_shape(row, shape_cols)]
            if w != work and all(a >= b for a, b in zip(w, work, strict=True))
        ]
        if drop_dominated and larger and min(larger) * HOST_BOUND_RATIO < own:
            fixes.append(RowFix(row, "dropped", min(larger)))
            continue
        kept.append(row)
    return kept, fixes


def run_spread(
    family: str, run1: Sequence[dict[str, str]], run2: Sequence[dict[str, str]]
) -> list[tuple[dict[str, str], float]]:
    """Every run-1 row with a run-2 twin, and ``run2 / run1 - 1`` of its latency."""
    shape_cols, work_cols = ROW_SHAPES[family]
    columns = (*shape_cols, *work_cols)
    twins = {_shape(row, columns): row for row in run2}
    out = []
    for row in run1:
        twin = twins.get(_shape(row, columns))
        if twin is not None:
            out.append((row, float(twin["latency_ms"]) / float(row["latency_ms"]) - 1.0))
    return out


# ---- the third-party H20-3e tables -------------------------------------------------------------------------


def shared_root(repo: Path) -> Path:
    """Where the shared data folder sits beside a checkout (``<repo>/../shared``)."""
    return repo.resolve().parent / "shared"


def aic_tables(shared: Path) -> dict[str, Any]:
    """The H20-3e GEMM, context- and generation-attention tables, filtered to the dtypes kvsim models.

    Raises ``FileNotFoundError`` naming the missing file when ``shared`` lacks them.
    """
    import pandas as pd

    folder = shared / AIC_DIR
    frames = {}
    for name in ("gemm_perf", "context_attention_perf", "generation_attention_perf"):
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the AIConfigurator H20-3e tables in ../shared)")
        frames[name] = pd.read_csv(path)
    gemm = frames["gemm_perf"]
    gemm = gemm[gemm.gemm_dtype.isin(list(AIC_GEMM_DTYPES))].assign(
        key=lambda d: d.gemm_dtype.map(AIC_GEMM_DTYPES)
    )
    out: dict[str, Any] = {"gemm": gemm.reset_index(drop=True)}
    for name, family in (("context_attention_perf", "prefill"), ("generation_attention_perf", "decode")):
        frame = frames[name]
        keys = [
            AIC_ATTENTION_DTYPES.get((a, k))
            for a, k in zip(frame.attn_dtype, frame.kv_cache_dtype, strict=True)
        ]
        frame = frame.assign(key=keys)
        out[family] = frame[frame.key.notna()].reset_index(drop=True)
    return out


def gemm_arrays(
    frame: Any, key: str, peak: float, bw: float, latency: str = "latency"
) -> tuple[dict, np.ndarray]:
    """Fit data of GEMM rows with parameter key ``key`` (``latency`` column in ms)."""
    rows = frame[frame.key == key] if "key" in frame else frame
    data = {
        "m": rows.m.to_numpy(float),
        "n": rows.n.to_numpy(float),
        "k": rows.k.to_numpy(float),
        "dtype": key,
        "peak": peak,
        "bw": bw,
    }
    return data, rows[latency].to_numpy(float) * 1e-3


def prefill_arrays(frame: Any, key: str, peak: float, bw: float) -> tuple[dict, np.ndarray]:
    """Fit data of AIConfigurator context-attention rows (causal, no prefix)."""
    rows = frame[frame.key == key]
    batch, isl = rows.batch_size.to_numpy(float), rows.isl.to_numpy(float)
    data = {
        "pairs": batch * isl * (isl + 1) / 2,
        "tokens": batch * isl,
        "context": batch * isl,
        "heads": rows.num_heads.to_numpy(float),
        "kv_heads": rows.num_key_value_heads.to_numpy(float),
        "head_dim": rows.head_dim.to_numpy(float),
        "act_bytes": 2.0,
        "kv_bytes": 1.0 if key == "fp8" else 2.0,
        "peak": peak,
        "bw": bw,
        "isl": isl,
        "requests": batch,
    }
    return data, rows.latency.to_numpy(float) * 1e-3


def decode_arrays(frame: Any, key: str, peak: float, bw: float) -> tuple[dict, np.ndarray]:
    """Fit data of AIConfigurator generation-attention rows (``step`` cached tokens plus the new one)."""
    rows = frame[frame.key == key]
    batch = rows.batch_size.to_numpy(float)
    length = rows.step.to_numpy(float) + 1.0
    data = {
        "batch": batch,
        "context": batch * length,
        "heads": rows.num_heads.to_numpy(float),
        "kv_heads": rows.num_key_value_heads.to_numpy(float),
        "head_dim": rows.head_dim.to_numpy(float),
        "act_bytes": 2.0,
        "kv_bytes": 1.0 if key == "fp8" else 2.0,
        "peak": peak,
        "bw": bw,
        "length": length,
    }
    return data, rows.latency.to_numpy(float) * 1e-3


def gemm_bound(data: dict, peak: float, bw: float) -> np.ndarray:
    """True where a GEMM row is compute-bound (arithmetic intensity above the ridge point)."""
    from kvsim.perf.families import gemm_bytes

    intensity = (
        2 * data["m"] * data["n"] * data["k"] / gemm_bytes(data["m"], data["n"], data["k"], data["dtype"])
    )
    return intensity > peak / bw


__all__ = [
    "AIC_ATTENTION_DTYPES",
    "AIC_DIR",
    "AIC_GEMM_DTYPES",
    "HOST_BOUND_RATIO",
    "ROW_SHAPES",
    "ErrorSummary",
    "RowFix",
    "aic_tables",
    "decode_arrays",
    "flatten",
    "gemm_arrays",
    "gemm_bound",
    "guided_table_loo",
    "merge_runs",
    "prefill_arrays",
    "run_spread",
    "shared_root",
    "table_loo",
]
