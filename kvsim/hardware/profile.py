"""GPU profiles: datasheet numbers with units, roofline factors, and which source serves each op family.

Each profile lives in ``kvsim/hardware/profiles/<NAME>/profile.yaml`` (package data); later calibration adds
measured tables beside it. Every number in the YAML carries its unit (``96 GiB``, ``4.0 TB/s``,
``148 TFLOPS``, ``3 us``) and is converted to SI base units here (bytes, bytes/s, FLOP/s, seconds).

A profile declares, per op family, whether the predictor serves it from a measured ``table``, from a
roofline with ``fitted`` efficiency parameters, or from the plain ``roofline``; it also says whether (and by
what) it was calibrated, so that users can tell a datasheet guess from a measured profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from kvsim.core.errors import ConfigError, UserInputError
from kvsim.core.units import parse_bandwidth, parse_bytes, parse_flops, parse_time

OP_FAMILIES = ("gemm", "attention_prefill", "attention_decode", "elementwise", "communication", "host_copy")
SOURCE_CHOICES = ("table", "fitted", "roofline")


@dataclass(frozen=True, slots=True)
class RooflineFactors:
    """Empirical factors that turn datasheet peaks into achievable times."""

    compute_efficiency: float
    memory_efficiency: float
    kernel_latency_s: float
    kernel_gap_s: float
    cuda_graph_launch_s: float
    collective_latency_s: float
    pcie_efficiency: float


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """One GPU model as the simulator sees it (SI units throughout)."""

    name: str
    aliases: tuple[str, ...]
    memory_bytes: float
    memory_bandwidth: float  # bytes/s
    compute_flops: dict[str, float]  # dtype -> dense tensor FLOP/s
    sms: int
    l2_cache_bytes: float
    nvlink_bandwidth: float | None  # bytes/s per direction; None when the GPU has no NVLink
    pcie_bandwidth: float  # bytes/s per direction
    roofline: RooflineFactors
    sources: dict[str, str]
    calibrated: bool
    calibrated_by: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_gib(self) -> float:
        """Device memory in GiB."""
        return self.memory_bytes / 1024**3

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor-core FLOP/s for ``dtype`` (``bf16``/``fp16``/``fp8``); error when the GPU lacks it."""
        key = {"bfloat16": "bf16", "float16": "fp16", "fp8_e4m3": "fp8"}.get(dtype, dtype)
        if key not in self.compute_flops:
            raise UserInputError(f"GPU {self.name} has no {key} tensor cores")
        return self.compute_flops[key]

    @property
    def tp_link_bandwidth(self) -> float:
        """Per-direction bandwidth of the link tensor parallelism uses (NVLink, else PCIe)."""
        return self.nvlink_bandwidth if self.nvlink_bandwidth is not None else self.pcie_bandwidth


def _profiles_root() -> resources.abc.Traversable:
    return resources.files("kvsim.hardware") / "profiles"


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing {key!r}")
    return data[key]


def parse_profile(data: dict[str, Any], where: str) -> GpuProfile:
    """Build a :class:`GpuProfile` from a parsed ``profile.yaml`` mapping; ``where`` names it in errors."""
    name = str(_require(data, "name", where))
    compute = {
        k: parse_flops(v, f"{where}: compute.{k}") for k, v in _require(data, "compute", where).items()
    }
    link = data.get("interconnect") or {}
    roof = _require(data, "roofline", where)
    roofline = RooflineFactors(
        compute_efficiency=float(_require(roof, "compute_efficiency", where)),
        memory_efficiency=float(_require(roof, "memory_efficiency", where)),
        kernel_latency_s=parse_time(_require(roof, "kernel_latency", where), f"{where}: kernel_latency"),
        kernel_gap_s=parse_time(_require(roof, "kernel_gap", where), f"{where}: kernel_gap"),
        cuda_graph_launch_s=parse_time(
            _require(roof, "cuda_graph_launch", where), f"{where}: cuda_graph_launch"
        ),
        collective_latency_s=parse_time(
            _require(roof, "collective_latency", where), f"{where}: collective_latency"
        ),
        pcie_efficiency=float(roof.get("pcie_efficiency", 0.85)),
    )
    for factor in ("compute_efficiency", "memory_efficiency", "pcie_efficiency"):
        value = getattr(roofline, factor)
        if not 0 < value <= 1:
            raise ConfigError(f"{where}: roofline.{factor}={value} must lie in (0, 1]")
    sources = dict(_require(data, "sources", where))
    for family in OP_FAMILIES:
        source = sources.get(family)
        if source not in SOURCE_CHOICES:
            raise ConfigError(
                f"{where}: sources.{family}={source!r} must be one of {', '.join(SOURCE_CHOICES)}"
            )
    unknown = sorted(set(sources) - set(OP_FAMILIES))
    if unknown:
        raise ConfigError(f"{where}: unknown op families {unknown}; valid: {', '.join(OP_FAMILIES)}")
    calibration = data.get("calibration") or {}
    known = {
        "name",
        "aliases",
        "memory",
        "memory_bandwidth",
        "compute",
        "sms",
        "l2_cache",
        "interconnect",
        "roofline",
        "sources",
        "calibration",
    }
    return GpuProfile(
        name=name,
        aliases=tuple(str(a) for a in data.get("aliases", [])),
        memory_bytes=parse_bytes(_require(data, "memory", where), f"{where}: memory"),
        memory_bandwidth=parse_bandwidth(
            _require(data, "memory_bandwidth", where), f"{where}: memory_bandwidth"
        ),
        compute_flops=compute,
        sms=int(_require(data, "sms", where)),
        l2_cache_bytes=parse_bytes(_require(data, "l2_cache", where), f"{where}: l2_cache"),
        nvlink_bandwidth=parse_bandwidth(link["nvlink"], f"{where}: nvlink") if "nvlink" in link else None,
        pcie_bandwidth=parse_bandwidth(_require(link, "pcie", f"{where}: interconnect"), f"{where}: pcie"),
        roofline=roofline,
        sources=sources,
        calibrated=bool(calibration.get("calibrated", False)),
        calibrated_by=calibration.get("by"),
        extra={k: v for k, v in data.items() if k not in known},
    )


@cache
def _bundled() -> dict[str, GpuProfile]:
    profiles: dict[str, GpuProfile] = {}
    for folder in sorted(_profiles_root().iterdir(), key=lambda e: e.name):
        entry = folder / "profile.yaml"
        if not entry.is_file():
            continue
        where = f"profile {folder.name}/profile.yaml"
        try:
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: invalid YAML ({exc})") from None
        profile = parse_profile(data, where)
        profiles[profile.name] = profile
    return profiles


def profile_names() -> list[str]:
    """Names of the bundled GPU profiles, sorted."""
    return sorted(_bundled())


def all_profiles() -> list[GpuProfile]:
    """Every bundled profile, sorted by name."""
    return [_bundled()[name] for name in profile_names()]


def load_profile(name: str) -> GpuProfile:
    """Return the profile called ``name`` or one of its aliases (case-insensitive)."""
    wanted = name.strip().lower()
    for profile in _bundled().values():
        if wanted == profile.name.lower() or wanted in (a.lower() for a in profile.aliases):
            return profile
    raise UserInputError(f"unknown GPU {name!r}; choose one of: {', '.join(profile_names())}")
