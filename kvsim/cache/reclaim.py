"""The cache reclaimer: brings instance groups back under their water level by choosing victims.

The reference's ``CacheReclaimer`` (study §4.2) is a thread that, every 100 ms, checks each group's
trigger and, when it fires, samples keys of every instance, takes the least recently *written* ones and
submits their SERVING locations for deletion after ``delay_before_delete_ms``. kvsim keeps that shape,
driven from the manager's ``poll`` (at most once per :attr:`ReclaimerConfig.interval_s` of clock time),
and fixes what the reference leaves out:

* **How much.** :func:`kvsim.cache.quota.water_level` says how many keys and bytes must go to get back
  under every exceeded level, counting deletions already queued as freed, so a group is brought under
  its level instead of losing a fixed batch per round, and a delayed deletion is not submitted twice.
* **Policies.** ``POLICY_LRU`` orders by last access including reads (kvsim fix: the reference uses the
  last write), ``POLICY_LFU`` by read hits (then last access), ``POLICY_TTL`` reclaims every sampled
  key unused for ``ttl_seconds`` even below the water level, then falls back to LRU if the group is
  still over it (``ttl_seconds = 0``: plain LRU). ``POLICY_UNSPECIFIED`` is LRU.
* **Group-wide order.** Samples of all instances of a group are merged before ordering, so a cold
  instance loses its blocks before a hot one (``batch_size`` victims per instance and round at most).

Never reclaimed: WRITING locations (a client is writing them) and DELETING ones (already going). When a
per-type quota is over its level only locations of the over types are taken, as the reference does;
when a storage is over its own water level (probed, :mod:`kvsim.cache.health`) only locations on it are
taken, unless the group itself is also over its byte or key level.

Sampling uses the reclaimer's own generator (:meth:`MetaStore.meta_sample`), so runs are reproducible
and reclaiming does not shift the ids the manager draws from its main generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kvsim.cache.quota import GroupUsage, WaterLevel, quota_type
from kvsim.cache.store.base import KeyRecord
from kvsim.cache.types import InstanceGroup, LocationStatus, ReclaimPolicy, StorageType

_SERVING = LocationStatus.CLS_SERVING
_DELETING = LocationStatus.CLS_DELETING

#: Reference defaults: keys sampled per instance per round, victims per instance per round, round period.
DEFAULT_SAMPLING_SIZE = 1000
DEFAULT_BATCH_SIZE = 100
DEFAULT_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class ReclaimerConfig:
    """Tuning of the reclaimer (the reference has no config surface for these; its defaults are kept).

    Attributes:
        sampling_size: keys sampled per instance per round.
        batch_size: victims taken from one instance per round, at most.
        interval_s: clock seconds between rounds (a ``poll`` sooner than this does not reclaim).
        enabled: False turns the reclaimer off (the water level is then never enforced).
    """

    sampling_size: int = DEFAULT_SAMPLING_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    interval_s: float = DEFAULT_INTERVAL_S
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.sampling_size < 1:
            raise ValueError(f"sampling_size: must be >= 1, got {self.sampling_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not math.isfinite(self.interval_s) or self.interval_s < 0:
            raise ValueError(f"interval_s: must be a finite number >= 0, got {self.interval_s}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sampled key with what the policies need.

    Attributes:
        instance_id: its instance.
        key: the block key.
        record: its meta record as read.
        last_access: last read hit or write (buffered reads included).
        access_count: read hits (buffered reads included).
        bytes_per_key: the instance's group-usage unit (sum of its spec sizes).
    """

    instance_id: str
    key: int
    record: KeyRecord
    last_access: float
    access_count: int
    bytes_per_key: int


@dataclass(frozen=True, slots=True)
class Victim:
    """Locations of one key chosen for deletion.

    Attributes:
        instance_id: the instance.
        key: the block key.
        location_ids: the SERVING locations to delete.
        frees_key: True when the key has no other live location (it disappears with them).
        expired: chosen because its TTL ran out.
    """

    instance_id: str
    key: int
    location_ids: tuple[str, ...]
    frees_key: bool
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """The victims of one group in one round.

    Attributes:
        victims: the chosen locations, per key.
        covered: every excess of the water level is covered by them (False: the group stays over its
            level, e.g. its blocks are still WRITING or the per-instance batch was used up).
        storage_bytes: bytes of the chosen locations per storage name.
    """

    victims: list[Victim]
    covered: bool
    storage_bytes: dict[str, int] = field(default_factory=dict)


Sampler = Callable[[str, int, np.random.Generator], list[Candidate]]


def policy_of(group: InstanceGroup) -> tuple[ReclaimPolicy, float]:
    """The group's policy (UNSPECIFIED -> LRU; TTL with ``ttl_seconds`` 0 -> LRU) and TTL seconds."""
    cc = group.cache_config
    if cc is None:
        return ReclaimPolicy.POLICY_LRU, 0.0
    rs = cc.reclaim_strategy
    policy = ReclaimPolicy(rs.reclaim_policy)
    if policy == ReclaimPolicy.POLICY_TTL and rs.ttl_seconds > 0:
        return policy, float(rs.ttl_seconds)
    if policy == ReclaimPolicy.POLICY_LFU:
        return policy, 0.0
    return ReclaimPolicy.POLICY_LRU, 0.0


def order_candidates(
    candidates: Sequence[Candidate], policy: ReclaimPolicy, now: float, ttl_s: float = 0.0
) -> list[Candidate]:
    """Victim order: LRU by last access; LFU by hits then last access; TTL puts expired keys first
    (oldest first), then the rest by LRU. Ties keep the sample order (stable sort)."""
    if policy == ReclaimPolicy.POLICY_LFU:
        return sorted(candidates, key=lambda c: (c.access_count, c.last_access))
    if policy == ReclaimPolicy.POLICY_TTL and ttl_s > 0:
        return sorted(candidates, key=lambda c: (now - c.last_access < ttl_s, c.last_access))
    return sorted(candidates, key=lambda c: c.last_access)


def choose_victims(
    ordered: Sequence[Candidate],
    level: WaterLevel,
    *,
    policy: ReclaimPolicy = ReclaimPolicy.POLICY_LRU,
    now: float = 0.0,
    ttl_s: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Choice:
    """Walk ``ordered`` candidates and take victims until every excess of ``level`` is covered.

    Only SERVING locations are taken (of the over types when a per-type level is exceeded). With TTL
    every expired candidate is taken whole, whatever the level. At most ``batch_size`` victims per
    instance.
    """
    need_keys = level.free_keys
    need_bytes = level.free_bytes
    need_types: dict[StorageType, int] = dict(level.free_type_bytes)
    need_storages: dict[str, int] = dict(level.free_storage_bytes)
    restrict = level.over_types
    # Any location will do unless a type is over its quota, or only storages are over their levels.
    unrestricted = not restrict and (not level.over_storages or need_keys > 0 or need_bytes > 0)
    freed: dict[str, int] = {}
    ttl = ttl_s if policy == ReclaimPolicy.POLICY_TTL else 0.0
    taken: dict[str, int] = {}
    out: list[Victim] = []
    for cand in ordered:
        expired = ttl > 0 and now - cand.last_access >= ttl
        short = (
            need_keys > 0
            or need_bytes > 0
            or any(v > 0 for v in need_types.values())
            or any(v > 0 for v in need_storages.values())
        )
        if not expired and not short:
            break  # ordered: with TTL every expired candidate comes first
        if taken.get(cand.instance_id, 0) >= batch_size:
            continue
        chosen = [
            loc
            for loc in cand.record.locations
            if loc.status == _SERVING
            and (
                expired
                or unrestricted
                or quota_type(loc.location.type) in restrict
                or need_storages.get(loc.storage_name, 0) > 0
            )
        ]
        if not chosen:
            continue
        ids = {loc.location_id for loc in chosen}
        frees_key = all(loc.status == _DELETING or loc.location_id in ids for loc in cand.record.locations)
        out.append(
            Victim(cand.instance_id, cand.key, tuple(loc.location_id for loc in chosen), frees_key, expired)
        )
        taken[cand.instance_id] = taken.get(cand.instance_id, 0) + 1
        for loc in chosen:
            qt = quota_type(loc.location.type)
            if qt in need_types:
                need_types[qt] -= loc.size_bytes
            if loc.storage_name in need_storages:
                need_storages[loc.storage_name] -= loc.size_bytes
            freed[loc.storage_name] = freed.get(loc.storage_name, 0) + loc.size_bytes
        if frees_key:
            need_keys -= 1
            need_bytes -= cand.bytes_per_key
    covered = (
        need_keys <= 0
        and need_bytes <= 0
        and all(v <= 0 for v in need_types.values())
        and all(v <= 0 for v in need_storages.values())
    )
    return Choice(out, covered, freed)


class Reclaimer:
    """Chooses victims for a group each round (the manager marks and queues them).

    Args:
        config: sampling and batching.
        rng: the generator sampling draws from (a child of the manager's).
    """

    def __init__(self, config: ReclaimerConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        self._next_round = -math.inf

    def due(self, now: float) -> bool:
        """Whether a round may run at ``now`` (and, if so, schedule the next one)."""
        if not self.config.enabled or now < self._next_round:
            return False
        self._next_round = now + self.config.interval_s
        return True

    @property
    def next_round(self) -> float:
        """The earliest time of the next round."""
        return self._next_round

    def plan(
        self,
        group: InstanceGroup,
        usage: GroupUsage,
        level: WaterLevel,
        sample: Sampler,
        now: float,
    ) -> Choice:
        """Sample every instance of the group and choose victims (nothing when the group is under its
        level and its policy has no TTL)."""
        policy, ttl = policy_of(group)
        if not level.triggered and ttl <= 0:
            return Choice([], True)
        candidates: list[Candidate] = []
        for inst in usage.instances:
            if inst.key_count > 0:
                candidates.extend(sample(inst.instance_id, self.config.sampling_size, self.rng))
        ordered = order_candidates(candidates, policy, now, ttl)
        return choose_victims(
            ordered, level, policy=policy, now=now, ttl_s=ttl, batch_size=self.config.batch_size
        )


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_INTERVAL_S",
    "DEFAULT_SAMPLING_SIZE",
    "Candidate",
    "Choice",
    "Reclaimer",
    "ReclaimerConfig",
    "Sampler",
    "Victim",
    "choose_victims",
    "order_candidates",
    "policy_of",
]
