"""Where blocks go inside file-like storages: the reference's packing of blocks into files and its URIs.

Shared by the ``simulated`` backend (URIs only) and the ``file`` and ``hf3fs`` backends (real files), so
a simulated storage and a real one hand out identical URIs for the same writes.

Packing (the reference's NFS and HF3FS ``Create``): the storage keys of one ``create`` call are cut into
batches of ``key_count_per_file`` (a value <= 0 means 1). Each batch is one file named after its first
key, plus ``_<hash>`` when the batch holds more than one key. Block ``i`` of a batch is addressed by
``blkid=i`` (only when ``key_count_per_file > 1``) and every URI carries ``size``.

=======  ===================================================================================
type      URI of storage key ``inst/tp0/7b``
=======  ===================================================================================
file      ``file://<name><root_path>inst/tp0/7b[_<hash>][?blkid=<i>]&size=<bytes>`` (plain string
          concatenation of the root, as the reference: a root should end with ``/``)
hf3fs     ``hf3fs://<name>/<mountpoint>/<root_dir>/inst/tp0/7b[_<hash>]...`` (a path join)
=======  ===================================================================================

The file-name hash is the first 8 bytes of BLAKE2b over the keys joined by ``|`` (the reference uses an
XXH3 preview variant; only the shape matters to clients).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from kvsim.cache.backends.base import parse_uri
from kvsim.cache.types import NfsStorageSpec, ThreeFSStorageSpec, VcnsThreeFSStorageSpec

FileSpec = NfsStorageSpec | ThreeFSStorageSpec | VcnsThreeFSStorageSpec


def file_hash(keys: Sequence[str]) -> str:
    """16 hex digits naming a file that holds several blocks."""
    return hashlib.blake2b("|".join(keys).encode("utf-8"), digest_size=8).hexdigest()


def blocks_per_file(spec: FileSpec) -> int:
    """``key_count_per_file``, with values <= 0 meaning one block per file (as the reference)."""
    return spec.key_count_per_file if spec.key_count_per_file > 0 else 1


def packed_files(keys: Sequence[str], per_file: int) -> list[tuple[str, Sequence[str]]]:
    """Cut ``keys`` into batches of ``per_file``: ``(file name, batch)`` per file, in order."""
    out: list[tuple[str, Sequence[str]]] = []
    for start in range(0, len(keys), per_file):
        batch = keys[start : start + per_file]
        out.append((batch[0] if len(batch) == 1 else f"{batch[0]}_{file_hash(batch)}", batch))
    return out


def file_path(spec: FileSpec, file_name: str) -> str:
    """The path of a file as its URIs carry it (and as it lies on disk for the real backends)."""
    if isinstance(spec, NfsStorageSpec):
        return f"{spec.root_path}{file_name}"  # plain concatenation, as the reference
    return "/" + posixpath.join(spec.mountpoint, spec.root_dir, file_name).lstrip("/")


def block_uris(protocol: str, name: str, path: str, count: int, size: int, packed: bool) -> list[str]:
    """The URIs of the ``count`` blocks of one file (parameters in key order: blkid < size)."""
    head = f"{protocol}://{name}{path}"
    if packed:
        return [f"{head}?blkid={blkid}&size={size}" for blkid in range(count)]
    return [f"{head}?size={size}"] * count


@dataclass(frozen=True, slots=True)
class BlockAddress:
    """One block of a file-like storage, decoded from its URI."""

    path: str
    blkid: int
    size: int


def parse_block_uri(uri: str) -> BlockAddress:
    """Decode a ``file://`` or ``hf3fs://`` block URI.

    Raises:
        ValueError: not a URI, or ``blkid``/``size`` are not integers.
    """
    _, _, path, params = parse_uri(uri)
    try:
        return BlockAddress(path, int(params.get("blkid", "0")), int(params.get("size", "0")))
    except ValueError:
        raise ValueError(f"uri: bad blkid or size in {uri!r}") from None


def unsafe_segment(storage_key: str) -> str | None:
    """The first path segment of a storage key that could escape the storage's root ("" for an empty
    segment), or None when the key is safe to use as a relative path."""
    if storage_key.startswith("/"):
        return ""
    for segment in storage_key.split("/"):
        if segment in ("", ".", ".."):
            return segment
    return None


__all__ = [
    "BlockAddress",
    "FileSpec",
    "block_uris",
    "blocks_per_file",
    "file_hash",
    "file_path",
    "packed_files",
    "parse_block_uri",
    "unsafe_segment",
]
