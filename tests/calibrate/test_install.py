"""Installing a calibration as a user profile, and the user profile search path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvsim.calibrate.install import build_profile, install_profile, packaged_match
from kvsim.calibrate.tables import write_meta, write_table
from kvsim.core.env import profile_search_dirs, user_config_dir
from kvsim.core.errors import UserInputError
from kvsim.hardware.user_profiles import (
    find_user_profile,
    install_dir,
    load_user_profiles,
    user_profile_dirs,
    user_profile_names,
)


def _calibration(folder: Path, gpu: str = "NVIDIA H200", complete: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_table(
        folder,
        "gemm",
        [
            {"m": m, "n": 4096, "k": 4096, "dtype": "bf16", "latency_ms": 2 * m * 4096 * 4096 / 600e12 * 1e3,
             "shape_of": "t"}
            for m in (1, 2048, 4096)
        ],
    )  # fmt: skip
    write_table(
        folder,
        "launch",
        [
            {"what": "kernel_tiny_gpu", "latency_ms": 0.002},
            {"what": "eager_tiny_per_kernel", "latency_ms": 0.006},
            {"what": "graph_replay_1", "latency_ms": 0.012},
        ],
    )
    write_table(
        folder,
        "copy",
        [{"direction": "h2d", "bytes": 1 << 26, "pattern": "contiguous", "chunks": 1, "latency_ms": 1.2}],
    )
    write_meta(
        folder,
        {
            "complete": complete,
            "gpu": gpu,
            "sms": 132,
            "memory_gib": 139.8,
            "l2_mb": 60.0,
            "measured": "2026-11-28",
            "quick": False,
            "peak_tflops_measured": {"bf16": 700.0},
            "bandwidth_summary_GBps": {"d2d_read_plus_write": 4000.0, "h2d": 55.0, "d2h": 54.0},
            "backends": {"prefill_attention": "torch_sdpa_flash"},
            "tasks": {
                "gemm_core": {"status": "complete"},
                "e2e": {"status": "skipped" if not complete else "complete"},
            },
            "tables": {
                "gemm": {"file": "gemm.csv", "rows": 3, "complete": True},
                "launch": {"file": "launch.csv", "rows": 3, "complete": True},
                "copy": {"file": "copy.csv", "rows": 1, "complete": False},
            },
        },
    )
    return folder


def test_known_gpu_keeps_datasheet_peaks_and_measures_efficiencies(tmp_path: Path) -> None:
    from kvsim.calibrate.tables import read_meta, read_tables

    folder = _calibration(tmp_path / "cal")
    profile = build_profile("my-h200", read_meta(folder), read_tables(folder))
    assert packaged_match("nvidia h200").name == "H200"  # type: ignore[union-attr]
    assert profile["compute"] == {"bf16": "989 TFLOPS", "fp16": "989 TFLOPS", "fp8": "1979 TFLOPS"}
    assert profile["memory"] == "139.8 GiB"
    assert profile["memory_bandwidth"] == "4.8 TB/s"
    assert profile["interconnect"] == {"nvlink": "450 GB/s", "pcie": "64 GB/s"}
    roof = profile["roofline"]
    assert roof["compute_efficiency"] == round(600 / 989, 3)  # the M >= 2048 rows run at 600 TFLOPS
    assert roof["memory_efficiency"] == round(4000 / 4800, 3)
    assert roof["pcie_efficiency"] == round(55 / 64, 3)
    assert (roof["kernel_latency"], roof["kernel_gap"], roof["cuda_graph_launch"]) == (
        "2 us",
        "4 us",
        "12 us",
    )
    assert profile["sources"]["gemm"] == "table"
    assert profile["sources"]["host_copy"] == "roofline"  # its table is marked incomplete
    assert profile["tables"] == {"gemm": "gemm.csv", "host_copy": "copy.csv"}
    assert profile["calibration"]["other_tables"] == ["launch.csv"]
    assert profile["calibration"]["datasheet"] == "packaged profile H200"


def test_unknown_gpu_uses_measured_maxima(tmp_path: Path) -> None:
    from kvsim.calibrate.tables import read_meta, read_tables

    folder = _calibration(tmp_path / "cal", gpu="NVIDIA B999")
    profile = build_profile("b999", read_meta(folder), read_tables(folder))
    assert profile["compute"] == {"bf16": "700 TFLOPS", "fp16": "700 TFLOPS"}
    assert profile["memory_bandwidth"] == "4 TB/s"
    assert profile["interconnect"] == {"pcie": "55 GB/s"}
    assert profile["calibration"]["datasheet"] == "measured maxima"


def test_install_writes_a_loadable_user_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("KVSIM_PROFILE_PATH", os.pathsep.join([str(first), str(second)]))
    assert user_profile_dirs() == [first, second] and install_dir() == first
    target = install_profile(_calibration(tmp_path / "cal"), "my-h200")
    assert target == first / "my-h200"
    assert sorted(p.name for p in target.iterdir()) == [
        "copy.csv",
        "gemm.csv",
        "launch.csv",
        "meta.json",
        "profile.yaml",
    ]
    profile = find_user_profile("MY-H200")
    assert profile is not None and profile.name == "my-h200"
    assert profile.calibrated and profile.calibrated_by == "kvsim calibrate on NVIDIA H200, 2026-11-28"
    assert profile.sources["gemm"] == "table" and "gemm" in profile.tables
    assert user_profile_names() == ["my-h200"] and set(load_user_profiles()) == {"my-h200"}
    assert find_user_profile("nothing") is None
    with pytest.raises(UserInputError, match="already exists"):
        install_profile(tmp_path / "cal", "my-h200")
    install_profile(tmp_path / "cal", "my-h200", force=True)


def test_install_refuses_partial_results_unless_asked(tmp_path: Path) -> None:
    folder = _calibration(tmp_path / "cal", complete=False)
    with pytest.raises(UserInputError, match=r"incomplete calibration \(not finished: e2e\)"):
        install_profile(folder, "x", dest_root=tmp_path / "p")
    target = install_profile(folder, "x", dest_root=tmp_path / "p", allow_partial=True)
    text = (target / "profile.yaml").read_text()
    assert "(partial)" in text and "complete: false" in text


def test_install_refuses_bad_names(tmp_path: Path) -> None:
    folder = _calibration(tmp_path / "cal")
    with pytest.raises(UserInputError, match="packaged profile's name or alias"):
        install_profile(folder, "h200", dest_root=tmp_path)
    with pytest.raises(UserInputError, match="use letters, digits"):
        install_profile(folder, "../evil", dest_root=tmp_path)
    with pytest.raises(UserInputError, match=r"no meta\.json"):
        install_profile(tmp_path / "empty", "ok", dest_root=tmp_path)


def test_default_profile_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KVSIM_PROFILE_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_config_dir() == tmp_path / "kvsim"
    assert profile_search_dirs() == [tmp_path / "kvsim" / "profiles"]
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert profile_search_dirs() == [tmp_path / "home" / ".config" / "kvsim" / "profiles"]
    monkeypatch.setenv("KVSIM_PROFILE_PATH", "  ")  # blank means unset
    assert profile_search_dirs() == [tmp_path / "home" / ".config" / "kvsim" / "profiles"]
