"""Storage tiers: the bandwidth, latency and capacity of the places an L3 KV-cache store keeps blocks.

A serving engine's third cache level (SGLang's HiCache storage backend, or the storages behind Tair
KVCM) lives on NFS, 3FS, a Mooncake store or plain host memory. What matters to a simulation is how
fast pages move between that tier and host memory and how much it holds:

- ``read_bandwidth`` / ``write_bandwidth`` (bytes/s): what one engine (one TP group) sees; its
  concurrent transfers share it (:mod:`kvsim.engines.sglang.storage_io`);
- ``read_latency_s`` / ``write_latency_s``: paid once per storage operation before any byte moves;
- ``capacity_bytes``: the tier's total size, or None when unlimited.

The packaged tiers are in ``kvsim/hardware/storage_tiers.yaml`` (numbers with units, a ``source`` that
says where each comes from). :func:`load_storage_tier` accepts a packaged name or a mapping with the same
keys (a user's own tier, e.g. from an experiment file), optionally ``base: <name>`` to override only some
numbers of a packaged tier. Loading is strict: unknown keys, missing keys and numbers without units are
refused with a one-line error naming the tier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from kvsim.core.errors import ConfigError
from kvsim.core.units import parse_bandwidth, parse_bytes, parse_time

TIERS_FILE = "storage_tiers.yaml"
#: Keys of one tier entry; ``base`` is accepted only in user mappings.
TIER_KEYS = (
    "description",
    "read_bandwidth",
    "write_bandwidth",
    "read_latency",
    "write_latency",
    "capacity",
    "source",
)
_REQUIRED = ("read_bandwidth", "write_bandwidth", "read_latency", "write_latency", "capacity")


@dataclass(frozen=True, slots=True)
class StorageTier:
    """One storage tier in SI units (bytes, bytes/s, seconds)."""

    name: str
    read_bandwidth: float
    write_bandwidth: float
    read_latency_s: float
    write_latency_s: float
    capacity_bytes: float | None
    description: str = ""
    source: str = ""

    def read_seconds(self, nbytes: float) -> float:
        """Time of one uncontended read of ``nbytes``: the latency, then the bytes at full bandwidth."""
        return self.read_latency_s + nbytes / self.read_bandwidth

    def write_seconds(self, nbytes: float) -> float:
        """Time of one uncontended write of ``nbytes``."""
        return self.write_latency_s + nbytes / self.write_bandwidth

    def to_dict(self) -> dict[str, Any]:
        """The tier as plain numbers (bytes, bytes/s, seconds), for resolved configs and reports."""
        return {
            "name": self.name,
            "read_bandwidth": self.read_bandwidth,
            "write_bandwidth": self.write_bandwidth,
            "read_latency_s": self.read_latency_s,
            "write_latency_s": self.write_latency_s,
            "capacity_bytes": self.capacity_bytes,
        }


@cache
def _packaged() -> dict[str, dict[str, Any]]:
    text = (resources.files("kvsim.hardware") / TIERS_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    tiers = data.get("tiers") if isinstance(data, dict) else None
    if not isinstance(tiers, dict):
        raise ConfigError(f"kvsim/hardware/{TIERS_FILE}: expected a 'tiers' mapping")
    return tiers


def storage_tier_names() -> tuple[str, ...]:
    """Names of the packaged tiers, in file order."""
    return tuple(_packaged())


def parse_storage_tier(name: str, data: Mapping[str, Any]) -> StorageTier:
    """Turn one tier entry (numbers with units) into a :class:`StorageTier`.

    Args:
        name: the tier's name (for messages and reports).
        data: the entry: every key of :data:`TIER_KEYS` but ``description`` and ``source`` is required;
            ``capacity`` may be ``unlimited``.

    Raises:
        ConfigError: unknown or missing keys, a number without a unit, a bandwidth that is not > 0, a
            negative latency or capacity.
    """
    where = f"storage tier {name!r}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TIER_KEYS)}")
    unknown = sorted(set(data) - set(TIER_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {', '.join(TIER_KEYS)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    read_bw = parse_bandwidth(data["read_bandwidth"], f"{where} read_bandwidth")
    write_bw = parse_bandwidth(data["write_bandwidth"], f"{where} write_bandwidth")
    read_lat = parse_time(data["read_latency"], f"{where} read_latency")
    write_lat = parse_time(data["write_latency"], f"{where} write_latency")
    if not (read_bw > 0 and write_bw > 0):
        raise ConfigError(f"{where}: bandwidths must be > 0")
    if read_lat < 0 or write_lat < 0:
        raise ConfigError(f"{where}: latencies must be >= 0")
    raw_capacity = data["capacity"]
    capacity: float | None
    if isinstance(raw_capacity, str) and raw_capacity.strip().lower() == "unlimited":
        capacity = None
    else:
        capacity = parse_bytes(raw_capacity, f"{where} capacity")
        if capacity < 0:
            raise ConfigError(f"{where}: capacity must be >= 0")
    return StorageTier(
        name=name,
        read_bandwidth=read_bw,
        write_bandwidth=write_bw,
        read_latency_s=read_lat,
        write_latency_s=write_lat,
        capacity_bytes=capacity,
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
    )


def load_storage_tier(spec: str | Mapping[str, Any]) -> StorageTier:
    """A packaged tier by name, or a user's tier given as a mapping.

    A mapping may name ``base: <packaged tier>`` and override some of its numbers (the result is named
    ``<base>*``), or give every required key itself (named by its ``name`` key, ``custom`` when absent).

    Raises:
        ConfigError: an unknown name (the message lists the packaged ones) or a malformed entry.
    """
    tiers = _packaged()
    if isinstance(spec, str):
        if spec not in tiers:
            raise ConfigError(f"unknown storage tier {spec!r}; packaged tiers: {', '.join(tiers)}")
        return parse_storage_tier(spec, tiers[spec])
    if not isinstance(spec, Mapping):
        raise ConfigError(f"storage tier: expected a name or a mapping, got {spec!r}")
    entry = dict(spec)
    base = entry.pop("base", None)
    name = str(entry.pop("name", "custom"))
    if base is not None:
        if base not in tiers:
            raise ConfigError(f"storage tier base {base!r} is unknown; packaged tiers: {', '.join(tiers)}")
        entry = {**tiers[base], **entry}
        name = f"{base}*" if name == "custom" else name
    return parse_storage_tier(name, entry)


def all_storage_tiers() -> dict[str, StorageTier]:
    """Every packaged tier, parsed."""
    return {name: load_storage_tier(name) for name in storage_tier_names()}


__all__ = [
    "TIERS_FILE",
    "TIER_KEYS",
    "StorageTier",
    "all_storage_tiers",
    "load_storage_tier",
    "parse_storage_tier",
    "storage_tier_names",
]
