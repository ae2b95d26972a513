"""GPU profiles: bundled set, units, aliases and validation."""

from __future__ import annotations

import pytest

from kvsim.core.errors import ConfigError, UserInputError
from kvsim.hardware import OP_FAMILIES, load_profile, parse_profile, profile_names


def test_bundled_profiles() -> None:
    assert profile_names() == ["A100", "H100", "H20", "H20-3e", "H200", "L40S"]


def test_h20_numbers() -> None:
    h20 = load_profile("h20_sxm")
    assert h20.name == "H20"
    assert h20.memory_bytes == 96 * 1024**3
    assert h20.memory_bandwidth == 4.0e12
    assert h20.compute_flops == {"bf16": 148e12, "fp16": 148e12, "fp8": 296e12}
    assert h20.sms == 78
    assert h20.l2_cache_bytes == 60e6
    assert h20.nvlink_bandwidth == 450e9
    assert h20.pcie_bandwidth == 64e9
    assert set(h20.sources) == set(OP_FAMILIES)
    # Fitted on the H20-3e tables by scripts/fit_h20.py (was False while the profile was datasheet-only).
    assert h20.calibrated is True
    assert set(h20.sources.values()) == {"fitted"}


def test_h20_3e_differs_in_memory_only() -> None:
    h20, h20e = load_profile("H20"), load_profile("H20-3e")
    assert h20e.memory_bandwidth == 4.8e12
    assert h20e.compute_flops == h20.compute_flops


def test_l40s_has_no_nvlink() -> None:
    l40s = load_profile("L40S")
    assert l40s.nvlink_bandwidth is None
    assert l40s.tp_link_bandwidth == 32e9


def test_a100_has_no_fp8() -> None:
    with pytest.raises(UserInputError, match="no fp8 tensor cores"):
        load_profile("A100").peak_flops("fp8")


def test_unknown_gpu_lists_choices() -> None:
    with pytest.raises(UserInputError, match="unknown GPU 'B300'; choose one of: A100, H100"):
        load_profile("B300")


def _minimal(**overrides: object) -> dict:
    data = {
        "name": "X",
        "memory": "1 GiB",
        "memory_bandwidth": "1 TB/s",
        "compute": {"bf16": "1 TFLOPS"},
        "sms": 1,
        "l2_cache": "1 MB",
        "interconnect": {"pcie": "1 GB/s"},
        "roofline": {
            "compute_efficiency": 0.5,
            "memory_efficiency": 0.5,
            "kernel_latency": "1 us",
            "kernel_gap": "1 us",
            "cuda_graph_launch": "1 us",
            "collective_latency": "1 us",
        },
        "sources": dict.fromkeys(OP_FAMILIES, "roofline"),
    }
    data.update(overrides)
    return data


def test_profile_validation() -> None:
    assert parse_profile(_minimal(), "x").memory_bytes == 1024**3
    with pytest.raises(ConfigError, match=r"x: compute.bf16: cannot read quantity"):
        parse_profile(_minimal(compute={"bf16": "lots"}), "x")
    with pytest.raises(ConfigError, match=r"sources.gemm='magic'"):
        parse_profile(_minimal(sources={**dict.fromkeys(OP_FAMILIES, "roofline"), "gemm": "magic"}), "x")
    with pytest.raises(ConfigError, match="missing 'memory'"):
        parse_profile({k: v for k, v in _minimal().items() if k != "memory"}, "x")
