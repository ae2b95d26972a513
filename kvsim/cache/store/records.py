"""Text encoding of meta records for the stores that keep them outside this process (SQLite, Redis).

A key's locations are one compact JSON array, one entry per location::

    [["<location id>", <status>, <storage type>, <spec_size>, "<storage name>", <size_bytes>,
      [["<spec name>", "<uri>"], ...]], ...]

Enums are written as their wire numbers (``CLS_SERVING`` = 3, ``ST_NFS`` = 4), as the reference does in
its ``__uri__`` field. The time stamps and the hit count are kept beside the array (SQLite columns; a
space-separated prefix in Redis), so merging access statistics never rewrites the locations.

Decoding builds several objects per location and costs more than the store read itself, so
:class:`LocationCodec` memoises decoded arrays by their text. The memo is content-addressed: a record
that changed has different text, so it can never return stale data, even when another process writes
the store. It is bounded (oldest entry dropped first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kvsim.cache.store.base import StoredLocation, StoreError
from kvsim.cache.types import CacheLocation, LocationSpec, LocationStatus, StorageType

#: Decoded location arrays kept per store by default (about 0.6 KB each for a one-spec location).
DEFAULT_DECODE_CACHE = 65_536

_STATUS = {int(s): s for s in LocationStatus}
_TYPE = {int(t): t for t in StorageType}
_COMPACT = (",", ":")


def encode_locations(locations: Sequence[StoredLocation]) -> str:
    """The JSON array of ``locations`` (see the module docstring)."""
    return json.dumps(
        [
            [
                loc.location_id,
                int(loc.status),
                int(loc.location.type),
                loc.location.spec_size,
                loc.storage_name,
                loc.size_bytes,
                [[spec.name, spec.uri] for spec in loc.location.location_specs],
            ]
            for loc in locations
        ],
        separators=_COMPACT,
        ensure_ascii=False,
    )


def decode_locations(text: str) -> tuple[StoredLocation, ...]:
    """Parse an array written by :func:`encode_locations`.

    Raises:
        StoreError: the text is not such an array (a corrupt or foreign record).
    """
    try:
        raw = json.loads(text)
        out = []
        for lid, status, stype, spec_size, storage, size, specs in raw:
            if not (isinstance(lid, str) and isinstance(storage, str) and type(size) is int):
                raise ValueError("bad field types")
            location = CacheLocation(
                _TYPE[stype], spec_size, tuple(LocationSpec(name, uri) for name, uri in specs)
            )
            out.append(StoredLocation(lid, _STATUS[status], location, storage, size))
    except (ValueError, TypeError, KeyError) as exc:
        raise StoreError(f"corrupt meta record {text[:80]!r}: {exc}") from None
    if not out:
        raise StoreError("corrupt meta record: no locations")
    return tuple(out)


class LocationCodec:
    """Encode and decode location arrays, memoising decoded arrays by their text.

    Args:
        cache_size: decoded arrays kept (0 disables the memo).
    """

    def __init__(self, cache_size: int = DEFAULT_DECODE_CACHE) -> None:
        if cache_size < 0:
            raise ValueError(f"decode_cache: must be >= 0, got {cache_size}")
        self._size = cache_size
        self._memo: dict[str, tuple[StoredLocation, ...]] = {}

    def decode(self, text: str) -> tuple[StoredLocation, ...]:
        """The locations of ``text`` (from the memo when it was seen recently)."""
        locations = self._memo.get(text)
        if locations is None:
            locations = decode_locations(text)
            self._remember(text, locations)
        return locations

    def encode(self, locations: tuple[StoredLocation, ...]) -> str:
        """The text of ``locations``; remembered, since a record just written is usually read next."""
        text = encode_locations(locations)
        self._remember(text, locations)
        return text

    def _remember(self, text: str, locations: tuple[StoredLocation, ...]) -> None:
        if not self._size:
            return
        memo = self._memo
        if len(memo) >= self._size:
            # Drop the oldest entry (dicts keep insertion order): cheap, and a hot record comes back in.
            del memo[next(iter(memo))]
        memo[text] = locations

    def clear(self) -> None:
        """Forget every memoised array."""
        self._memo.clear()
