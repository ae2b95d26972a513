"""Data-storage backends: the interface, the real ones (``file``, ``hf3fs``, ``mooncake``) and ``simulated``.

A *backend factory* turns a registered :class:`~kvsim.cache.types.StorageConfig` into an open backend;
the manager calls it whenever a storage is added, updated or reopened. Two are provided:

* :func:`simulated_backend_factory` (the manager's default): capacity bookkeeping only, for the simulator.
* :func:`real_backend_factory`: picks the real backend by the storage's type name (``file`` -> files
  under ``root_path``, ``hf3fs`` -> the 3FS mount, ``mooncake`` -> the Mooncake client). Types without
  a real backend (``pace``, ``vcns_hf3fs``: stubs in the reference too) are refused with a clear error.

:func:`make_backend_factory` builds either by name (``"simulated"`` or ``"real"``), as a service
configuration would. :func:`register_backend` adds a backend class for a type name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kvsim.cache.backends.base import (
    BackendError,
    BackendFactory,
    LiveBlocks,
    StorageBackend,
    StorageFullError,
    StorageUsage,
    format_uri,
    parse_uri,
)
from kvsim.cache.backends.file import FileBackend
from kvsim.cache.backends.hf3fs import Hf3fsBackend
from kvsim.cache.backends.mooncake import MooncakeBackend
from kvsim.cache.backends.simulated import SimulatedBackend, simulated_backend_factory
from kvsim.cache.types import StorageConfig

#: type name -> class of the real backend (each takes ``(config, capacity_bytes)``).
_REAL: dict[str, Callable[..., StorageBackend]] = {
    "file": FileBackend,
    "hf3fs": Hf3fsBackend,
    "mooncake": MooncakeBackend,
}


def register_backend(type_name: str, cls: Callable[..., StorageBackend]) -> None:
    """Make ``cls(config, capacity_bytes)`` the real backend of storages of ``type_name``."""
    _REAL[type_name] = cls


def real_backend_factory(
    capacities: Mapping[str, int] | None = None,
    default_capacity: int | None = None,
    **options: object,
) -> BackendFactory:
    """A factory opening the real backend of each storage's type.

    Args:
        capacities: bytes each storage (by name) may hold; others get ``default_capacity``.
        default_capacity: None for unlimited.
        options: passed to every backend class that accepts them (e.g. ``client_factory`` for Mooncake).

    The factory raises :class:`BackendError` for a type without a real backend.
    """
    table = dict(capacities or {})

    def factory(config: StorageConfig) -> StorageBackend:
        cls = _REAL.get(config.type_name)
        if cls is None:
            raise BackendError(
                f"storage {config.global_unique_name!r}: no real backend for storage type "
                f"{config.type_name!r} (known: {', '.join(sorted(_REAL))}); use the simulated backend"
            )
        capacity = table.get(config.global_unique_name, default_capacity)
        if cls is MooncakeBackend and "client_factory" in options:
            return MooncakeBackend(config, capacity, options["client_factory"])  # type: ignore[arg-type]
        return cls(config, capacity)

    return factory


_MODES: dict[str, Callable[..., BackendFactory]] = {
    "simulated": simulated_backend_factory,
    "real": real_backend_factory,
}


def make_backend_factory(mode: str, **options: object) -> BackendFactory:
    """The backend factory named ``mode`` (``"simulated"`` or ``"real"``) built with ``options``.

    Raises:
        ValueError: an unknown mode (the message lists the known ones).
    """
    try:
        build = _MODES[mode]
    except KeyError:
        raise ValueError(
            f"backend mode: unknown mode {mode!r} (known: {', '.join(sorted(_MODES))})"
        ) from None
    return build(**options)


__all__ = [
    "BackendError",
    "BackendFactory",
    "FileBackend",
    "Hf3fsBackend",
    "LiveBlocks",
    "MooncakeBackend",
    "SimulatedBackend",
    "StorageBackend",
    "StorageFullError",
    "StorageUsage",
    "format_uri",
    "make_backend_factory",
    "parse_uri",
    "real_backend_factory",
    "register_backend",
    "simulated_backend_factory",
]
