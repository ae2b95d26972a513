"""Calibration tables: the CSV formats kvsim reads, and a strict reader that names the file on any error.

A GPU profile may carry measured kernel tables beside its ``profile.yaml``, one CSV per op family. The
formats are the ones this project's calibration scripts write (``docs/profiles.md`` documents them):

================== ========================= =======================================================
family             default file              required columns (extra columns are allowed and kept)
================== ========================= =======================================================
gemm               ``gemm.csv``              ``m,n,k,dtype,latency_ms``
attention_prefill  ``prefill_attention.csv`` ``batch,seq_len,num_heads,num_kv_heads,head_dim,causal,
                                             dtype,latency_ms``
attention_decode   ``decode_attention.csv``  ``batch,kv_len,num_heads,num_kv_heads,head_dim,dtype,
                                             latency_ms``
host_copy          ``copy.csv``              ``direction,bytes,pattern,chunks,latency_ms``
elementwise        ``elementwise.csv``       ``op,bytes,dtype,latency_ms`` (optional ``width``: elements
                                             per row, which groups an op's rows)
communication      ``allreduce.csv``         ``tp,bytes,dtype,latency_ms``
================== ========================= =======================================================

Attention tables may add a ``backend`` column (``fa3``, ``flashinfer``, ``triton``, ...); without it, the
profile's ``table_backends`` says which backend measured the whole table. Latencies are milliseconds per
kernel call. This module only parses and validates; interpolation lives in :mod:`kvsim.perf.interp`.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from kvsim.core.errors import ConfigError

#: family -> (default file name, required columns with their types, optional typed columns)
_INT, _FLOAT, _STR = "int", "float", "str"
TABLE_SCHEMAS: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "gemm": (
        "gemm.csv",
        {"m": _INT, "n": _INT, "k": _INT, "dtype": _STR, "latency_ms": _FLOAT},
        {"shape_of": _STR},
    ),
    "attention_prefill": (
        "prefill_attention.csv",
        {
            "batch": _INT,
            "seq_len": _INT,
            "num_heads": _INT,
            "num_kv_heads": _INT,
            "head_dim": _INT,
            "causal": _INT,
            "dtype": _STR,
            "latency_ms": _FLOAT,
        },
        {"backend": _STR, "past_len": _INT},
    ),
    "attention_decode": (
        "decode_attention.csv",
        {
            "batch": _INT,
            "kv_len": _INT,
            "num_heads": _INT,
            "num_kv_heads": _INT,
            "head_dim": _INT,
            "dtype": _STR,
            "latency_ms": _FLOAT,
        },
        {"backend": _STR},
    ),
    "host_copy": (
        "copy.csv",
        {"direction": _STR, "bytes": _INT, "pattern": _STR, "chunks": _INT, "latency_ms": _FLOAT},
        {},
    ),
    "elementwise": (
        "elementwise.csv",
        {"op": _STR, "bytes": _INT, "dtype": _STR, "latency_ms": _FLOAT},
        {"tokens": _INT, "width": _INT},
    ),
    "communication": ("allreduce.csv", {"tp": _INT, "bytes": _INT, "dtype": _STR, "latency_ms": _FLOAT}, {}),
}

#: Columns that must be strictly positive (a zero-sized GEMM or a zero latency is a broken row).
_POSITIVE = {"m", "n", "k", "batch", "seq_len", "kv_len", "num_heads", "num_kv_heads", "head_dim", "bytes"}
_POSITIVE |= {"chunks", "tp", "latency_ms", "tokens", "width"}


@dataclass(frozen=True, slots=True)
class Table:
    """One parsed calibration table: typed rows keyed by column name, and where it came from."""

    family: str
    path: str  # shown in error messages and reports
    columns: tuple[str, ...]
    rows: tuple[dict[str, int | float | str], ...]

    def column(self, name: str) -> list[int | float | str]:
        """All values of one column, in row order."""
        return [row[name] for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)


def default_table_file(family: str) -> str:
    """The file name a profile's table for ``family`` has when the profile does not name one."""
    return TABLE_SCHEMAS[family][0]


def _convert(value: str, kind: str, where: str) -> int | float | str:
    text = value.strip()
    if kind == _STR:
        if not text:
            raise ConfigError(f"{where}: empty value")
        return text
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {text!r} is not a finite number")
    if kind == _INT:
        if number != int(number):
            raise ConfigError(f"{where}: {text!r} is not a whole number")
        return int(number)
    return number


def parse_table(text: str, family: str, path: str) -> Table:
    """Parse the CSV ``text`` of a ``family`` table; errors name ``path`` (and the line) in one line."""
    if family not in TABLE_SCHEMAS:
        raise ConfigError(f"{path}: no table format for op family {family!r}")
    _, required, optional = TABLE_SCHEMAS[family]
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ConfigError(f"table {path}: empty file; expected a header {','.join(required)}") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise ConfigError(f"table {path}: missing column(s) {', '.join(missing)}; header: {','.join(header)}")
    kinds = {**optional, **required}
    rows: list[dict[str, int | float | str]] = []
    for line_no, record in enumerate(reader, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise ConfigError(f"table {path} line {line_no}: {len(record)} fields, header has {len(header)}")
        row: dict[str, int | float | str] = {}
        for name, cell in zip(header, record, strict=True):
            kind = kinds.get(name)
            if kind is None:
                row[name] = cell.strip()  # an extra column: kept as text, never interpreted
                continue
            place = f"table {path} line {line_no} column {name}"
            value = _convert(cell, kind, place)
            if name in _POSITIVE and float(value) <= 0:  # type: ignore[arg-type]
                raise ConfigError(f"{place}: must be > 0, not {cell.strip()}")
            row[name] = value
        rows.append(row)
    if not rows:
        raise ConfigError(f"table {path}: no data rows")
    return Table(family=family, path=path, columns=tuple(header), rows=tuple(rows))


__all__ = ["TABLE_SCHEMAS", "Table", "default_table_file", "parse_table"]
