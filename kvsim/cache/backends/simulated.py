"""The ``simulated`` backend: capacity bookkeeping only, URIs shaped like the reference's.

No bytes are stored. ``create`` checks the capacity (if one is set), books the space and returns URIs
of the shape the real storage type would produce, so clients and traces see realistic locations:

=============  =====================================================================================
type            URI for storage key ``inst/tp0/7b`` (blocks packed ``key_count_per_file`` to a file)
=============  =====================================================================================
NFS (file)      ``file://<name><root_path>inst/tp0/7b?size=1024`` (one per file);
                with several blocks per file ``...7b_<hash>?blkid=<i>&size=1024``
3FS / VCNS      ``hf3fs://<name>/<mountpoint>/<root_dir>/inst/tp0/7b[_<hash>]?[blkid=<i>&]size=1024``
Mooncake        ``mooncake://<name>/?key=inst/tp0/7b&size=1024``
TairMemPool     ``pace://<name>/<offset>?media_type=mem&node_id=0&range_id=0&size=1024``
=============  =====================================================================================

A simulated storage can be taken down (:meth:`SimulatedBackend.set_down`, driven by an experiment's
``faults:`` section): while down, ``create`` fails as a real outage would and ``probe`` reports the
failure, so the manager's probes turn it unavailable after ``fail_after`` rounds and back after
``recover_after`` good ones once it is up again. Its probe reports the booked bytes over the capacity
as the storage's own usage.

The packing of blocks into files and the file-name hash are shared with the real backends
(:mod:`kvsim.cache.backends.layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from kvsim.cache.backends.base import (
    BackendError,
    StorageBackend,
    StorageFullError,
    StorageUsage,
    format_uri,
    parse_uri,
)
from kvsim.cache.backends.layout import block_uris, blocks_per_file, file_path, packed_files
from kvsim.cache.health import ProbeResult
from kvsim.cache.types import (
    MooncakeStorageSpec,
    NfsStorageSpec,
    StorageConfig,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
)
from kvsim.core.timer import Timer


class SimulatedBackend(StorageBackend):
    """A storage that only counts bytes.

    Args:
        config: the storage configuration (any supported spec).
        capacity_bytes: total bytes it can hold; None for unlimited.
    """

    def __init__(self, config: StorageConfig, capacity_bytes: int | None = None) -> None:
        spec = config.spec
        if spec is None or not isinstance(
            spec,
            NfsStorageSpec
            | ThreeFSStorageSpec
            | VcnsThreeFSStorageSpec
            | MooncakeStorageSpec
            | TairMemPoolStorageSpec,
        ):
            raise BackendError(
                f"storage {config.global_unique_name!r}: unsupported storage type {config.type_name}"
            )
        if capacity_bytes is not None and capacity_bytes < 0:
            raise BackendError(f"capacity_bytes: must be >= 0, got {capacity_bytes}")
        super().__init__(config)
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        # uri -> bytes of its block. The same storage key can be allocated twice (a key written into two
        # locations) and then shares its URI; _extra counts those additional allocations.
        self._live: dict[str, int] = {}
        self._extra: dict[str, int] = {}
        self._next_offset = 0
        self._down = ""

    @property
    def down(self) -> bool:
        """Whether the storage is down (a scripted outage)."""
        return bool(self._down)

    def set_down(self, down: bool, why: str = "scripted outage") -> None:
        """Take the storage down (creates fail, probes fail) or bring it back up."""
        self._down = why if down else ""

    def probe(self, timer: Timer, probe_bytes: int) -> ProbeResult:
        """Up or down as :meth:`set_down` left it, with the booked bytes as the storage's usage."""
        base = super().probe(timer, probe_bytes)
        if not base.ok:
            return base
        if self._down:
            return ProbeResult(False, error=f"storage {self.name!r} is down: {self._down}")
        return ProbeResult(True, 0.0, self.used_bytes, self.capacity_bytes)

    def usage(self) -> StorageUsage:
        """Bytes booked and the capacity (None when unlimited)."""
        return StorageUsage(self.used_bytes, self.capacity_bytes)

    def restore(self, uris: Iterable[str]) -> None:
        """Book the blocks behind ``uris`` again (their ``size`` parameter; 0 when absent), replacing
        the current bookkeeping: after a restart the capacity in use matches the index."""
        self._live.clear()
        self._extra.clear()
        self.used_bytes = 0
        for uri in uris:
            try:
                size = int(parse_uri(uri)[3].get("size", "0"))
            except ValueError:
                size = 0
            if uri in self._live:
                self._extra[uri] = self._extra.get(uri, 0) + 1
            else:
                self._live[uri] = size
            self.used_bytes += size

    def create(self, keys: Sequence[str], size_per_key: int) -> list[str]:
        """Book ``len(keys) * size_per_key`` bytes and return one URI per key."""
        if not self._open:
            raise BackendError(f"storage {self.name!r} is closed")
        if self._down:
            raise BackendError(f"storage {self.name!r} is down: {self._down}")
        if size_per_key <= 0:
            raise BackendError(f"size_per_key: must be > 0, got {size_per_key}")
        need = len(keys) * size_per_key
        if self.capacity_bytes is not None and self.used_bytes + need > self.capacity_bytes:
            raise StorageFullError(
                f"storage {self.name!r} is full: {need} bytes requested, "
                f"{self.capacity_bytes - self.used_bytes} of {self.capacity_bytes} free"
            )
        uris = self._uris(keys, size_per_key)
        live = self._live
        if len(uris) == len(set(uris)) and live.keys().isdisjoint(uris):
            live.update(dict.fromkeys(uris, size_per_key))  # the common case, at C speed
        else:
            for uri in uris:
                if uri in live:
                    self._extra[uri] = self._extra.get(uri, 0) + 1
                else:
                    live[uri] = size_per_key
        self.used_bytes += need
        return uris

    def delete(self, uris: Sequence[str]) -> None:
        """Release one allocation per URI; unknown URIs are ignored."""
        live, extra = self._live, self._extra
        for uri in uris:
            size = live.get(uri)
            if size is None:
                continue
            self.used_bytes -= size
            more = extra.get(uri)
            if more:
                if more == 1:
                    del extra[uri]
                else:
                    extra[uri] = more - 1
            else:
                del live[uri]

    def exist(self, uris: Sequence[str]) -> list[bool]:
        """Whether each URI is allocated."""
        return [uri in self._live for uri in uris]

    def _uris(self, keys: Sequence[str], size: int) -> list[str]:
        spec = self._config.spec
        name = self.name
        if isinstance(spec, MooncakeStorageSpec):
            return [format_uri("mooncake", name, "/", {"key": k, "size": size}) for k in keys]
        if isinstance(spec, TairMemPoolStorageSpec):
            out = []
            for _ in keys:
                params = {"media_type": "mem", "node_id": 0, "range_id": 0, "size": size}
                out.append(format_uri("pace", name, f"/{self._next_offset}", params))
                self._next_offset += size
            return out
        assert isinstance(spec, NfsStorageSpec | ThreeFSStorageSpec | VcnsThreeFSStorageSpec)
        per_file = blocks_per_file(spec)
        protocol = "file" if isinstance(spec, NfsStorageSpec) else "hf3fs"
        packed = per_file > 1
        uris: list[str] = []
        for file_name, batch in packed_files(keys, per_file):
            uris.extend(block_uris(protocol, name, file_path(spec, file_name), len(batch), size, packed))
        return uris


def simulated_backend_factory(
    capacities: Mapping[str, int] | None = None,
    default_capacity: int | None = None,
) -> Callable[[StorageConfig], SimulatedBackend]:
    """Return a backend factory giving each storage its capacity (by name, else ``default_capacity``)."""
    table = dict(capacities or {})

    def factory(config: StorageConfig) -> SimulatedBackend:
        return SimulatedBackend(config, table.get(config.global_unique_name, default_capacity))

    return factory
