"""Routing of block URIs: which storage a URI names, and where its bytes live on this machine.

A KVCM server hands out one URI per (block, location spec). The URI's host is the storage's
``global_unique_name``; the client looks that name up in the ``storage_configs`` JSON that RegisterInstance
returned (the reference's storage-config model: ``type``, ``is_available``, ``global_unique_name``,
``storage_spec``) and moves the bytes with the matching data plane:

* ``file://<name><root_path><inst>/<spec>/<hex>[_<hash>]?[blkid=<i>&]size=<n>``: the file at the path,
  block at byte ``blkid * n``;
* ``hf3fs://<name>/<mountpoint>/<root_dir>/<...>?[blkid=<i>&]size=<n>``: the same on the 3FS mount;
* ``mooncake://<name>/?key=<inst>/<spec>/<hex>&size=<n>``: one Mooncake Store object.

The grammar is the reference's ``StandardUri``: the host ends at the first ``/`` or ``?``, the path runs to
``?``, parameters split on ``&`` and the first ``=``, nothing is percent-decoded.

Paths are checked before use: a URI whose path is not under its storage's root (or has empty, ``.`` or
``..`` segments after it) is refused, so a wrong or hostile server cannot make a client write elsewhere.
A storage whose root is mounted at another place on this machine is remapped with ``mounts``
(storage name -> local directory that replaces the configured root).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvsim.cache import parse_uri
from kvsim.connectors.errors import TransferError

#: URI scheme -> the storage types (``storage_configs`` ``type`` strings) it may route to.
SCHEME_TYPES: dict[str, tuple[str, ...]] = {
    "file": ("file",),
    "hf3fs": ("hf3fs", "vcns_hf3fs"),
    "mooncake": ("mooncake",),
}


@dataclass(frozen=True, slots=True)
class StorageRoute:
    """One storage of the instance's group, as ``storage_configs`` describes it.

    Attributes:
        name: ``global_unique_name``, the host part of its URIs.
        type: ``file``, ``hf3fs``, ``vcns_hf3fs``, ``mooncake``, ``pace`` or ``unknown``.
        spec: the ``storage_spec`` object as given.
        is_available: the server's enable flag (informational: data already written stays readable).
        root: for file-like storages, the path prefix every URI path must start with ("" otherwise).
        local_root: where ``root`` is on this machine (``root`` unless remapped with ``mounts``).
        key_count_per_file: blocks per file for file-like storages (values <= 0 mean 1).
    """

    name: str
    type: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    is_available: bool = True
    root: str = ""
    local_root: str = ""
    key_count_per_file: int = 1

    @property
    def file_like(self) -> bool:
        """True for storages whose blocks are files (``file``, ``hf3fs``, ``vcns_hf3fs``)."""
        return self.type in ("file", "hf3fs", "vcns_hf3fs")


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block URI, decoded and routed.

    Attributes:
        uri: the URI as given.
        scheme: ``file``, ``hf3fs`` or ``mooncake``.
        route: the storage it names.
        path: the local file path (file-like storages; "" for Mooncake).
        blkid: the block's index in its file (0 when the URI has no ``blkid``).
        packed: True when the file holds several blocks (``blkid`` present or ``key_count_per_file > 1``).
        size: bytes of the block (the URI's ``size``).
        key: the Mooncake object key ("" for files).
    """

    uri: str
    scheme: str
    route: StorageRoute
    path: str
    blkid: int
    packed: bool
    size: int
    key: str = ""

    @property
    def offset(self) -> int:
        """Byte offset of the block in its file: ``blkid * size``."""
        return self.blkid * self.size


def split_uri(uri: str) -> tuple[str, str, str, dict[str, str]]:
    """Split a URI into ``(scheme, host, path, params)`` with the reference's grammar (the cache's own
    parser, so the service and its clients read URIs identically).

    Raises:
        TransferError: not a string, no ``://`` or an empty scheme.
    """
    if not isinstance(uri, str):
        raise TransferError(f"uri: expected a string, got {type(uri).__name__}")
    try:
        return parse_uri(uri)
    except ValueError:
        raise TransferError(f"uri {uri!r}: not a URI (expected <scheme>://<storage>/...)") from None


def _int_param(uri: str, params: Mapping[str, str], name: str, default: str | None) -> int:
    raw = params.get(name, default)
    if raw is None:
        raise TransferError(f"uri {uri!r}: the {name} parameter is missing")
    try:
        value = int(raw)
    except ValueError:
        raise TransferError(f"uri {uri!r}: {name}={raw!r} is not an integer") from None
    if value < 0:
        raise TransferError(f"uri {uri!r}: {name}={value} is negative")
    return value


def _unsafe(relative: str) -> bool:
    return relative == "" or any(seg in ("", ".", "..") for seg in relative.split("/"))


def _file_root(kind: str, spec: Mapping[str, Any]) -> str:
    if kind == "file":
        return str(spec.get("root_path", ""))
    mount = str(spec.get("mountpoint", ""))
    root_dir = str(spec.get("root_dir", ""))
    # The server joins mountpoint, root_dir and the file name and makes the result absolute.
    joined = "/" + posixpath.join(mount, root_dir, "").lstrip("/")
    return joined


def parse_storage_configs(
    storage_configs: str | Iterable[Mapping[str, Any]], mounts: Mapping[str, str] | None = None
) -> dict[str, StorageRoute]:
    """The routes of a ``storage_configs`` JSON array (as RegisterInstance returns it), by storage name.

    Args:
        storage_configs: the JSON text, or the already decoded list of objects.
        mounts: storage name -> local directory standing in for the storage's configured root.

    Raises:
        TransferError: the JSON is malformed, an entry has no name, or ``mounts`` names an unknown storage.
    """
    if isinstance(storage_configs, str):
        try:
            entries = json.loads(storage_configs) if storage_configs.strip() else []
        except json.JSONDecodeError as exc:
            raise TransferError(f"storage_configs: not valid JSON ({exc})") from None
    else:
        entries = list(storage_configs)
    if not isinstance(entries, list):
        raise TransferError("storage_configs: expected a JSON array of storage objects")
    mounts = dict(mounts or {})
    routes: dict[str, StorageRoute] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("global_unique_name"):
            raise TransferError(f"storage_configs[{i}]: expected an object with a global_unique_name")
        name = str(entry["global_unique_name"])
        kind = str(entry.get("type", "unknown"))
        spec = entry.get("storage_spec") or {}
        if not isinstance(spec, Mapping):
            raise TransferError(f"storage_configs[{i}] ({name}): storage_spec must be an object")
        root = local_root = ""
        per_file = 1
        if kind in ("file", "hf3fs", "vcns_hf3fs"):
            root = _file_root(kind, spec)
            local_root = root
            if name in mounts:
                local = mounts.pop(name)
                # Keep the root's trailing-slash convention so plain concatenation still works.
                local_root = local.rstrip("/") + "/" if root.endswith("/") else local.rstrip("/")
            try:
                per_file = int(spec.get("key_count_per_file", 1))
            except (TypeError, ValueError):
                raise TransferError(
                    f"storage_configs[{i}] ({name}): key_count_per_file is not an integer"
                ) from None
        routes[name] = StorageRoute(
            name=name,
            type=kind,
            spec=dict(spec),
            is_available=bool(entry.get("is_available", True)),
            root=root,
            local_root=local_root,
            key_count_per_file=per_file if per_file > 0 else 1,
        )
    if mounts:
        raise TransferError(f"mounts: unknown storage(s) {sorted(mounts)} (known: {sorted(routes)})")
    return routes


def resolve_uri(uri: str, routes: Mapping[str, StorageRoute]) -> BlockRef:
    """Decode ``uri`` and route it to one of ``routes``.

    Raises:
        TransferError: unknown scheme, unknown storage name, a scheme that does not match the storage's type,
            a path outside the storage's root, or a missing or bad ``size``/``blkid``/``key``.
    """
    scheme, host, path, params = split_uri(uri)
    types = SCHEME_TYPES.get(scheme)
    if types is None:
        known = ", ".join(sorted(SCHEME_TYPES))
        raise TransferError(f"uri {uri!r}: unknown URI scheme {scheme!r} (known: {known})")
    route = routes.get(host)
    if route is None:
        known = ", ".join(sorted(routes)) or "none"
        raise TransferError(
            f"uri {uri!r}: storage {host!r} is not in the instance's storage_configs (known: {known})"
        )
    if route.type not in types:
        raise TransferError(
            f"uri {uri!r}: scheme {scheme!r} does not fit storage {host!r} of type {route.type!r}"
        )
    size = _int_param(uri, params, "size", None)
    if size <= 0:
        raise TransferError(f"uri {uri!r}: size must be > 0")
    if scheme == "mooncake":
        key = params.get("key", "")
        if not key:
            raise TransferError(f"uri {uri!r}: the key parameter is missing")
        return BlockRef(uri, scheme, route, "", 0, False, size, key)
    if not route.root or not path.startswith(route.root) or _unsafe(path[len(route.root) :].lstrip("/")):
        raise TransferError(
            f"uri {uri!r}: path {path!r} is not inside storage {host!r}'s root {route.root!r}"
        )
    local = route.local_root + path[len(route.root) :]
    blkid = _int_param(uri, params, "blkid", "0")
    packed = "blkid" in params or route.key_count_per_file > 1
    return BlockRef(uri, scheme, route, local, blkid, packed, size)


__all__ = ["SCHEME_TYPES", "BlockRef", "StorageRoute", "parse_storage_configs", "resolve_uri", "split_uri"]
