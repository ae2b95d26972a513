"""Hardware descriptions: GPU profiles (datasheet numbers, roofline factors, calibration tables and fits)."""

from kvsim.hardware.profile import (
    ATTENTION_BACKENDS,
    OP_FAMILIES,
    SOURCE_CHOICES,
    GpuProfile,
    RooflineFactors,
    all_profiles,
    load_profile,
    load_profile_folder,
    parse_profile,
    profile_names,
)
from kvsim.hardware.tables import TABLE_SCHEMAS, Table, parse_table

__all__ = [
    "ATTENTION_BACKENDS",
    "OP_FAMILIES",
    "SOURCE_CHOICES",
    "TABLE_SCHEMAS",
    "GpuProfile",
    "RooflineFactors",
    "Table",
    "all_profiles",
    "load_profile",
    "load_profile_folder",
    "parse_profile",
    "parse_table",
    "profile_names",
]
