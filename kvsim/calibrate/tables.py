"""Calibration tables: their columns, an incremental CSV writer, a typed reader and ``meta.json``.

The tables are the format kvsim's predictor reads (the committed H200 tables use the same columns for
``gemm``, ``prefill_attention``, ``decode_attention`` and ``copy``). Every latency is milliseconds per
call, every size is bytes. This module needs neither torch nor triton, so that installing a profile and
reading tables work on machines without them.

The writer appends each row to its CSV as soon as it is measured and flushes: a run that is killed by a
timeout still leaves every finished measurement on disk, and ``meta.json`` (rewritten after every task)
says ``"complete": false`` until all planned tasks have finished.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvsim.core.errors import UserInputError

META_FILE = "meta.json"


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One table: its file name and ``(column, type)`` pairs in file order."""

    family: str
    columns: tuple[tuple[str, type], ...]

    @property
    def file_name(self) -> str:
        """The CSV file name (``<family>.csv``)."""
        return f"{self.family}.csv"

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in file order."""
        return tuple(name for name, _ in self.columns)


def _schema(family: str, spec: str) -> TableSchema:
    types = {"i": int, "f": float, "s": str}
    columns = []
    for item in spec.split(","):
        name, kind = item.split(":")
        columns.append((name, types[kind]))
    return TableSchema(family, tuple(columns))


#: Every table ``kvsim calibrate`` writes, in the order the docs list them.
SCHEMAS: dict[str, TableSchema] = {
    schema.family: schema
    for schema in (
        _schema("gemm", "m:i,n:i,k:i,dtype:s,latency_ms:f,shape_of:s"),
        _schema(
            "prefill_attention",
            "batch:i,seq_len:i,num_heads:i,num_kv_heads:i,head_dim:i,causal:i,dtype:s,latency_ms:f",
        ),
        _schema(
            "extend_attention",
            "batch:i,extend_len:i,prefix_len:i,num_heads:i,num_kv_heads:i,head_dim:i,dtype:s,latency_ms:f",
        ),
        _schema(
            "decode_attention",
            "batch:i,kv_len:i,num_heads:i,num_kv_heads:i,head_dim:i,dtype:s,latency_ms:f,"
            "backend:s,page_size:i",
        ),
        _schema("elementwise", "op:s,tokens:i,width:i,dtype:s,latency_ms:f,bytes:i"),
        _schema("copy", "direction:s,bytes:i,pattern:s,chunks:i,latency_ms:f"),
        _schema("launch", "what:s,latency_ms:f"),
        _schema("allreduce", "tp:i,bytes:i,dtype:s,latency_ms:f"),
        _schema("e2e", "model:s,phase:s,batch:i,extend_len:i,past_len:i,latency_ms:f"),
    )
}


def schema_for(family: str) -> TableSchema:
    """The schema of ``family``; a one-line error names the valid families."""
    try:
        return SCHEMAS[family]
    except KeyError:
        raise UserInputError(f"unknown table {family!r}; valid: {', '.join(SCHEMAS)}") from None


def _format(value: Any, kind: type) -> str:
    if kind is float:
        # Six decimals of a millisecond is one nanosecond: finer than any event timer resolves.
        # A positive time never rounds to zero: the profile loader refuses zero latencies.
        number = float(value)
        return f"{max(number, 1e-6) if number > 0 else number:.6f}"
    if kind is int:
        return str(int(value))
    text = str(value)
    if "," in text or "\n" in text:
        raise ValueError(f"table cell {text!r} may not contain commas or newlines")
    return text


class TableWriter:
    """Appends rows of one table to ``<dir>/<family>.csv``, flushing after every row.

    The file is created (with its header) on the first row, so a family that measured nothing leaves no
    empty table behind. ``rows`` keeps what was written, for summaries.
    """

    def __init__(self, directory: Path, family: str) -> None:
        self.schema = schema_for(family)
        self.path = Path(directory) / self.schema.file_name
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            # A table left by an earlier run in the same folder would mix two runs' numbers.
            self.path.unlink()

    def add(self, row: Mapping[str, Any]) -> None:
        """Append one row; every column of the schema must be present, no others."""
        names = self.schema.names
        missing = [n for n in names if n not in row]
        extra = [n for n in row if n not in names]
        if missing or extra:
            raise ValueError(f"{self.schema.family} row: missing {missing}, unexpected {extra}")
        cells = [_format(row[name], kind) for name, kind in self.schema.columns]
        new = not self.path.exists()
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            if new:
                handle.write(",".join(names) + "\n")
            handle.write(",".join(cells) + "\n")
            handle.flush()
        self.rows.append({name: kind(row[name]) for name, kind in self.schema.columns})


def write_table(directory: Path, family: str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a whole table at once (replacing an existing one); returns its path."""
    writer = TableWriter(directory, family)
    for row in rows:
        writer.add(row)
    return writer.path


def read_table(path: Path, family: str | None = None) -> list[dict[str, Any]]:
    """Read a calibration CSV into typed rows (ints, floats, strings per the schema).

    ``family`` defaults to the file's stem. Columns the schema does not know are kept as strings; a
    missing column is an error, except ``backend`` and ``page_size`` of ``decode_attention``, which
    tables written before those columns existed lack (read as ``torch_contiguous`` and 1).
    """
    path = Path(path)
    schema = schema_for(family or path.stem)
    kinds = dict(schema.columns)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        legacy = (
            {"backend": "torch_contiguous", "page_size": "1"} if schema.family == "decode_attention" else {}
        )
        missing = [n for n in schema.names if n not in header and n not in legacy]
        if missing:
            raise UserInputError(f"{path}: missing columns {', '.join(missing)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            try:
                for name in schema.names:
                    text = raw.get(name, legacy.get(name))
                    row[name] = kinds[name](text)
            except (TypeError, ValueError):
                raise UserInputError(f"{path}:{line}: cannot read row {raw}") from None
            for name in header:
                if name not in kinds:
                    row[name] = raw[name]
            rows.append(row)
    return rows


def read_tables(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Every known table present in ``directory``, by family."""
    directory = Path(directory)
    return {
        family: read_table(directory / schema.file_name, family)
        for family, schema in SCHEMAS.items()
        if (directory / schema.file_name).is_file()
    }


def write_meta(directory: Path, meta: Mapping[str, Any]) -> Path:
    """Write ``meta.json`` atomically (a reader never sees half a file, even if the run is killed)."""
    path = Path(directory) / META_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_meta(directory: Path) -> dict[str, Any]:
    """Read ``meta.json`` of a calibration folder; one-line errors for a missing or broken file."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise UserInputError(f"{directory}: no {META_FILE}; is this the --out folder of `kvsim calibrate`?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object")
    return data
