"""Capacity of an instance group: quota checks, usage accounting and the reclaimer's water level.

A group has three kinds of limit (reference study §4.1), all read from the group at every use so an
``update_instance_group`` takes effect at once:

* ``quota.capacity``: bytes of the whole group, with usage estimated as the reference does:
  ``sum over instances of key_count * (sum of the instance's spec sizes)``;
* ``quota.quota_config``: bytes per storage type, from the per-type counters of the meta index
  (VCNS-3FS counts as 3FS);
* ``meta_indexer_config.max_key_count``: keys per instance (the group's budget is their sum).

Writes are refused at the limits (:mod:`kvsim.cache.selection`). The reclaimer starts earlier, at the
*water level* ``reclaim_strategy.trigger_strategy.used_percentage`` (a fraction: 0.8 = 80 %), with the
reference's trigger rules (:func:`water_level`), and frees enough to get back under it. Deletions
already queued count as freed ("credit"), so a delayed deletion is not submitted twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvsim.cache.errors import invalid
from kvsim.cache.types import InstanceGroup, ReclaimPolicy, StorageType

#: The reference compares ``value + EPSILON > threshold``.
EPSILON = 1e-9

_QUOTA_TYPES = frozenset(StorageType) - {StorageType.ST_UNSPECIFIED}


def quota_type(t: StorageType) -> StorageType:
    """The type a location counts as for per-type quotas (VCNS-3FS is folded into 3FS)."""
    return StorageType.ST_3FS if t == StorageType.ST_VCNS_3FS else t


def check_group_quotas(group: InstanceGroup) -> None:
    """Refuse negative or malformed quotas and reclaim settings (kvsim fix: the reference accepts them).

    Raises:
        CacheError: INVALID_ARGUMENT naming the field.
    """
    if group.quota.capacity < 0:
        raise invalid("instance_group.quota.capacity", f"must be >= 0, got {group.quota.capacity}")
    seen: set[StorageType] = set()
    for i, qc in enumerate(group.quota.quota_config):
        field_name = f"instance_group.quota.quota_config[{i}]"
        if qc.storage_type not in _QUOTA_TYPES:
            raise invalid(f"{field_name}.storage_type", f"must be a storage type, got {qc.storage_type!r}")
        if qc.storage_type in seen:
            raise invalid(
                f"{field_name}.storage_type", f"duplicate quota for {StorageType(qc.storage_type).name}"
            )
        seen.add(qc.storage_type)
        if qc.capacity < 0:
            raise invalid(f"{field_name}.capacity", f"must be >= 0, got {qc.capacity}")
    cc = group.cache_config
    if cc is None:
        return
    rs = cc.reclaim_strategy
    prefix = "instance_group.cache_config.reclaim_strategy"
    try:
        ReclaimPolicy(rs.reclaim_policy)
    except ValueError:
        raise invalid(f"{prefix}.reclaim_policy", f"unknown policy {rs.reclaim_policy!r}") from None
    pct = rs.trigger_strategy.used_percentage
    if isinstance(pct, bool) or not isinstance(pct, int | float) or not math.isfinite(pct) or pct < 0:
        raise invalid(
            f"{prefix}.trigger_strategy.used_percentage", f"must be a finite number >= 0, got {pct!r}"
        )
    for name in ("delay_before_delete_ms", "ttl_seconds"):
        value = getattr(rs, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(f"{prefix}.{name}", f"must be an integer >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class InstanceUsage:
    """One instance's share of a group's usage.

    Attributes:
        instance_id: the instance.
        key_count: keys in its meta index.
        bytes_per_key: sum of its spec sizes (the reference's group-usage unit).
        max_key_count: its key budget.
        type_bytes: bytes of its locations per (quota) storage type.
    """

    instance_id: str
    key_count: int
    bytes_per_key: int
    max_key_count: int
    type_bytes: Mapping[StorageType, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GroupUsage:
    """A group's usage against its quotas.

    Attributes:
        used_keys: keys over every instance.
        used_bytes: ``sum key_count * bytes_per_key`` (the reference's estimate).
        max_keys: sum of the instances' ``max_key_count``.
        type_bytes: location bytes per quota type (VCNS folded into 3FS).
        instances: the per-instance figures, by instance id order.
    """

    used_keys: int
    used_bytes: int
    max_keys: int
    type_bytes: Mapping[StorageType, int]
    instances: tuple[InstanceUsage, ...]


def group_usage(instances: Sequence[InstanceUsage]) -> GroupUsage:
    """Sum the instances' figures (never negative: a counter that drifted below 0 counts as 0)."""
    used_keys = used_bytes = max_keys = 0
    types: dict[StorageType, int] = {}
    for inst in instances:
        keys = max(0, inst.key_count)
        used_keys += keys
        used_bytes += keys * inst.bytes_per_key
        max_keys += inst.max_key_count
        for t, b in inst.type_bytes.items():
            qt = quota_type(t)
            types[qt] = types.get(qt, 0) + max(0, b)
    return GroupUsage(used_keys, used_bytes, max_keys, types, tuple(instances))


@dataclass(frozen=True, slots=True)
class Credit:
    """What queued deletions will free: keys, group bytes and bytes per quota type."""

    keys: int = 0
    bytes: int = 0
    type_bytes: Mapping[StorageType, int] = field(default_factory=dict)


NO_CREDIT = Credit()


@dataclass(frozen=True, slots=True)
class WaterLevel:
    """How far a group is over its water level, after counting queued deletions as freed.

    Attributes:
        triggered: something is over (the reclaimer must act).
        free_keys: keys to remove to get under the key level.
        free_bytes: group bytes to free to get under the byte level.
        free_type_bytes: bytes to free per quota type over its level.
        free_storage_bytes: bytes to free per storage (by name) over its storage water level.
    """

    triggered: bool
    free_keys: int = 0
    free_bytes: int = 0
    free_type_bytes: Mapping[StorageType, int] = field(default_factory=dict)
    free_storage_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def over_types(self) -> frozenset[StorageType]:
        """Quota types over their level: the reclaimer then deletes only locations of these types."""
        return frozenset(t for t, b in self.free_type_bytes.items() if b > 0)

    @property
    def over_storages(self) -> frozenset[str]:
        """Storages over their own water level (:mod:`kvsim.cache.health`): their locations go first."""
        return frozenset(n for n, b in self.free_storage_bytes.items() if b > 0)


NOT_TRIGGERED = WaterLevel(False)


def _excess(used: int, capacity: int, threshold: float) -> int:
    """Units to free so that ``used / capacity`` is no longer over ``threshold`` by the reference's test
    (``used / capacity + EPSILON > threshold``); a capacity <= 0 is always exceeded (free everything)."""
    if used <= 0:
        return 0
    if capacity <= 0:
        return used
    if used / capacity + EPSILON <= threshold:
        return 0
    # The largest usage that passes the test; the float product is nudged down so that it does.
    keep = max(0, math.floor((threshold - EPSILON) * capacity))
    while keep > 0 and keep / capacity + EPSILON > threshold:
        keep -= 1
    return used - keep


def water_level(group: InstanceGroup, usage: GroupUsage, credit: Credit = NO_CREDIT) -> WaterLevel:
    """Apply the reference's trigger (study §4.2) with ``t = used_percentage``:

    * each per-type quota (VCNS entries skipped, as the reference): ``bytes / capacity > t``;
    * the group: nothing when it holds no keys or no bytes; else ``bytes / quota.capacity > t``, and
      ``keys / sum(max_key_count) > t``;

    and say how much must go to get back under every exceeded level. Usage already covered by queued
    deletions (``credit``) does not count.
    """
    cc = group.cache_config
    if cc is None:
        return NOT_TRIGGERED
    t = float(cc.reclaim_strategy.trigger_strategy.used_percentage)
    types: dict[StorageType, int] = {}
    for qc in group.quota.quota_config:
        if qc.storage_type == StorageType.ST_VCNS_3FS:
            continue
        qt = quota_type(qc.storage_type)
        used = usage.type_bytes.get(qt, 0) - credit.type_bytes.get(qt, 0)
        need = _excess(used, qc.capacity, t)
        if need > 0:
            types[qt] = max(types.get(qt, 0), need)
    free_bytes = free_keys = 0
    if usage.used_keys > 0 and usage.used_bytes > 0:
        free_bytes = _excess(usage.used_bytes - credit.bytes, group.quota.capacity, t)
        free_keys = _excess(usage.used_keys - credit.keys, usage.max_keys, t)
    triggered = bool(types) or free_bytes > 0 or free_keys > 0
    if not triggered:
        return NOT_TRIGGERED
    return WaterLevel(True, free_keys, free_bytes, types)


__all__ = [
    "EPSILON",
    "NOT_TRIGGERED",
    "NO_CREDIT",
    "Credit",
    "GroupUsage",
    "InstanceUsage",
    "WaterLevel",
    "check_group_quotas",
    "group_usage",
    "quota_type",
    "water_level",
]
