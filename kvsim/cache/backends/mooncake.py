"""The ``mooncake`` backend: one Mooncake Store object per block, as the reference.

``create`` only names objects (clients put them): ``mooncake://<storage name>/?key=<storage key>&size=<n>``.
``delete`` removes an object through the Mooncake client once no location holds its key any more (a key
written twice shares one object), as the reference's ``mooncake_client_remove``.

The client is the ``mooncake`` Python package (``mooncake.store.MooncakeDistributedStore``, from the
``mooncake-transfer-engine`` distribution). When it is not installed, or its ``setup`` fails, the
storage still registers but is **unavailable**: :attr:`MooncakeBackend.unavailable_reason` says why, it
takes no writes and its locations get read weight 0. With ``check_storage_available_when_open`` the
storage is refused instead. Tests inject a client with ``client_factory``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from kvsim.cache.backends.base import (
    BackendError,
    LiveBlocks,
    StorageBackend,
    StorageFullError,
    StorageUsage,
    format_uri,
    parse_uri,
)
from kvsim.cache.health import ProbeResult
from kvsim.cache.types import MooncakeStorageSpec, StorageConfig
from kvsim.core.timer import Timer

#: The server contributes no memory to the pool; it only removes objects.
GLOBAL_SEGMENT_SIZE = 0
#: The object a probe asks about: any answer (present or not) proves the master is reachable.
PROBE_KEY = "__kvsim_probe__"
#: Transfer buffer of the server's client (it never transfers data; small but non-zero).
LOCAL_BUFFER_SIZE = 16 << 20


class MooncakeClient(Protocol):
    """The part of ``MooncakeDistributedStore`` the backend uses."""

    def remove(self, key: str) -> int:
        """Remove an object; 0 on success."""
        ...

    def is_exist(self, key: str) -> int:
        """1 if the object exists, 0 if not, negative on error."""
        ...

    def close(self) -> int:
        """Release the client."""
        ...


class MooncakeUnavailable(BackendError):
    """The Mooncake client cannot be made (package missing, setup failed)."""


def load_client_module() -> Any:
    """Import ``mooncake.store`` (an optional dependency, so imported only when a storage needs it)."""
    return importlib.import_module("mooncake.store")


def default_client(spec: MooncakeStorageSpec) -> MooncakeClient:
    """A ``MooncakeDistributedStore`` set up from the storage spec.

    Raises:
        MooncakeUnavailable: the package is not installed or ``setup`` fails.
    """
    try:
        module = load_client_module()
    except ImportError:
        raise MooncakeUnavailable(
            "the Mooncake client is not installed (pip install mooncake-transfer-engine)"
        ) from None
    store = module.MooncakeDistributedStore()
    rc = store.setup(
        spec.local_hostname,
        spec.metadata_connstring,
        GLOBAL_SEGMENT_SIZE,
        LOCAL_BUFFER_SIZE,
        spec.protocol,
        spec.rdma_device,
        spec.master_service_entry,
    )
    if rc != 0:
        raise MooncakeUnavailable(
            f"Mooncake setup failed with code {rc} (master {spec.master_service_entry!r})"
        )
    client: MooncakeClient = store
    return client


def _key_of(uri: str) -> str | None:
    try:
        return parse_uri(uri)[3].get("key")
    except ValueError:
        return None


class MooncakeBackend(StorageBackend):
    """A Mooncake Store (``MooncakeStorageSpec``); see the module docstring.

    Args:
        config: a storage with a ``MooncakeStorageSpec``.
        capacity_bytes: bytes it may hold; None for unlimited.
        client_factory: makes the client from the spec; :func:`default_client` when None.

    Raises:
        BackendError: another spec type, or the client is unavailable and the config asks to check
            availability when opening.
    """

    def __init__(
        self,
        config: StorageConfig,
        capacity_bytes: int | None = None,
        client_factory: Callable[[MooncakeStorageSpec], MooncakeClient] | None = None,
    ) -> None:
        spec = config.spec
        if not isinstance(spec, MooncakeStorageSpec):
            raise BackendError(
                f"storage {config.global_unique_name!r}: the mooncake backend needs a mooncake spec, "
                f"got {config.type_name}"
            )
        if capacity_bytes is not None and capacity_bytes < 0:
            raise BackendError(f"capacity_bytes: must be >= 0, got {capacity_bytes}")
        super().__init__(config)
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._objects = LiveBlocks()
        self._sizes: dict[str, int] = {}
        self._client: MooncakeClient | None = None
        self._reason = ""
        try:
            self._client = (client_factory or default_client)(spec)
        except BackendError as exc:
            self._reason = f"storage {self.name!r}: {exc}"
            if config.check_storage_available_when_open:
                raise BackendError(self._reason) from None

    @property
    def unavailable_reason(self) -> str:
        """Why the storage cannot serve ("" when its client is up)."""
        return self._reason

    def usage(self) -> StorageUsage:
        """Bytes of the live objects and the configured capacity."""
        return StorageUsage(self.used_bytes, self.capacity_bytes)

    def probe(self, timer: Timer, probe_bytes: int) -> ProbeResult:
        """Ask the master whether a probe object exists: an answer (0 or 1) is a success, a negative
        code or an exception a failure. Usage is kvsim's own accounting (the pool's is not exposed)."""
        base = super().probe(timer, probe_bytes)
        client = self._client
        if not base.ok or client is None:
            return base if not base.ok else ProbeResult(False, error=f"storage {self.name!r} has no client")
        started = timer.monotonic()
        try:
            rc = client.is_exist(PROBE_KEY)
        except Exception as exc:  # the client is a C extension: any failure means "not answering"
            return ProbeResult(False, timer.monotonic() - started, error=f"storage {self.name!r}: {exc}")
        latency = timer.monotonic() - started
        if rc < 0:
            return ProbeResult(False, latency, error=f"storage {self.name!r}: master answered {rc}")
        return ProbeResult(True, latency)

    def create(self, keys: Sequence[str], size_per_key: int) -> list[str]:
        """Name one object per storage key (clients put the data).

        Raises:
            BackendError: closed or unavailable; StorageFullError when over capacity.
        """
        if not self._open:
            raise BackendError(f"storage {self.name!r} is closed")
        if self._reason:
            raise BackendError(self._reason)
        if size_per_key <= 0:
            raise BackendError(f"size_per_key: must be > 0, got {size_per_key}")
        need = len(keys) * size_per_key
        if self.capacity_bytes is not None and self.used_bytes + need > self.capacity_bytes:
            raise StorageFullError(
                f"storage {self.name!r} is full: {need} bytes requested, "
                f"{self.capacity_bytes - self.used_bytes} of {self.capacity_bytes} free"
            )
        for key in keys:
            self._objects.add(key)
            self._sizes[key] = size_per_key
        self.used_bytes += need
        return [format_uri("mooncake", self.name, "/", {"key": k, "size": size_per_key}) for k in keys]

    def delete(self, uris: Sequence[str]) -> None:
        """Release one block per URI; remove the object when no location holds its key any more.

        Raises:
            BackendError: the client is unavailable or a remove failed (the object still exists);
                ``failed`` lists those URIs.
        """
        failed: list[str] = []
        first_error = ""
        for uri in uris:
            key = _key_of(uri)
            if key is None:
                continue
            size = self._sizes.get(key, 0)
            if not self._objects.release(key):
                self.used_bytes = max(0, self.used_bytes - size)
                continue
            error = self._remove(key)
            if error:
                self._objects.add(key)
                failed.append(uri)
                first_error = first_error or error
                continue
            self._sizes.pop(key, None)
            self.used_bytes = max(0, self.used_bytes - size)
        if failed:
            raise BackendError(
                f"storage {self.name!r}: could not delete {len(failed)} object(s), first {first_error}",
                failed,
            )

    def _remove(self, key: str) -> str:
        """Remove one object; "" when it is gone afterwards, else the reason."""
        client = self._client
        if client is None:
            return f"{key!r}: {self._reason or 'the backend is closed'}"
        rc = client.remove(key)
        # A failed remove of an object that no longer exists (already removed) is a success.
        if rc != 0 and client.is_exist(key) != 0:
            return f"{key!r}: remove returned {rc}"
        return ""

    def exist(self, uris: Sequence[str]) -> list[bool]:
        """Whether each object exists (asked of the client when up, else from the live counts)."""
        out: list[bool] = []
        for uri in uris:
            key = _key_of(uri)
            if key is None:
                out.append(False)
            elif self._client is not None:
                out.append(self._client.is_exist(key) == 1)
            else:
                out.append(key in self._objects)
        return out

    def restore(self, uris: Iterable[str]) -> None:
        """Rebuild the live counts from the URIs the meta index holds."""
        self._objects.clear()
        self._sizes.clear()
        self.used_bytes = 0
        for uri in uris:
            key = _key_of(uri)
            if key is None:
                continue
            try:
                size = int(parse_uri(uri)[3].get("size", "0"))
            except ValueError:
                size = 0
            self._objects.add(key)
            self._sizes[key] = size
            self.used_bytes += size

    def close(self) -> None:
        """Close the client and stop serving."""
        client, self._client = self._client, None
        close = getattr(client, "close", None)
        if close is not None:
            close()
        super().close()


__all__ = ["MooncakeBackend", "MooncakeClient", "MooncakeUnavailable", "default_client"]
