"""Calibration tables and profile loading: strict formats, errors that name the file, --allow-roofline."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from kvsim.core.errors import ConfigError
from kvsim.hardware import OP_FAMILIES, load_profile
from kvsim.hardware.profile import load_profile_folder
from kvsim.hardware.tables import parse_table
from kvsim.perf.validation import merge_runs
from tests.conftest import REPO_ROOT, shared_path

H200 = REPO_ROOT / "kvsim" / "hardware" / "profiles" / "H200"
RUNS = REPO_ROOT / "calibration" / "results"
GEMM_CSV = "m,n,k,dtype,latency_ms\n1,64,64,bf16,0.01\n8,64,64,bf16,0.012\n"


def test_parse_gemm_table_keeps_extra_columns() -> None:
    table = parse_table("m,n,k,dtype,latency_ms,shape_of,note\n1,64,64,bf16,0.01,x:qkv,hi\n", "gemm", "g.csv")
    assert table.rows[0] == {
        "m": 1,
        "n": 64,
        "k": 64,
        "dtype": "bf16",
        "latency_ms": 0.01,
        "shape_of": "x:qkv",
        "note": "hi",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "table t.csv: empty file"),
        ("m,n,dtype,latency_ms\n1,2,bf16,1\n", r"table t.csv: missing column\(s\) k"),
        ("m,n,k,dtype,latency_ms\n1,2,x,bf16,1\n", "table t.csv line 2 column k: 'x' is not a number"),
        ("m,n,k,dtype,latency_ms\n1,2,3,bf16,0\n", "table t.csv line 2 column latency_ms: must be > 0"),
        ("m,n,k,dtype,latency_ms\n1.5,2,3,bf16,1\n", "line 2 column m: '1.5' is not a whole number"),
        ("m,n,k,dtype,latency_ms\n1,2,3\n", "table t.csv line 2: 3 fields, header has 5"),
        ("m,n,k,dtype,latency_ms\n", "table t.csv: no data rows"),
    ],
)
def test_malformed_tables_name_the_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_table(text, "gemm", "t.csv")


def test_bundled_h200_tables() -> None:
    h200 = load_profile("H200")
    families = {"gemm", "attention_prefill", "attention_decode", "elementwise", "host_copy"}
    assert set(h200.tables) == families
    assert {f for f, source in h200.sources.items() if source == "table"} == families
    assert h200.sources["communication"] == "fitted"  # one GPU: a stated prior
    assert len(h200.tables["gemm"]) == 3780
    assert {r["dtype"] for r in h200.tables["gemm"].rows} == {"bf16", "fp8"}
    assert h200.table_backends == {}  # every attention row names its backend
    assert h200.table_timing_floor_s == 0.0
    assert h200.validation_error("gemm", "table") < 0.05
    assert h200.validation_error("host_copy", "table") <= 0.05


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize(
    ("name", "family", "drop"),
    [
        ("gemm.csv", "gemm", False),
        ("prefill_attention.csv", "attention_prefill", True),
        ("decode_attention.csv", "attention_decode", True),
        ("elementwise.csv", "elementwise", False),
        ("copy.csv", "host_copy", False),
        ("extend_attention.csv", "extend_attention", True),
    ],
)
def test_packaged_h200_tables_are_the_calibration_runs(name: str, family: str, drop: bool) -> None:
    """Run 1's rows, host-bound ones replaced by run 2's or dropped: rebuilt exactly from both runs."""
    header, packaged = _read(H200 / name)
    _, run1 = _read(RUNS / "h200-2026-11-28-run1" / name)
    _, run2 = _read(RUNS / "h200-2026-11-28-run2" / name)
    if family == "attention_prefill":
        assert header[-1] == "backend"
        run1 = [{**r, "backend": "torch_sdpa_flash"} for r in run1]
        run2 = [{**r, "backend": "torch_sdpa_flash"} for r in run2]
    kept, fixes = merge_runs(family, run1, run2, drop_dominated=drop)
    assert packaged == kept
    assert len(packaged) + sum(f.action == "dropped" for f in fixes) == len(run1)


def test_packaged_h200_meta_records_the_derivation() -> None:
    meta = json.loads((H200 / "meta.json").read_text())
    assert meta["gpu"] == "NVIDIA H200" and meta["complete"] is True
    packaged = meta["packaged"]
    assert packaged["by"] == "scripts/fit_h200.py"
    assert packaged["prefill_attention_backend"] == "torch_sdpa_flash"
    assert packaged["tables"]["decode_attention"]["dropped"] > 0


def test_earlier_single_call_tables_are_the_shared_measurement() -> None:
    """Kept for the report's cross-checks (launch floor, cuDNN prefill): the shared files, unchanged."""
    measured = shared_path("data", "calibration", "h200-2026-11-28")
    archived = REPO_ROOT / "docs" / "validation" / "data" / "h200_single_call"
    for name in ("gemm.csv", "prefill_attention.csv", "decode_attention.csv", "copy.csv", "meta.json"):
        assert (archived / name).read_bytes() == (measured / name).read_bytes()


def _profile_dir(tmp_path: Path, **changes: object) -> Path:
    """A copy of the H200 profile folder with profile.yaml entries replaced."""
    folder = tmp_path / "GPU"
    shutil.copytree(H200, folder)
    data = yaml.safe_load((folder / "profile.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "profile.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_table_source_without_its_file_is_refused(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path)
    (folder / "gemm.csv").unlink()
    with pytest.raises(ConfigError, match=r"sources.gemm=table but its table .*GPU/gemm.csv does not exist"):
        load_profile_folder(folder)
    profile = load_profile_folder(folder, allow_roofline=True)
    assert profile.sources["gemm"] == "roofline"
    assert "gemm.csv" in profile.downgraded["gemm"]


def test_table_source_without_a_declared_table_is_refused(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path)
    (folder / "copy.csv").rename(folder / "copies-elsewhere.csv")
    data = yaml.safe_load((folder / "profile.yaml").read_text())
    del data["tables"]["host_copy"]
    (folder / "profile.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"sources.host_copy=table but its table .*copy.csv does not exist"):
        load_profile_folder(folder)


def test_malformed_declared_table_names_the_file(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path)
    (folder / "decode_attention.csv").write_text("batch,kv_len\n1,2\n")
    with pytest.raises(ConfigError, match=r"table .*GPU/decode_attention.csv: missing column\(s\) num_heads"):
        load_profile_folder(folder)
    profile = load_profile_folder(folder, allow_roofline=True)
    assert profile.sources["attention_decode"] == "roofline"
    assert "decode_attention.csv" in profile.downgraded["attention_decode"]


def test_fitted_source_without_parameters_is_refused(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path)
    (folder / "fitted.yaml").unlink()
    with pytest.raises(ConfigError, match=r"fitted parameters .*GPU/fitted.yaml do not exist"):
        load_profile_folder(folder)
    profile = load_profile_folder(folder, allow_roofline=True)
    assert profile.sources["communication"] == "roofline"
    assert profile.sources["gemm"] == "table"


def test_optional_extra_tables_are_tolerated(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path)
    (folder / "allreduce.csv").write_text("tp,bytes,dtype,latency_ms,extra\n2,1024,bf16,0.01,x\n")
    (folder / "notes.csv").write_text("anything,at,all\n")
    profile = load_profile_folder(folder)
    assert "communication" in profile.tables  # read under its default name, not served
    assert profile.sources["communication"] == "fitted"


def test_table_source_served_from_an_elementwise_table(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path, sources={**dict.fromkeys(OP_FAMILIES, "fitted"), "elementwise": "table"})
    # attn_norm of one decode token reads and writes 4 * 4096 * 2 bytes: a grid point of the rmsnorm rows;
    # rows of other ops never serve it
    (folder / "elementwise.csv").write_text(
        "op,bytes,dtype,latency_ms\nrmsnorm,32768,bf16,0.02\nrmsnorm,1000000,bf16,0.03\nx,32768,bf16,0.5\n"
    )
    from kvsim.perf import Deployment, StepTimePredictor

    profile = load_profile_folder(folder)
    result = StepTimePredictor(Deployment.create("Qwen3-8B", profile)).predict([(1, 10)])
    assert result.sources["attn_norm"] == "table"
    kernel = max(0.02e-3 - profile.table_timing_floor_s, profile.roofline.kernel_latency_s)
    assert result.ops["attn_norm"] == pytest.approx(36 * kernel * 1e3, rel=1e-12)


def test_load_profile_accepts_a_folder(tmp_path: Path) -> None:
    folder = _profile_dir(tmp_path, name="MyH200", aliases=[])
    assert load_profile(str(folder)).name == "MyH200"


def test_gemm_table_minimal_folder(tmp_path: Path) -> None:
    folder = tmp_path / "X"
    folder.mkdir()
    data = yaml.safe_load((H200 / "profile.yaml").read_text())
    data.update(name="X", aliases=[], sources=dict.fromkeys(OP_FAMILIES, "roofline") | {"gemm": "table"})
    for key in ("tables", "table_backends", "fitted"):
        data.pop(key, None)
    (folder / "profile.yaml").write_text(yaml.safe_dump(data))
    (folder / "gemm.csv").write_text(GEMM_CSV)
    profile = load_profile_folder(folder)
    assert profile.sources["gemm"] == "table" and len(profile.tables["gemm"]) == 2


def test_calibration_runs_parse_with_kvsim_table_formats() -> None:
    """The tables `kvsim calibrate` wrote (committed under calibration/results) load with these schemas."""
    runs = sorted((REPO_ROOT / "calibration" / "results").glob("*/gemm.csv"))
    if not runs:
        pytest.skip("no calibration/results runs in this checkout")
    files = {
        "gemm": "gemm.csv",
        "attention_prefill": "prefill_attention.csv",
        "attention_decode": "decode_attention.csv",
        "host_copy": "copy.csv",
        "elementwise": "elementwise.csv",
    }
    for family, name in files.items():
        path = runs[0].parent / name
        if path.is_file():
            assert len(parse_table(path.read_text(), family, str(path))) > 0


def test_backend_factors_come_from_fitted_yaml_and_profile_yaml_wins(tmp_path: Path) -> None:
    assert load_profile("H200").extra["attention_backend_factors"]["torch_sdpa_flash->fa3"] > 0
    folder = _profile_dir(tmp_path, attention_backend_factors={"torch_sdpa_flash->fa3": 0.7, "a->b": 2})
    factors = load_profile_folder(folder).extra["attention_backend_factors"]
    assert factors == {"torch_sdpa_flash->fa3": 0.7, "a->b": 2.0}
    bad = _profile_dir(tmp_path / "bad", attention_backend_factors={"fa3": 0.5})
    with pytest.raises(ConfigError, match="attention_backend_factors 'fa3'"):
        load_profile_folder(bad)
    bad = _profile_dir(tmp_path / "worse", attention_backend_factors={"a->b": "fast"})
    with pytest.raises(ConfigError, match="attention_backend_factors 'a->b': 'fast'"):
        load_profile_folder(bad)
