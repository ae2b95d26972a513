"""Hardware descriptions: GPU profiles (datasheet numbers, roofline factors, calibration sources)."""

from kvsim.hardware.profile import (
    OP_FAMILIES,
    SOURCE_CHOICES,
    GpuProfile,
    RooflineFactors,
    all_profiles,
    load_profile,
    parse_profile,
    profile_names,
)

__all__ = [
    "OP_FAMILIES",
    "SOURCE_CHOICES",
    "GpuProfile",
    "RooflineFactors",
    "all_profiles",
    "load_profile",
    "parse_profile",
    "profile_names",
]
