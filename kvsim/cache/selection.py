"""Choosing storages: which location to read (weights) and which storage to write (quotas, preference).

Reads (the reference's ``SelectLocationPolicy``): a key's candidates are its SERVING locations with a
weight > 0, and one is drawn with probability proportional to its weight from the manager's seeded RNG.
The weights depend on storage availability:

* every registered storage available -> static weights by type (NFS 5; 3FS, Mooncake, TairMemPool 3;
  anything else 1);
* else, looking only at the instance group's candidate storages: all available -> static (0 for the
  unavailable storages outside the candidates); none
  available -> the request fails; each storage type at most once -> weight 1 for types that have an
  available storage, 0 otherwise (without the reference's bug of overwriting the static table);
  otherwise -> weight 1 for locations on an available candidate storage (by name), 0 otherwise.

Writes (the reference's ``DataStorageSelector``, study §2.6), in two pure steps the manager chains:

1. :func:`write_exclusions`: the group must be under its byte quota (``used >= capacity`` refuses the
   write, so a capacity of 0 refuses every write); storage types whose per-type quota is used up
   (``capacity <= usage``) are excluded, with VCNS-3FS counted as 3FS.
2. :func:`select_write_storage`: of the group's *available* candidates, in their listed order and not
   excluded, the preference strategy picks ALWAYS_X (the first of type X, or fail), PREFER_X (the first
   of type X, else the first candidate) or, for UNSPECIFIED, the first candidate. There is no
   NFS-specific strategy: NFS is reached through a PREFER_X fallback, as in the reference.

Nothing here balances load or probes free space: a storage that is full fails its ``create`` and the
write fails (the reference behaves the same).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kvsim.cache.errors import internal
from kvsim.cache.quota import quota_type
from kvsim.cache.store.base import StoredLocation
from kvsim.cache.types import CachePreferStrategy, InstanceGroup, StorageConfig, StorageType

STATIC_WEIGHTS: Mapping[StorageType, int] = {
    StorageType.ST_UNSPECIFIED: 1,
    StorageType.ST_3FS: 3,
    StorageType.ST_MOONCAKE: 3,
    StorageType.ST_TAIRMEMPOOL: 3,
    StorageType.ST_NFS: 5,
    StorageType.ST_VCNS_3FS: 1,
}

_PREFERRED_TYPE: Mapping[CachePreferStrategy, tuple[StorageType, bool]] = {
    CachePreferStrategy.CPS_ALWAYS_3FS: (StorageType.ST_3FS, True),
    CachePreferStrategy.CPS_PREFER_3FS: (StorageType.ST_3FS, False),
    CachePreferStrategy.CPS_ALWAYS_MOONCAKE: (StorageType.ST_MOONCAKE, True),
    CachePreferStrategy.CPS_PREFER_MOONCAKE: (StorageType.ST_MOONCAKE, False),
    CachePreferStrategy.CPS_ALWAYS_TAIR_MEMPOOL: (StorageType.ST_TAIRMEMPOOL, True),
    CachePreferStrategy.CPS_PREFER_TAIR_MEMPOOL: (StorageType.ST_TAIRMEMPOOL, False),
    CachePreferStrategy.CPS_ALWAYS_VCNS_3FS: (StorageType.ST_VCNS_3FS, True),
    CachePreferStrategy.CPS_PREFER_VCNS_3FS: (StorageType.ST_VCNS_3FS, False),
}


@dataclass(frozen=True, slots=True)
class ReadWeights:
    """Read weight of a stored location: by storage type, or (``by_name``) by storage name."""

    by_type: Mapping[StorageType, int] | None = None
    by_name: Mapping[str, int] | None = None

    def weight(self, loc: StoredLocation) -> int:
        """The weight of ``loc`` (0 = not selectable)."""
        if self.by_name is not None:
            return self.by_name.get(loc.storage_name, 0)
        assert self.by_type is not None
        return self.by_type.get(loc.location.type, 1)


STATIC = ReadWeights(by_type=STATIC_WEIGHTS)


def read_weights(
    storages: Mapping[str, StorageConfig],
    available: Callable[[str], bool],
    group: InstanceGroup | None,
) -> ReadWeights:
    """Pick the read weights for an instance of ``group`` (see the module docstring).

    Raises:
        CacheError: INTERNAL_ERROR when none of the group's storages is available.
    """
    if all(available(name) for name in storages):
        return STATIC
    if group is None:
        raise internal("instance group of the instance does not exist")
    cands = [storages[n] for n in dict.fromkeys(group.storage_candidates) if n in storages]
    ok = [c for c in cands if available(c.global_unique_name)]
    if cands and len(ok) == len(cands):
        # Static weights, but never for a location on an unavailable storage outside the candidates
        # (kvsim fix: the reference would hand it out).
        return ReadWeights(
            by_name={
                name: STATIC_WEIGHTS.get(config.type, 1)
                for name, config in storages.items()
                if available(name)
            }
        )
    if not ok:
        raise internal(f"all storages of instance group {group.name!r} are unavailable")
    types = [c.type for c in cands]
    if len(set(types)) == len(types):
        live = {c.type for c in ok}
        return ReadWeights(by_type={t: (1 if t in live else 0) for t in StorageType})
    return ReadWeights(by_name={c.global_unique_name: 1 for c in ok})


class UniformStream:
    """Uniform [0, 1) draws from a seeded generator, fetched in blocks (one numpy call per block)."""

    def __init__(self, rng: np.random.Generator, block: int = 256) -> None:
        self._rng = rng
        self._block = block
        self._buf: list[float] = []
        self._pos = 0

    def next(self) -> float:
        """The next draw."""
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(self._block).tolist()
            self._pos = 0
        value = self._buf[self._pos]
        self._pos += 1
        return value


def choose_serving(
    locations: Sequence[StoredLocation],
    weights: ReadWeights,
    uniform: UniformStream,
    serving: int,
) -> StoredLocation | None:
    """Draw one selectable location (status ``serving``, weight > 0) with probability ∝ weight.

    A single candidate is returned without a draw.
    """
    if len(locations) == 1:
        loc = locations[0]
        return loc if loc.status == serving and weights.weight(loc) > 0 else None
    cands: list[tuple[StoredLocation, int]] = []
    total = 0
    for loc in locations:
        if loc.status == serving:
            w = weights.weight(loc)
            if w > 0:
                cands.append((loc, w))
                total += w
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0][0]
    point = uniform.next() * total
    for loc, w in cands:
        point -= w
        if point < 0:
            return loc
    return cands[-1][0]


def write_exclusions(
    group: InstanceGroup,
    quotas: Sequence[tuple[StorageType, int]],
    used_bytes: int,
    type_usage: Mapping[StorageType, int],
) -> set[StorageType]:
    """Check the group byte quota and return the quota types whose per-type quota is used up.

    Args:
        group: the instance group (its ``quota.capacity`` is read).
        quotas: ``(quota type, capacity)`` of the group's per-type quotas (VCNS already folded into 3FS;
            UNSPECIFIED entries left out).
        used_bytes: the group's usage estimate, ``sum key_count * bytes_per_key``.
        type_usage: location bytes per quota type.

    Raises:
        CacheError: INTERNAL_ERROR when the group is at or over its byte quota.
    """
    capacity = group.quota.capacity
    if capacity < 0 or used_bytes >= capacity:
        raise internal(
            f"instance group {group.name!r} is over its quota: {used_bytes} of {capacity} bytes used"
        )
    return {t for t, cap in quotas if cap <= type_usage.get(t, 0)}


def select_write_storage(
    group: InstanceGroup,
    candidates: Sequence[tuple[str, StorageType]],
    excluded_types: set[StorageType],
) -> str:
    """The storage to write to, from the group's available candidates ``(name, type)`` in order.

    Raises:
        CacheError: INTERNAL_ERROR when no candidate fits the strategy.
    """
    usable = [(n, t) for n, t in candidates if quota_type(t) not in excluded_types]
    if not usable:
        raise internal(f"instance group {group.name!r}: no available storage within its quotas")
    assert group.cache_config is not None
    strategy = group.cache_config.data_storage_strategy
    preferred = _PREFERRED_TYPE.get(strategy)
    if preferred is None:
        return usable[0][0]
    want, always = preferred
    for name, t in usable:
        if t == want:
            return name
    if always:
        raise internal(f"instance group {group.name!r}: {strategy.name} but no available {want.name} storage")
    return usable[0][0]


__all__ = [
    "STATIC",
    "STATIC_WEIGHTS",
    "ReadWeights",
    "UniformStream",
    "choose_serving",
    "quota_type",
    "read_weights",
    "select_write_storage",
    "write_exclusions",
]
