"""The ``file`` backend: an NFS or local directory tree holding real files (the reference's NFS storage).

URIs are the reference's (``file://<storage name><root_path><first key>[_<hash>]?[blkid=<i>&]size=<n>``,
see :mod:`kvsim.cache.backends.layout`), and the file behind a URI is its path on this machine.

* ``create`` makes the files: one per batch of ``key_count_per_file`` blocks, sparse, sized
  ``blocks * size`` (a client maps block ``blkid`` at byte ``blkid * size``). Directories are made as
  needed. A file that already exists (the same storage keys written again) is kept and shared.
* ``delete`` releases blocks; a file is unlinked only when its last live block goes, so deleting one
  block of a packed file keeps its neighbours readable (kvsim fix: the reference never deletes files).
  Live counts are rebuilt from the meta index by :meth:`FileBackend.restore` whenever the manager opens
  the backend, so they survive restarts and reopenings without being stored twice.
* ``create`` refuses to work when the root has gone (it never makes the root again: files written into
  the mountpoint of a vanished mount would land on the wrong disk).
* ``probe`` checks the root (exists, writable), reads the filesystem's size and free space
  (``os.statvfs``, the figures ``df`` shows) and times a small write/fsync/read/delete round trip of a
  probe file named after the process, so several servers on one NFS root never collide.
* Storage keys may not escape the root (``..``, empty or absolute segments are refused): instance ids
  come from clients and name directories here.

:class:`FileLikeBackend` holds everything but the file-making policy and is shared with ``hf3fs``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from kvsim.cache.backends.base import (
    BackendError,
    LiveBlocks,
    StorageBackend,
    StorageFullError,
    StorageUsage,
)
from kvsim.cache.backends.layout import (
    FileSpec,
    block_uris,
    blocks_per_file,
    file_path,
    packed_files,
    parse_block_uri,
    unsafe_segment,
)
from kvsim.cache.health import ProbeResult
from kvsim.cache.types import NfsStorageSpec, StorageConfig
from kvsim.core.timer import Timer


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class FileLikeBackend(StorageBackend):
    """Blocks packed into files under a root directory, with live-block counts per file.

    Subclasses set :attr:`PROTOCOL`, check their spec and decide how a file comes into being
    (:meth:`_make_file`) and whether files exist on this machine at all (:attr:`file_io`).

    Args:
        config: the storage configuration.
        spec: its file-like spec (already type-checked by the subclass).
        root: the directory every file lies under (created when ``file_io``).
        file_io: whether files are created and deleted on this machine.
        capacity_bytes: bytes the storage may hold; None for unlimited.
    """

    PROTOCOL = ""

    def __init__(
        self,
        config: StorageConfig,
        spec: FileSpec,
        root: str,
        *,
        file_io: bool,
        capacity_bytes: int | None = None,
    ) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise BackendError(f"capacity_bytes: must be >= 0, got {capacity_bytes}")
        super().__init__(config)
        self._spec = spec
        self._per_file = blocks_per_file(spec)
        self.root = root
        self.file_io = file_io
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._files = LiveBlocks()
        if file_io:
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"storage {self.name!r}: cannot create root {root!r}: {_why(exc)}"
                ) from None
            if not os.access(root, os.W_OK | os.X_OK):
                raise BackendError(f"storage {self.name!r}: root {root!r} is not writable")

    # ------------------------------------------------------------------ interface

    def usage(self) -> StorageUsage:
        """Bytes of the live blocks and the configured capacity."""
        return StorageUsage(self.used_bytes, self.capacity_bytes)

    def live_blocks(self, path: str) -> int:
        """Live blocks of the file at ``path`` (0 when none)."""
        return self._files.count(path)

    def create(self, keys: Sequence[str], size_per_key: int) -> list[str]:
        """Allocate one block per storage key, packed ``key_count_per_file`` to a file; all or nothing.

        Raises:
            StorageFullError: the capacity would be exceeded.
            BackendError: the backend is closed, a key would escape the root, or a file could not be made.
        """
        if not self._open:
            raise BackendError(f"storage {self.name!r} is closed")
        if size_per_key <= 0:
            raise BackendError(f"size_per_key: must be > 0, got {size_per_key}")
        need = len(keys) * size_per_key
        if self.capacity_bytes is not None and self.used_bytes + need > self.capacity_bytes:
            raise StorageFullError(
                f"storage {self.name!r} is full: {need} bytes requested, "
                f"{self.capacity_bytes - self.used_bytes} of {self.capacity_bytes} free"
            )
        for key in keys:
            bad = unsafe_segment(key)
            if bad is not None:
                raise BackendError(
                    f"storage key {key!r}: segment {bad!r} would escape the root {self.root!r}"
                )
        files = [(file_path(self._spec, name), batch) for name, batch in packed_files(keys, self._per_file)]
        created: list[str] = []
        if self.file_io:
            if not os.path.isdir(self.root):
                # Never make the root again: a mount that went away leaves an empty mountpoint (or
                # nothing), and files made there would land on the wrong disk.
                raise BackendError(f"storage {self.name!r}: root {self.root!r} does not exist (unmounted?)")
            try:
                for path, batch in files:
                    if self._make_file(path, len(batch) * size_per_key):
                        created.append(path)
            except OSError as exc:
                for path in created:  # all or nothing: files this call made go again
                    self._unlink(path)
                raise BackendError(
                    f"storage {self.name!r}: cannot create {exc.filename!r}: {_why(exc)}"
                ) from None
        uris: list[str] = []
        packed = self._per_file > 1
        for path, batch in files:
            self._files.add(path, len(batch))
            uris.extend(block_uris(self.PROTOCOL, self.name, path, len(batch), size_per_key, packed))
        self.used_bytes += need
        return uris

    def delete(self, uris: Sequence[str]) -> None:
        """Release one block per URI; unlink a file when its last live block goes.

        Unknown or malformed URIs are ignored. A file that is already gone counts as deleted.

        Raises:
            BackendError: some files could not be unlinked; ``failed`` lists their URIs, whose blocks
                stay live so a retry releases them again.
        """
        failed: list[str] = []
        first_error = ""
        for uri in uris:
            try:
                block = parse_block_uri(uri)
            except ValueError:
                continue
            path = block.path
            known = path in self._files
            if not known and not self._inside_root(path):
                continue  # never touch a path this storage did not make
            if known:
                self.used_bytes = max(0, self.used_bytes - block.size)
            if not self._files.release(path) or not self.file_io:
                continue
            error = self._unlink(path)
            if error:
                # Keep the block live: the retry must find the file still counted.
                self._files.add(path)
                if known:
                    self.used_bytes += block.size
                failed.append(uri)
                first_error = first_error or f"{path!r}: {error}"
        if failed:
            raise BackendError(
                f"storage {self.name!r}: could not delete {len(failed)} block(s), first {first_error}", failed
            )

    def exist(self, uris: Sequence[str]) -> list[bool]:
        """Whether each URI's block is live (and, with file I/O, its file is on disk)."""
        out: list[bool] = []
        for uri in uris:
            try:
                path = parse_block_uri(uri).path
            except ValueError:
                out.append(False)
                continue
            out.append(path in self._files and (not self.file_io or os.path.exists(path)))
        return out

    def restore(self, uris: Iterable[str]) -> None:
        """Rebuild the live counts (and bytes in use) from the URIs the meta index holds."""
        self._files.clear()
        self.used_bytes = 0
        for uri in uris:
            try:
                block = parse_block_uri(uri)
            except ValueError:
                continue
            self._files.add(block.path)
            self.used_bytes += block.size

    def probe(self, timer: Timer, probe_bytes: int) -> ProbeResult:
        """Check the root and time a round trip through a probe file (see the module docstring).

        Without file I/O on this machine (a 3FS mount not visible here) only the base checks run.
        """
        base = super().probe(timer, probe_bytes)
        if not base.ok or not self.file_io:
            return base
        root = self.root
        if not os.path.isdir(root):
            return ProbeResult(False, error=f"storage {self.name!r}: root {root!r} does not exist")
        if not os.access(root, os.W_OK | os.X_OK):
            return ProbeResult(False, error=f"storage {self.name!r}: root {root!r} is not writable")
        used = total = None
        try:
            st = os.statvfs(root)
        except OSError as exc:
            return ProbeResult(False, error=f"storage {self.name!r}: statvfs {root!r}: {_why(exc)}")
        if st.f_blocks > 0:
            # As df: used = size - free, and the ratio is taken over what unprivileged users can reach.
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            total = used + st.f_bavail * st.f_frsize
        path = os.path.join(root, f".kvsim-probe-{os.getpid()}")
        payload = _probe_payload(probe_bytes)
        started = timer.monotonic()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
                back = os.pread(fd, len(payload), 0)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as exc:
            self._unlink(path)
            return ProbeResult(
                False,
                timer.monotonic() - started,
                used,
                total,
                f"storage {self.name!r}: probe file {path!r}: {_why(exc)}",
            )
        latency = timer.monotonic() - started
        if back != payload:
            return ProbeResult(
                False, latency, used, total, f"storage {self.name!r}: probe file read back differs"
            )
        return ProbeResult(True, latency, used, total)

    # ------------------------------------------------------------------ helpers

    def _make_file(self, path: str, size: int) -> bool:
        """Make the file for ``size`` bytes of blocks; True when this call created it."""
        raise NotImplementedError

    def _inside_root(self, path: str) -> bool:
        prefix = self.root if self.root.endswith("/") else self.root + "/"
        return path.startswith(prefix) and unsafe_segment(path[len(prefix) :]) is None

    @staticmethod
    def _unlink(path: str) -> str:
        """Remove a file; "" on success or when it is already gone, else the reason."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            return _why(exc)
        return ""


def _probe_payload(size: int) -> bytes:
    """A recognisable, non-constant pattern, so a read that returns stale or zeroed bytes fails."""
    return bytes(i % 251 for i in range(size))


def _create_sized(path: str, size: int, *, sized: bool) -> bool:
    """Create ``path`` (and its directories) if absent; grow it sparsely to ``size`` when ``sized``.
    True when the file did not exist before."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    created = True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        created = False
        fd = os.open(path, os.O_WRONLY)
    try:
        if sized and os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return created


class FileBackend(FileLikeBackend):
    """An NFS or local directory (``NfsStorageSpec``); see the module docstring.

    Args:
        config: a storage with an ``NfsStorageSpec`` whose ``root_path`` is absolute.
        capacity_bytes: bytes it may hold; None for unlimited.

    Raises:
        BackendError: another spec type, a relative root, or a root that cannot be created or written.
    """

    PROTOCOL = "file"

    def __init__(self, config: StorageConfig, capacity_bytes: int | None = None) -> None:
        spec = config.spec
        if not isinstance(spec, NfsStorageSpec):
            raise BackendError(
                f"storage {config.global_unique_name!r}: the file backend needs an nfs spec, "
                f"got {config.type_name}"
            )
        if not spec.root_path.startswith("/"):
            raise BackendError(
                f"storage {config.global_unique_name!r}: root_path must be absolute, got {spec.root_path!r}"
            )
        # The root is concatenated, not joined: "/data/kv" puts files at "/data/kv<key>", in "/data".
        root = spec.root_path if spec.root_path.endswith("/") else os.path.dirname(spec.root_path) or "/"
        super().__init__(config, spec, root, file_io=True, capacity_bytes=capacity_bytes)

    def _inside_root(self, path: str) -> bool:
        root_path = self._spec.root_path  # type: ignore[union-attr]
        return path.startswith(root_path) and unsafe_segment(path[len(root_path) :]) is None

    def _make_file(self, path: str, size: int) -> bool:
        return _create_sized(path, size, sized=True)


__all__ = ["FileBackend", "FileLikeBackend"]
