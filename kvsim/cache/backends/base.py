"""The data-storage backend interface and KVCM's URI grammar.

A backend allocates room for blocks (``create``) and releases it (``delete``); the cache manager never
moves KV data itself, it only hands URIs to clients. One backend object serves one registered storage
(``StorageConfig.global_unique_name``), and the host part of every URI it produces is that name, so a
client (or the deletion path) routes a URI to its storage by host alone.

URI grammar (as the reference's ``StandardUri``): ``protocol://host[/path][?k=v&k2=v2]`` with the
parameters written in lexicographic key order and no percent-encoding.

Every backend offers the same six things: ``create``, ``delete``, ``exist``, ``available``, ``usage`` and
``probe`` (a health check the manager runs from ``poll``, see :mod:`kvsim.cache.health`).
Real backends (``file``, ``hf3fs``, ``mooncake``) also keep a live-block count per container (a packed
file or a Mooncake object): the container is removed only when its last live block is deleted. The
counts are not persisted separately; the manager rebuilds them from the locations the meta store
holds (:meth:`StorageBackend.restore`) whenever it opens a backend, so they can never drift from the
index.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kvsim.cache.health import ProbeResult
from kvsim.cache.types import StorageConfig, StorageType
from kvsim.core.errors import KvsimError
from kvsim.core.timer import Timer


class BackendError(KvsimError):
    """A backend could not open, create or delete.

    Args:
        message: what failed and why.
        failed: for a ``delete``, the URIs that were *not* released (the others were); None means the
            whole call failed.
    """

    def __init__(self, message: str, failed: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.failed: list[str] | None = None if failed is None else list(failed)


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
        """True when open, enabled and usable (used for write selection and read weights)."""
        return self._open and self._enabled and not self.unavailable_reason

    @property
    def enabled(self) -> bool:
        """The operator's enable/disable flag."""
        return self._enabled

    @property
    def unavailable_reason(self) -> str:
        """Why the storage cannot serve although it is open ("" when it can), e.g. a missing client."""
        return ""

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable the storage (admin Enable/DisableStorage)."""
        self._enabled = enabled

    def usage(self) -> StorageUsage:
        """Bytes allocated through this backend and its capacity (None when unknown or unlimited)."""
        return StorageUsage(0, None)

    def usage_ratio(self) -> float:
        """``used / capacity`` from :meth:`usage` (0.0 when the capacity is unknown or 0)."""
        usage = self.usage()
        if not usage.capacity_bytes:
            return 0.0
        return usage.used_bytes / usage.capacity_bytes

    def probe(self, timer: Timer, probe_bytes: int) -> ProbeResult:
        """Check that the storage can serve now (see :mod:`kvsim.cache.health`).

        The default checks only what the backend knows of itself (open, no ``unavailable_reason``);
        backends over real storage also touch it.

        Args:
            timer: measures the probe's latency.
            probe_bytes: size of the round-trip file, for backends that write one.
        """
        if not self._open:
            return ProbeResult(False, error=f"storage {self.name!r} is closed")
        reason = self.unavailable_reason
        if reason:
            return ProbeResult(False, error=reason)
        return ProbeResult(True)

    def restore(self, uris: Iterable[str]) -> None:
        """Replace the live-block bookkeeping by ``uris``: every URI the meta index still holds for this
        storage, once per location that holds it (the manager calls this whenever it opens a backend
        over existing data). The default keeps no bookkeeping."""
        return

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
        """Release the blocks behind ``uris`` (unknown URIs are ignored; a URI listed twice is released
        twice, as two locations may share it).

        Raises:
            BackendError: some blocks could not be released; ``failed`` lists their URIs (None: all of
                them) and the others were released, so retrying ``failed`` alone is safe.
        """

    @abstractmethod
    def exist(self, uris: Sequence[str]) -> list[bool]:
        """Whether each URI is currently allocated."""


@dataclass(frozen=True, slots=True)
class StorageUsage:
    """What a backend reports about its space.

    Attributes:
        used_bytes: bytes of the blocks allocated through the backend and not yet deleted.
        capacity_bytes: total bytes it may hold; None when unknown or unlimited.
    """

    used_bytes: int
    capacity_bytes: int | None


class LiveBlocks:
    """Live-block counts per container (a packed file, a Mooncake object), so a container shared by
    several blocks, or by two locations of one block, is removed only when its last block goes."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, container: object) -> bool:
        return container in self._counts

    def count(self, container: str) -> int:
        """Live blocks in ``container`` (0 when unknown)."""
        return self._counts.get(container, 0)

    def add(self, container: str, blocks: int = 1) -> bool:
        """Count ``blocks`` more live blocks; True when the container was not live before."""
        before = self._counts.get(container, 0)
        self._counts[container] = before + blocks
        return before == 0

    def release(self, container: str) -> bool:
        """Count one block less; True when that was the container's last live block (it is then
        forgotten). An unknown container counts as holding exactly this block."""
        left = self._counts.get(container, 1) - 1
        if left > 0:
            self._counts[container] = left
            return False
        self._counts.pop(container, None)
        return True

    def clear(self) -> None:
        """Forget every container."""
        self._counts.clear()


BackendFactory = Callable[[StorageConfig], StorageBackend]
