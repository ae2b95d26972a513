"""Data-storage backends: the interface and the ``simulated`` (capacity-only) implementation."""

from __future__ import annotations

from kvsim.cache.backends.base import (
    BackendError,
    BackendFactory,
    StorageBackend,
    StorageFullError,
    format_uri,
    parse_uri,
)
from kvsim.cache.backends.simulated import SimulatedBackend, simulated_backend_factory

__all__ = [
    "BackendError",
    "BackendFactory",
    "SimulatedBackend",
    "StorageBackend",
    "StorageFullError",
    "format_uri",
    "parse_uri",
    "simulated_backend_factory",
]
