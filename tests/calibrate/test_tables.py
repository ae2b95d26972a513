"""The table writer and reader: exact round trips, incremental writes, schema errors, legacy tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsim.calibrate.tables import (
    SCHEMAS,
    TableWriter,
    read_meta,
    read_table,
    read_tables,
    write_meta,
    write_table,
)
from kvsim.core.errors import UserInputError
from tests.conftest import shared_path


def test_every_family_has_the_documented_columns() -> None:
    assert SCHEMAS["gemm"].names == ("m", "n", "k", "dtype", "latency_ms", "shape_of")
    assert SCHEMAS["prefill_attention"].names == (
        "batch", "seq_len", "num_heads", "num_kv_heads", "head_dim", "causal", "dtype", "latency_ms",
    )  # fmt: skip
    assert SCHEMAS["decode_attention"].names[-2:] == ("backend", "page_size")
    assert SCHEMAS["extend_attention"].names == (
        "batch", "extend_len", "prefix_len", "num_heads", "num_kv_heads", "head_dim", "dtype", "latency_ms",
    )  # fmt: skip
    assert SCHEMAS["copy"].names == ("direction", "bytes", "pattern", "chunks", "latency_ms")
    assert SCHEMAS["elementwise"].names == ("op", "tokens", "width", "dtype", "latency_ms", "bytes")
    assert SCHEMAS["launch"].names == ("what", "latency_ms")
    assert SCHEMAS["allreduce"].names == ("tp", "bytes", "dtype", "latency_ms")
    assert SCHEMAS["e2e"].names == ("model", "phase", "batch", "extend_len", "past_len", "latency_ms")


def test_round_trip_is_exact(tmp_path: Path) -> None:
    rows = [
        {"m": 1, "n": 6144, "k": 4096, "dtype": "bf16", "latency_ms": 0.0312, "shape_of": "Qwen3-8B:qkv"},
        {"m": 16384, "n": 4096, "k": 12288, "dtype": "fp8", "latency_ms": 1.234567, "shape_of": "x:down:tp2"},
    ]
    path = write_table(tmp_path, "gemm", rows)
    assert path == tmp_path / "gemm.csv"
    assert path.read_text() == (
        "m,n,k,dtype,latency_ms,shape_of\n"
        "1,6144,4096,bf16,0.031200,Qwen3-8B:qkv\n"
        "16384,4096,12288,fp8,1.234567,x:down:tp2\n"
    )
    assert read_table(path) == rows
    assert read_tables(tmp_path) == {"gemm": rows}


def test_writer_appends_and_flushes_each_row(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path, "launch")
    assert not writer.path.exists()  # no empty table for a family that measured nothing
    writer.add({"what": "launch_host", "latency_ms": 0.004})
    assert writer.path.read_text() == "what,latency_ms\nlaunch_host,0.004000\n"
    writer.add({"what": "graph_replay_1", "latency_ms": 1e-9})  # rounds up, never to zero
    assert writer.path.read_text().splitlines()[-1] == "graph_replay_1,0.000001"
    assert [r["what"] for r in writer.rows] == ["launch_host", "graph_replay_1"]


def test_a_new_writer_replaces_an_old_table(tmp_path: Path) -> None:
    write_table(tmp_path, "launch", [{"what": "old", "latency_ms": 1.0}])
    TableWriter(tmp_path, "launch").add({"what": "new", "latency_ms": 2.0})
    assert [r["what"] for r in read_table(tmp_path / "launch.csv")] == ["new"]


def test_rows_must_match_the_schema(tmp_path: Path) -> None:
    writer = TableWriter(tmp_path, "launch")
    with pytest.raises(ValueError, match=r"missing \['latency_ms'\], unexpected \['ms'\]"):
        writer.add({"what": "x", "ms": 1.0})
    with pytest.raises(ValueError, match="may not contain commas"):
        writer.add({"what": "a,b", "latency_ms": 1.0})
    with pytest.raises(UserInputError, match="unknown table 'nope'"):
        TableWriter(tmp_path, "nope")


def test_reader_names_bad_files(tmp_path: Path) -> None:
    (tmp_path / "copy.csv").write_text("direction,bytes\nh2d,1\n")
    with pytest.raises(UserInputError, match="missing columns pattern, chunks, latency_ms"):
        read_table(tmp_path / "copy.csv")
    (tmp_path / "launch.csv").write_text("what,latency_ms\nx,fast\n")
    with pytest.raises(UserInputError, match=r"launch.csv:2: cannot read row"):
        read_table(tmp_path / "launch.csv")


def test_reads_the_committed_h200_tables() -> None:
    folder = shared_path("data", "calibration", "h200-2026-11-28")
    tables = read_tables(folder)
    assert set(tables) == {"gemm", "prefill_attention", "decode_attention", "copy"}
    assert tables["gemm"][0] == {
        "m": 1, "n": 6144, "k": 4096, "dtype": "bf16", "latency_ms": 0.0312, "shape_of": "Qwen3-8B:qkv",
    }  # fmt: skip
    # Written before the backend and page_size columns existed: read with their defaults.
    assert tables["decode_attention"][0]["backend"] == "torch_contiguous"
    assert tables["decode_attention"][0]["page_size"] == 1
    assert len(tables["gemm"]) == 120


def test_meta_round_trip_and_errors(tmp_path: Path) -> None:
    write_meta(tmp_path, {"complete": False, "gpu": "X"})
    assert read_meta(tmp_path) == {"complete": False, "gpu": "X"}
    assert not (tmp_path / "meta.json.tmp").exists()
    with pytest.raises(UserInputError, match=r"no meta\.json"):
        read_meta(tmp_path / "missing")
    (tmp_path / "meta.json").write_text("[1]")
    with pytest.raises(UserInputError, match="expected a JSON object"):
        read_meta(tmp_path)
