"""Unit helpers: parsing quantities such as ``"96 GiB"`` or ``"4.0 TB/s"`` into SI base numbers.

Hardware profiles carry a unit on every number so that a reader never has to guess; this module turns
them into plain floats (bytes, bytes per second, FLOP per second, seconds).
"""

from __future__ import annotations

import re

from kvsim.core.errors import ConfigError

GiB = 1024**3
MiB = 1024**2
KiB = 1024

_BYTE_UNITS = {
    "B": 1.0,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KiB": float(KiB),
    "MiB": float(MiB),
    "GiB": float(GiB),
    "TiB": float(1024**4),
}
_FLOPS_UNITS = {"FLOPS": 1.0, "GFLOPS": 1e9, "TFLOPS": 1e12, "PFLOPS": 1e15}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_FREQ_UNITS = {"Hz": 1.0, "MHz": 1e6, "GHz": 1e9}

_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z/]+)\s*$")


def _split(text: str | float | int, what: str) -> tuple[float, str]:
    if isinstance(text, int | float):
        raise ConfigError(f"{what}: {text!r} has no unit")
    match = _QUANTITY.match(str(text))
    if not match:
        raise ConfigError(f"{what}: cannot read quantity {text!r}")
    return float(match.group(1)), match.group(2)


def _convert(text: str | float | int, table: dict[str, float], what: str) -> float:
    value, unit = _split(text, what)
    if unit not in table:
        raise ConfigError(f"{what}: unit {unit!r} is not one of {', '.join(table)}")
    return value * table[unit]


def parse_bytes(text: str | float | int, what: str = "size") -> float:
    """Parse ``"96 GiB"`` / ``"60 MB"`` into bytes."""
    return _convert(text, _BYTE_UNITS, what)


def parse_bandwidth(text: str | float | int, what: str = "bandwidth") -> float:
    """Parse ``"4.0 TB/s"`` / ``"64 GB/s"`` into bytes per second."""
    value, unit = _split(text, what)
    if not unit.endswith("/s") or unit[:-2] not in _BYTE_UNITS:
        raise ConfigError(f"{what}: unit {unit!r} is not a bandwidth such as GB/s or TB/s")
    return value * _BYTE_UNITS[unit[:-2]]


def parse_flops(text: str | float | int, what: str = "compute") -> float:
    """Parse ``"148 TFLOPS"`` into FLOP per second."""
    return _convert(text, _FLOPS_UNITS, what)


def parse_time(text: str | float | int, what: str = "time") -> float:
    """Parse ``"5 us"`` / ``"3 ms"`` into seconds."""
    return _convert(text, _TIME_UNITS, what)


def parse_frequency(text: str | float | int, what: str = "frequency") -> float:
    """Parse ``"1980 MHz"`` into hertz."""
    return _convert(text, _FREQ_UNITS, what)
