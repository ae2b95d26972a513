"""The ``hf3fs`` backend: a 3FS (HF3FS) mount, with the reference's path layout.

A block's file is ``<mountpoint>/<root_dir>/<first key>[_<hash>]`` (a path join) and its URI
``hf3fs://<storage name>/<that path>?[blkid=<i>&]size=<n>`` (:mod:`kvsim.cache.backends.layout`).

3FS clients write through usrbio on their own machines, so the server's files matter only where the
mount is visible. Two modes, chosen when the backend opens:

* **the mountpoint is an existing directory here**: real files. ``create`` touches empty files when
  ``touch_file_when_create`` is set (as the reference; clients create them otherwise), and ``delete``
  removes a file when its last live block goes (kvsim fix: the reference removes the file at the first
  block, losing its neighbours).
* **it is not**: URIs only. Blocks are counted but no file is touched; :attr:`Hf3fsBackend.file_io` is
  False and :attr:`Hf3fsBackend.io_note` says why, so operators see it in ``list_storage`` tooling.

VCNS-3FS is a stub in the reference (opening fails) and is refused here the same way.
"""

from __future__ import annotations

import os

from kvsim.cache.backends.base import BackendError
from kvsim.cache.backends.file import FileLikeBackend, _create_sized
from kvsim.cache.backends.layout import file_path
from kvsim.cache.types import StorageConfig, ThreeFSStorageSpec


class Hf3fsBackend(FileLikeBackend):
    """A 3FS storage (``ThreeFSStorageSpec``); see the module docstring.

    Args:
        config: a storage with a ``ThreeFSStorageSpec``.
        capacity_bytes: bytes it may hold; None for unlimited.

    Raises:
        BackendError: another spec type, or a mounted root directory that cannot be created.
    """

    PROTOCOL = "hf3fs"

    def __init__(self, config: StorageConfig, capacity_bytes: int | None = None) -> None:
        spec = config.spec
        if not isinstance(spec, ThreeFSStorageSpec):
            raise BackendError(
                f"storage {config.global_unique_name!r}: the hf3fs backend needs a threefs spec, "
                f"got {config.type_name}"
            )
        root = file_path(spec, "")
        mount = spec.mountpoint
        if not mount.startswith("/"):
            note = f"mountpoint {mount!r} is not an absolute path: URIs only, no files are touched"
        elif not os.path.isdir(mount):
            note = f"mountpoint {mount!r} does not exist here: URIs only, no files are touched"
        else:
            note = ""
        self.io_note = note
        super().__init__(config, spec, root, file_io=not note, capacity_bytes=capacity_bytes)
        self._touch = spec.touch_file_when_create

    def _make_file(self, path: str, size: int) -> bool:
        if not self._touch:
            return False  # the client creates the file when it writes
        return _create_sized(path, size, sized=False)


__all__ = ["Hf3fsBackend"]
