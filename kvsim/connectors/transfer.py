"""The transfer library: move block bytes between engine buffers and the storages KVCM allocates.

    from kvsim.connectors import TransferClient
    transfer = TransferClient(register_result.storage_configs)         # routes by storage name
    result = transfer.save(uris, buffers)                               # TransferResult: per-block ok
    result = transfer.load(uris, buffers)

``uris`` are the URIs of one location spec (one TP rank) as GetCacheLocation or StartWriteCache return them;
``buffers[i]`` receives or provides the bytes of ``uris[i]`` and must hold exactly the URI's ``size`` bytes
(see :mod:`kvsim.connectors.buffers` for what a buffer may be).

Data planes:

* **file** and **hf3fs**: plain files (3FS through its mount). A block lives at byte ``blkid * size`` of
  its file. With one key per file a save writes a temporary file next to the target and renames it into
  place, so a reader never sees a half-written block; packed files (``key_count_per_file > 1``, shared by
  the specs of one allocation) are written in place at the block's offset and created if missing. A block
  counts as stored only once FinishWriteCache made it SERVING, which the server does only after the save
  returned; with ``checksums=True`` every block also gets a CRC32 in a sidecar file (``<file>.kvsum``,
  16 bytes per blkid) and a load that does not match it fails instead of returning bad bytes.
* **mooncake**: one Mooncake Store object per block, through the ``mooncake`` package
  (``mooncake-transfer-engine``) when it is installed; otherwise a clear :class:`TransferError`.

Blocks of one file are moved by one task (one open file, ``preadv``/``pwritev``); tasks run on a thread
pool and each call has a deadline (``get_timeout_s``/``put_timeout_s``). Blocks whose task has not
finished by then are reported failed; a save task that is still running when its call times out does not
rename its temporary file into place. A load task that is still running may yet write into the buffers
of its (failed) blocks, so treat those buffers as garbage.

Everything that can be checked before I/O is checked first, and the call raises one
:class:`TransferError` without touching any storage: unknown schemes or storage names, paths outside a
storage root, buffers whose size differs from the URI's, read-only buffers for a load, a missing Mooncake
package. Failures of single blocks during I/O never raise: they come back in :class:`TransferResult`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kvsim.connectors.buffers import BlockView, block_view
from kvsim.connectors.errors import TransferError
from kvsim.connectors.routes import BlockRef, StorageRoute, parse_storage_configs, resolve_uri

FsyncPolicy = Literal["none", "data", "full"]
FSYNC_POLICIES: tuple[str, ...] = ("none", "data", "full")

#: Sidecar entry: magic, CRC32 of the block, block size.
_SUM = struct.Struct("<IIQ")
_SUM_MAGIC = 0x4D53564B  # "KVSM"
SUM_SUFFIX = ".kvsum"


@dataclass(frozen=True, slots=True)
class TransferResult:
    """Outcome of one :meth:`TransferClient.load` or :meth:`TransferClient.save`.

    Attributes:
        ok: per URI, True when its block was moved completely.
        errors: per URI, "" when ok, else why it failed.
        nbytes: bytes of the blocks that were moved.
        seconds: wall time of the call.
    """

    ok: tuple[bool, ...]
    errors: tuple[str, ...]
    nbytes: int
    seconds: float

    @property
    def all_ok(self) -> bool:
        """True when every block was moved."""
        return all(self.ok)

    @property
    def num_ok(self) -> int:
        """How many blocks were moved."""
        return sum(self.ok)

    @property
    def first_error(self) -> str:
        """The first non-empty error ("" when all blocks were moved)."""
        return next((e for e in self.errors if e), "")


class MooncakeClient(Protocol):
    """The part of ``mooncake.store.MooncakeDistributedStore`` the transfer library uses."""

    def put(self, key: str, value: bytes) -> int:
        """Store an object; 0 on success."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes (empty when missing)."""
        ...


def default_mooncake_client(route: StorageRoute, options: Mapping[str, Any]) -> MooncakeClient:
    """A ``MooncakeDistributedStore`` set up from the storage spec (``master_server_entry`` etc.).

    ``options`` may set ``global_segment_size`` (bytes this client contributes to the pool, default 0: a
    pure client of a standalone store) and ``local_buffer_size`` (default 256 MiB).

    Raises:
        TransferError: the package is not installed or ``setup`` fails.
    """
    try:
        from mooncake.store import MooncakeDistributedStore  # optional package
    except ImportError:
        raise TransferError(
            f"storage {route.name!r}: the Mooncake transfer engine is not installed "
            "(pip install mooncake-transfer-engine)"
        ) from None
    spec = route.spec
    store = MooncakeDistributedStore()
    rc = store.setup(
        str(spec.get("local_hostname", "localhost")),
        str(spec.get("metadata_connstring", "")),
        int(options.get("global_segment_size", 0)),
        int(options.get("local_buffer_size", 256 << 20)),
        str(spec.get("protocol", "tcp")),
        str(spec.get("rdma_device", "")),
        str(spec.get("master_server_entry", "")),
    )
    if rc != 0:
        raise TransferError(f"storage {route.name!r}: Mooncake setup failed with code {rc}")
    client: MooncakeClient = store
    return client


class _Call:
    """Per-call state shared with its tasks: set when the call gave up waiting for them."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = threading.Event()


def _pread_full(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill ``views`` from ``offset``; returns the bytes read (less than asked at end of file)."""
    total = 0
    pending = [v for v in views if v.nbytes]
    while pending:
        n = os.preadv(fd, pending, offset + total)
        if n == 0:
            break
        total += n
        while pending and n >= pending[0].nbytes:
            n -= pending[0].nbytes
            pending.pop(0)
        if pending and n:
            pending[0] = pending[0][n:]
    return total


def _pwrite_full(fd: int, views: list[memoryview], offset: int) -> None:
    """Write all of ``views`` at ``offset`` (looping over short writes)."""
    done = 0
    pending = [v for v in views if v.nbytes]
    while pending:
        n = os.pwritev(fd, pending, offset + done)
        if n <= 0:
            raise OSError("pwritev wrote nothing")
        done += n
        while pending and n >= pending[0].nbytes:
            n -= pending[0].nbytes
            pending.pop(0)
        if pending and n:
            pending[0] = pending[0][n:]


def _crc(views: Iterable[memoryview]) -> int:
    crc = 0
    for v in views:
        crc = zlib.crc32(v, crc)
    return crc


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TransferClient:
    """Loads and saves blocks for the storages of one instance's group.

    Args:
        storage_configs: the ``storage_configs`` JSON from RegisterInstance (or the parsed routes).
        threads: size of the I/O thread pool.
        get_timeout_s: deadline of one :meth:`load` call.
        put_timeout_s: deadline of one :meth:`save` call.
        fsync: ``none`` (page cache only; KV blocks can be recomputed), ``data`` (fdatasync every file
            before the save reports it) or ``full`` (also fsync the directory after a rename).
        checksums: write a CRC32 per block on save and verify it on load.
        mounts: storage name -> local directory standing in for the storage's configured root.
        mooncake_factory: makes the Mooncake client of a storage (tests inject fakes).
        mooncake_options: ``global_segment_size`` and ``local_buffer_size`` of the default client.

    Raises:
        TransferError: bad options or malformed ``storage_configs``.
    """

    def __init__(
        self,
        storage_configs: str | Iterable[Mapping[str, Any]] | Mapping[str, StorageRoute],
        *,
        threads: int = 8,
        get_timeout_s: float = 5.0,
        put_timeout_s: float = 10.0,
        fsync: FsyncPolicy = "none",
        checksums: bool = False,
        mounts: Mapping[str, str] | None = None,
        mooncake_factory: Callable[[StorageRoute, Mapping[str, Any]], MooncakeClient] | None = None,
        mooncake_options: Mapping[str, Any] | None = None,
    ) -> None:
        if threads < 1:
            raise TransferError(f"threads: must be >= 1, got {threads}")
        if get_timeout_s <= 0 or put_timeout_s <= 0:
            raise TransferError("get_timeout_s and put_timeout_s must be > 0")
        if fsync not in FSYNC_POLICIES:
            raise TransferError(f"fsync: expected one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.routes: dict[str, StorageRoute] = {}
        self.update_storage_configs(storage_configs, mounts)
        self.get_timeout_s = get_timeout_s
        self.put_timeout_s = put_timeout_s
        self.fsync: FsyncPolicy = fsync
        self.checksums = checksums
        self._mooncake_factory = mooncake_factory or default_mooncake_client
        self._mooncake_options = dict(mooncake_options or {})
        self._mooncake: dict[str, MooncakeClient] = {}
        self._mooncake_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kvsim-transfer")
        self._closed = False

    def update_storage_configs(
        self,
        storage_configs: str | Iterable[Mapping[str, Any]] | Mapping[str, StorageRoute],
        mounts: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the routes (after a re-registration returned a different ``storage_configs``)."""
        if isinstance(storage_configs, Mapping):
            self.routes = dict(storage_configs)
        else:
            self.routes = parse_storage_configs(storage_configs, mounts)

    # ------------------------------------------------------------------------------ public API

    def load(self, uris: Sequence[str], buffers: Sequence[Any]) -> TransferResult:
        """Read the block of ``uris[i]`` into ``buffers[i]`` for every i.

        Raises:
            TransferError: bad input (see the module docstring); nothing was read.
        """
        return self._run(uris, buffers, writing=False)

    def save(self, uris: Sequence[str], buffers: Sequence[Any]) -> TransferResult:
        """Write ``buffers[i]`` as the block of ``uris[i]`` for every i.

        Raises:
            TransferError: bad input (see the module docstring); nothing was written.
        """
        return self._run(uris, buffers, writing=True)

    def close(self) -> None:
        """Stop the thread pool (waiting for running tasks) and close Mooncake clients."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._mooncake.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._mooncake.clear()

    def __enter__(self) -> TransferClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing

    def _prepare(
        self, uris: Sequence[str], buffers: Sequence[Any], writing: bool
    ) -> tuple[list[BlockRef], list[BlockView]]:
        if self._closed:
            raise TransferError("the transfer client is closed")
        if len(uris) != len(buffers):
            raise TransferError(f"{len(uris)} URIs but {len(buffers)} buffers")
        refs = [resolve_uri(uri, self.routes) for uri in uris]
        views: list[BlockView] = []
        for i, (ref, buffer) in enumerate(zip(refs, buffers, strict=True)):
            view = block_view(buffer, writable=not writing, where=f"buffer {i}")
            if view.nbytes != ref.size:
                raise TransferError(
                    f"buffer {i}: {view.nbytes} bytes for a block of {ref.size} bytes ({ref.uri})"
                )
            views.append(view)
        for ref in refs:
            if ref.scheme == "mooncake":
                self._mooncake_client(ref.route)  # a missing package is a clear error before any I/O
        return refs, views

    def _mooncake_client(self, route: StorageRoute) -> MooncakeClient:
        with self._mooncake_lock:
            client = self._mooncake.get(route.name)
            if client is None:
                client = self._mooncake_factory(route, self._mooncake_options)
                self._mooncake[route.name] = client
            return client

    def _run(self, uris: Sequence[str], buffers: Sequence[Any], writing: bool) -> TransferResult:
        start = time.perf_counter()
        refs, views = self._prepare(uris, buffers, writing)
        n = len(refs)
        ok = [False] * n
        errors = ["not attempted"] * n
        # One task per file (or per Mooncake object): one open, blocks in offset order.
        groups: dict[tuple[str, str], list[int]] = {}
        for i, ref in enumerate(refs):
            target = ref.key if ref.scheme == "mooncake" else ref.path
            groups.setdefault((ref.route.name, target), []).append(i)
        call = _Call()
        task = self._save_group if writing else self._load_group
        futures: dict[Future[None], list[int]] = {}
        for indices in groups.values():
            indices.sort(key=lambda i: refs[i].offset)
            futures[self._pool.submit(task, call, refs, views, indices, ok, errors)] = indices
        timeout = self.put_timeout_s if writing else self.get_timeout_s
        done, pending = wait(futures, timeout=timeout)
        forced: dict[int, str] = {}  # blocks failed by the call itself, whatever their task reports
        if pending:
            call.cancelled.set()
            for future in pending:
                future.cancel()
                for i in futures[future]:
                    forced[i] = f"timed out after {timeout:g} s"
        for future in done:
            exc = future.exception()
            if exc is not None:  # a bug in a task: fail its blocks, never the whole call silently
                for i in futures[future]:
                    forced[i] = f"{type(exc).__name__}: {exc}"
        final_ok = tuple(ok[i] and i not in forced for i in range(n))
        final_errors = tuple("" if final_ok[i] else forced.get(i) or errors[i] or "failed" for i in range(n))
        nbytes = sum(refs[i].size for i in range(n) if final_ok[i])
        return TransferResult(final_ok, final_errors, nbytes, time.perf_counter() - start)

    # ------------------------------------------------------------------------------ tasks

    def _load_group(
        self,
        call: _Call,
        refs: list[BlockRef],
        views: list[BlockView],
        indices: list[int],
        ok: list[bool],
        errors: list[str],
    ) -> None:
        if refs[indices[0]].scheme == "mooncake":
            self._mooncake_load(call, refs, views, indices, ok, errors)
            return
        path = refs[indices[0]].path
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            for i in indices:
                errors[i] = f"{path}: {exc.strerror or exc}"
            return
        try:
            sums = self._read_sums(path) if self.checksums else None
            for i in indices:
                if call.cancelled.is_set():
                    return
                ref, view = refs[i], views[i]
                try:
                    got = _pread_full(fd, view.views, ref.offset)
                except OSError as exc:
                    errors[i] = f"{path}: {exc.strerror or exc}"
                    continue
                if got != ref.size:
                    errors[i] = f"{path}: short read ({got} of {ref.size} bytes at offset {ref.offset})"
                    continue
                if sums is not None:
                    why = self._check_sum(sums, ref, view)
                    if why:
                        errors[i] = f"{path}: {why}"
                        continue
                if call.cancelled.is_set():
                    return  # the call gave up: do not copy staged bytes into the caller's tensors
                view.commit()
                ok[i], errors[i] = True, ""
        finally:
            os.close(fd)

    def _save_group(
        self,
        call: _Call,
        refs: list[BlockRef],
        views: list[BlockView],
        indices: list[int],
        ok: list[bool],
        errors: list[str],
    ) -> None:
        first = refs[indices[0]]
        if first.scheme == "mooncake":
            self._mooncake_save(call, refs, views, indices, ok, errors)
            return
        path = first.path
        try:
            if first.packed:
                self._save_in_place(call, path, refs, views, indices)
            else:
                for i in indices:  # the same single-key file twice: the last write wins, both succeed
                    self._save_renamed(call, path, views[i])
        except OSError as exc:
            for i in indices:
                errors[i] = f"{path}: {exc.strerror or exc}"
            return
        except _Cancelled:
            return
        for i in indices:
            ok[i], errors[i] = True, ""

    def _save_in_place(
        self, call: _Call, path: str, refs: list[BlockRef], views: list[BlockView], indices: list[int]
    ) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # No O_TRUNC: the file is shared with other blocks (and other TP ranks) of the same allocation.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in indices:
                if call.cancelled.is_set():
                    raise _Cancelled
                _pwrite_full(fd, views[i].views, refs[i].offset)
            if self.fsync != "none":
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if self.checksums:
            self._write_sums(path, [(refs[i].blkid, refs[i].size, _crc(views[i].views)) for i in indices])
        if call.cancelled.is_set():
            raise _Cancelled

    def _save_renamed(self, call: _Call, path: str, view: BlockView) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _pwrite_full(fd, view.views, 0)
                if self.fsync != "none":
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if call.cancelled.is_set():
                raise _Cancelled  # the call already reported this block failed: never publish it
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync == "full":
            _fsync_dir(path)
        if self.checksums:
            self._write_sums(path, [(0, view.nbytes, _crc(view.views))])

    # ------------------------------------------------------------------------------ checksums

    def _write_sums(self, path: str, entries: list[tuple[int, int, int]]) -> None:
        fd = os.open(path + SUM_SUFFIX, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for blkid, size, crc in entries:
                os.pwrite(fd, _SUM.pack(_SUM_MAGIC, crc, size), blkid * _SUM.size)
            if self.fsync != "none":
                os.fdatasync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _read_sums(path: str) -> bytes:
        try:
            with open(path + SUM_SUFFIX, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    @staticmethod
    def _check_sum(sums: bytes, ref: BlockRef, view: BlockView) -> str:
        at = ref.blkid * _SUM.size
        if len(sums) < at + _SUM.size:
            return f"no checksum for block {ref.blkid}"
        magic, crc, size = _SUM.unpack_from(sums, at)
        if magic != _SUM_MAGIC or size != ref.size:
            return f"no checksum for block {ref.blkid}"
        if _crc(view.views) != crc:
            return f"checksum mismatch in block {ref.blkid}"
        return ""

    # ------------------------------------------------------------------------------ Mooncake

    def _mooncake_load(
        self,
        call: _Call,
        refs: list[BlockRef],
        views: list[BlockView],
        indices: list[int],
        ok: list[bool],
        errors: list[str],
    ) -> None:
        client = self._mooncake_client(refs[indices[0]].route)
        for i in indices:
            if call.cancelled.is_set():
                return
            ref, view = refs[i], views[i]
            try:
                data = client.get(ref.key)
            except Exception as exc:  # the binding raises plain RuntimeErrors
                errors[i] = f"mooncake get {ref.key!r}: {exc}"
                continue
            if len(data) != ref.size:
                errors[i] = f"mooncake get {ref.key!r}: {len(data)} bytes, expected {ref.size}"
                continue
            src = memoryview(data)
            at = 0
            for v in view.views:
                v[:] = src[at : at + v.nbytes]
                at += v.nbytes
            if call.cancelled.is_set():
                return
            view.commit()
            ok[i], errors[i] = True, ""

    def _mooncake_save(
        self,
        call: _Call,
        refs: list[BlockRef],
        views: list[BlockView],
        indices: list[int],
        ok: list[bool],
        errors: list[str],
    ) -> None:
        client = self._mooncake_client(refs[indices[0]].route)
        for i in indices:
            if call.cancelled.is_set():
                return
            ref = refs[i]
            data = b"".join(bytes(v) for v in views[i].views)
            try:
                rc = client.put(ref.key, data)
            except Exception as exc:  # the binding raises plain RuntimeErrors
                errors[i] = f"mooncake put {ref.key!r}: {exc}"
                continue
            if rc != 0:
                errors[i] = f"mooncake put {ref.key!r}: returned {rc}"
                continue
            ok[i], errors[i] = True, ""


class _Cancelled(Exception):
    """Internal: the call timed out while this task ran; stop without publishing anything."""


__all__ = [
    "FSYNC_POLICIES",
    "SUM_SUFFIX",
    "FsyncPolicy",
    "MooncakeClient",
    "TransferClient",
    "TransferResult",
    "default_mooncake_client",
]
