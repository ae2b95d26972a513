"""The data-storage backend interface and KVCM's URI grammar.

A backend allocates room for blocks (``create``) and releases it (``delete``); the cache manager never
moves KV data itself, it only hands URIs to clients. One backend object serves one registered storage
(``StorageConfig.global_unique_name``), and the host part of every URI it produces is that name, so a
client (or the deletion path) routes a URI to its storage by host alone.

URI grammar (as the reference's ``StandardUri``): ``protocol://host[/path][?k=v&k2=v2]`` with the
parameters written in lexicographic key order and no percent-encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

from kvsim.cache.types import StorageConfig, StorageType
from kvsim.core.errors import KvsimError


class BackendError(KvsimError):
    """A backend could not open, create or delete."""


class StorageFullError(BackendError):
    """A ``create`` needs more space than the storage has left; nothing was allocated."""


def format_uri(protocol: str, host: str, path: str = "", params: Mapping[str, object] | None = None) -> str:
    """Build ``protocol://host<path>?k=v...`` with the parameters sorted by key."""
    uri = f"{protocol}://{host}{path}"
    if params:
        uri += "?" + "&".join(f"{k}={params[k]}" for k in sorted(params))
    return uri


def parse_uri(uri: str) -> tuple[str, str, str, dict[str, str]]:
    """Split a URI into ``(protocol, host, path, params)``; the host ends at the first ``/`` or ``?``.

    Raises:
        ValueError: no ``://`` or an empty protocol.
    """
    protocol, sep, rest = uri.partition("://")
    if not sep or not protocol:
        raise ValueError(f"uri: not a URI: {uri!r}")
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
    slash = rest.find("/")
    host, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    params: dict[str, str] = {}
    for part in query.split("&") if query else ():
        key, _, value = part.partition("=")
        params[key] = value
    return protocol, host, path, params


class StorageBackend(ABC):
    """One opened data storage.

    Args:
        config: the storage's registered configuration; its name is the host of every URI.
    """

    def __init__(self, config: StorageConfig) -> None:
        self._config = config
        self._enabled = config.is_available
        self._open = True

    @property
    def config(self) -> StorageConfig:
        """The configuration the backend was opened with."""
        return self._config

    @property
    def name(self) -> str:
        """The storage's ``global_unique_name``."""
        return self._config.global_unique_name

    @property
    def type(self) -> StorageType:
        """The storage type."""
        return self._config.type

    def available(self) -> bool:
        """True when open and enabled (used for write selection and read weights)."""
        return self._open and self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable the storage (admin Enable/DisableStorage)."""
        self._enabled = enabled

    def usage_ratio(self) -> float:
        """Fraction of the storage in use (0.0 when unknown)."""
        return 0.0

    def close(self) -> None:
        """Stop serving; the backend is unavailable afterwards."""
        self._open = False

    @abstractmethod
    def create(self, keys: Sequence[str], size_per_key: int) -> list[str]:
        """Allocate one block of ``size_per_key`` bytes per storage key and return their URIs (same order).

        All or nothing: on failure nothing stays allocated.

        Raises:
            StorageFullError: not enough space.
            BackendError: any other failure.
        """

    @abstractmethod
    def delete(self, uris: Sequence[str]) -> None:
        """Release the blocks behind ``uris`` (unknown URIs are ignored)."""

    @abstractmethod
    def exist(self, uris: Sequence[str]) -> list[bool]:
        """Whether each URI is currently allocated."""


BackendFactory = Callable[[StorageConfig], StorageBackend]
