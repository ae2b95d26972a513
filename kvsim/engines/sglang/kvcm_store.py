"""Tair KVCM as the L3 store of a simulated SGLang server: the same ``kvsim.cache`` code ``kvsim serve``
runs, called in process under simulated time.

The engine registers itself as a KVCM instance (block size = page size, one location spec per TP rank
holding that rank's share of a page), and then talks to the :class:`~kvsim.cache.CacheManager` as a
KVCM client would:

- a prefetch asks ``GetCacheLocation`` (prefix match over the prompt's page keys, the pages already on
  device or host masked off by offset) and reads the pages KVCM returns, each from the storage its
  location names;
- a backup is KVCM's two-phase write: ``StartWriteCache`` (KVCM answers which pages it already holds,
  where the others go, or refuses when the group quota, a storage type's quota, the storage's capacity
  or ``max_key_count`` leaves no room) and, once the bytes have landed, ``FinishWriteCache``;
- ``poll`` runs as simulated time passes, so write sessions expire, the reclaimer keeps the group under
  its water level (the pages it takes stop hitting) and deletions happen after their delay.

Everything the manager does is recorded in its event log (the reference's publisher format), which the
run writes as ``kvcm_events.jsonl`` and ``kvsim optimize --trace-format publisher_log --policy logged``
replays. The manager's clock is the simulation's, its RNG a named child of the run's seed.

The experiment file's ``kvcm:`` section (:class:`KvcmSection`) configures the storages (each on a storage
tier of :mod:`kvsim.hardware.storage`), the instance group's quotas, its reclaim policy and water level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsim.cache import (
    BlockMask,
    CacheConfig,
    CacheError,
    CacheManager,
    CachePreferStrategy,
    CacheReclaimStrategy,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    InstanceGroup,
    InstanceGroupQuota,
    LocationSpecInfo,
    MetaIndexerConfig,
    ModelDeployment,
    MooncakeStorageSpec,
    NfsStorageSpec,
    QueryType,
    QuotaConfig,
    ReclaimPolicy,
    RegisterInstanceRequest,
    SimulatedBackend,
    StartWriteCacheRequest,
    StorageConfig,
    StorageType,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    TriggerStrategy,
    VcnsThreeFSStorageSpec,
)
from kvsim.cache.backends.base import parse_uri
from kvsim.cache.events import EventLog, EventSink, Record
from kvsim.cache.health import ProbeSettings
from kvsim.cache.reclaim import ReclaimerConfig
from kvsim.core import ManualClock
from kvsim.core.errors import ConfigError
from kvsim.core.units import parse_bytes, parse_time
from kvsim.engines.sglang.storage import TierRuns, WriteTicket
from kvsim.hardware.storage import StorageTier, load_storage_tier, storage_tier_names

#: Keys of the experiment file's ``kvcm:`` section.
KVCM_KEYS = (
    "instance_group",
    "instance_id",
    "storages",
    "quota",
    "type_quotas",
    "max_key_count",
    "data_storage_strategy",
    "reclaim_policy",
    "water_level",
    "delay_before_delete_ms",
    "ttl_seconds",
    "reclaimer_interval",
    "write_timeout_seconds",
    "rpc_latency",
)
STORAGE_KEYS = ("name", "type", "tier", "key_count_per_file")
#: Storage type names of the section -> (KVCM type, the tier a storage of that type runs on by default).
STORAGE_TYPES: dict[str, tuple[StorageType, str]] = {
    "nfs": (StorageType.ST_NFS, "nfs"),
    "3fs": (StorageType.ST_3FS, "3fs"),
    "vcns_3fs": (StorageType.ST_VCNS_3FS, "3fs"),
    "mooncake": (StorageType.ST_MOONCAKE, "mooncake"),
    "tairmempool": (StorageType.ST_TAIRMEMPOOL, "host_dram"),
}
RECLAIM_POLICIES = {
    "lru": ReclaimPolicy.POLICY_LRU,
    "lfu": ReclaimPolicy.POLICY_LFU,
    "ttl": ReclaimPolicy.POLICY_TTL,
}
#: ``data_storage_strategy`` names (KVCM's ``CachePreferStrategy`` without the ``CPS_`` prefix; KVCM
#: refuses a group without one).
STRATEGIES = {
    member.name[4:].lower(): member
    for member in CachePreferStrategy
    if member != CachePreferStrategy.CPS_UNSPECIFIED
}
#: KVCM's meta RPC time as seen by the engine: kvsim's estimate for a gRPC call within a data centre.
DEFAULT_RPC_LATENCY_S = 1e-3
DEFAULT_WRITE_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class KvcmStorage:
    """One storage of the ``kvcm:`` section."""

    name: str
    type: str
    tier: StorageTier
    key_count_per_file: int


@dataclass(frozen=True, slots=True)
class KvcmSection:
    """The resolved ``kvcm:`` section. Defaults are the reference's built-in startup config (one NFS
    storage ``nfs_01``, group ``default`` with 30 GB, 10 GB per NFS/3FS/TairMemPool, LRU reclaim at 80 %
    with a 1 s delete delay, prefer 3FS, 1e6 keys per instance)."""

    instance_group: str = "default"
    instance_id: str = "kvsim-sglang-0"
    storages: tuple[KvcmStorage, ...] = ()
    quota_bytes: int = 30_000_000_000
    type_quotas: tuple[tuple[str, int], ...] = (
        ("nfs", 10_000_000_000),
        ("3fs", 10_000_000_000),
        ("tairmempool", 10_000_000_000),
    )
    max_key_count: int = 1_000_000
    data_storage_strategy: str = "prefer_3fs"
    reclaim_policy: str = "lru"
    water_level: float = 0.8
    delay_before_delete_ms: int = 1000
    ttl_seconds: int = 0
    reclaimer_interval_s: float = 0.1
    write_timeout_seconds: int = DEFAULT_WRITE_TIMEOUT_S
    rpc_latency_s: float = DEFAULT_RPC_LATENCY_S

    def to_dict(self) -> dict[str, Any]:
        """The section as resolved (numbers in bytes, seconds), for ``config.resolved.yaml``; it reads
        back as the same section."""
        return {
            "instance_group": self.instance_group,
            "instance_id": self.instance_id,
            "storages": [
                {
                    "name": s.name,
                    "type": s.type,
                    "tier": _tier_entry(s.tier),
                    "key_count_per_file": s.key_count_per_file,
                }
                for s in self.storages
            ],
            "quota": self.quota_bytes,
            "type_quotas": dict(self.type_quotas),
            "max_key_count": self.max_key_count,
            "data_storage_strategy": self.data_storage_strategy,
            "reclaim_policy": self.reclaim_policy,
            "water_level": self.water_level,
            "delay_before_delete_ms": self.delay_before_delete_ms,
            "ttl_seconds": self.ttl_seconds,
            "reclaimer_interval": f"{self.reclaimer_interval_s!r} s",
            "write_timeout_seconds": self.write_timeout_seconds,
            "rpc_latency": f"{self.rpc_latency_s!r} s",
        }


def _tier_entry(tier: StorageTier) -> str | dict[str, Any]:
    """A packaged tier by name; any other as the mapping that loads it again."""
    if tier.name in storage_tier_names() and load_storage_tier(tier.name) == tier:
        return tier.name
    capacity = "unlimited" if tier.capacity_bytes is None else f"{tier.capacity_bytes!r} B"
    return {
        "name": tier.name,
        "read_bandwidth": f"{tier.read_bandwidth!r} B/s",
        "write_bandwidth": f"{tier.write_bandwidth!r} B/s",
        "read_latency": f"{tier.read_latency_s!r} s",
        "write_latency": f"{tier.write_latency_s!r} s",
        "capacity": capacity,
        "description": tier.description,
        "source": tier.source,
    }


def _bytes(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected bytes (e.g. 10 GB), got {value!r}")
    number = float(value) if isinstance(value, int) else parse_bytes(value, where)
    if number < 0 or not math.isfinite(number):
        raise ConfigError(f"{where}: must be >= 0, got {value!r}")
    return int(number)


def _int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _seconds(value: Any, where: str) -> float:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None:
        number = parse_time(value, where)
    if number < 0 or not math.isfinite(number):
        raise ConfigError(f"{where}: must be >= 0, got {value!r}")
    return number


def _choice(value: Any, choices: Mapping[str, Any], where: str) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value.lower()


def _storage(entry: Any, index: int) -> KvcmStorage:
    where = f"kvcm.storages[{index}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(STORAGE_KEYS)}")
    unknown = sorted(set(entry) - set(STORAGE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {', '.join(STORAGE_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or "?" in name:
        raise ConfigError(f"{where}.name: expected a non-empty name without '/' or '?', got {name!r}")
    kind = _choice(entry.get("type", "nfs"), STORAGE_TYPES, f"{where}.type")
    tier = load_storage_tier(entry.get("tier", STORAGE_TYPES[kind][1]))
    per_file = _int(entry.get("key_count_per_file", 1), f"{where}.key_count_per_file", 1)
    return KvcmStorage(name, kind, tier, per_file)


def parse_kvcm_section(data: Mapping[str, Any] | None) -> KvcmSection:
    """Resolve the experiment file's ``kvcm:`` section (None or empty: the reference's defaults).

    Raises:
        ConfigError: an unknown key (the message lists the valid ones), a bad value, duplicate storage
            names, or a type quota for a type no storage has.
    """
    data = dict(data or {})
    unknown = sorted(set(data) - set(KVCM_KEYS))
    if unknown:
        raise ConfigError(f"kvcm: unknown keys {unknown}; valid: {', '.join(KVCM_KEYS)}")
    default = KvcmSection()
    raw_storages = data.get("storages")
    if raw_storages is None:
        storages: tuple[KvcmStorage, ...] = (KvcmStorage("nfs_01", "nfs", load_storage_tier("nfs"), 8),)
    else:
        if not isinstance(raw_storages, list) or not raw_storages:
            raise ConfigError("kvcm.storages: expected a non-empty list of storages")
        storages = tuple(_storage(entry, i) for i, entry in enumerate(raw_storages))
    names = [s.name for s in storages]
    if len(set(names)) != len(names):
        raise ConfigError(f"kvcm.storages: duplicate storage names in {names}")
    type_quotas = default.type_quotas
    if "type_quotas" in data:
        raw = data["type_quotas"]
        if not isinstance(raw, Mapping):
            raise ConfigError(
                "kvcm.type_quotas: expected a mapping of storage type to bytes, e.g. {nfs: 10 GB}"
            )
        type_quotas = tuple(
            (_choice(kind, STORAGE_TYPES, "kvcm.type_quotas"), _bytes(value, f"kvcm.type_quotas.{kind}"))
            for kind, value in raw.items()
        )
    water = data.get("water_level", default.water_level)
    if isinstance(water, bool) or not isinstance(water, int | float) or not 0 <= water <= 1:
        raise ConfigError(f"kvcm.water_level: expected a fraction in [0, 1], got {water!r}")
    group = data.get("instance_group", default.instance_group)
    instance = data.get("instance_id", default.instance_id)
    for key, value in (("instance_group", group), ("instance_id", instance)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"kvcm.{key}: expected a non-empty string, got {value!r}")
    return KvcmSection(
        instance_group=group,
        instance_id=instance,
        storages=storages,
        quota_bytes=_bytes(data.get("quota", default.quota_bytes), "kvcm.quota"),
        type_quotas=type_quotas,
        max_key_count=_int(data.get("max_key_count", default.max_key_count), "kvcm.max_key_count"),
        data_storage_strategy=_choice(
            data.get("data_storage_strategy", default.data_storage_strategy),
            STRATEGIES,
            "kvcm.data_storage_strategy",
        ),
        reclaim_policy=_choice(
            data.get("reclaim_policy", default.reclaim_policy), RECLAIM_POLICIES, "kvcm.reclaim_policy"
        ),
        water_level=float(water),
        delay_before_delete_ms=_int(
            data.get("delay_before_delete_ms", default.delay_before_delete_ms), "kvcm.delay_before_delete_ms"
        ),
        ttl_seconds=_int(data.get("ttl_seconds", default.ttl_seconds), "kvcm.ttl_seconds"),
        reclaimer_interval_s=_seconds(
            data.get("reclaimer_interval", default.reclaimer_interval_s), "kvcm.reclaimer_interval"
        ),
        write_timeout_seconds=_int(
            data.get("write_timeout_seconds", default.write_timeout_seconds), "kvcm.write_timeout_seconds"
        ),
        rpc_latency_s=_seconds(data.get("rpc_latency", default.rpc_latency_s), "kvcm.rpc_latency"),
    )


def _storage_config(storage: KvcmStorage) -> StorageConfig:
    """A simulated storage of the section's type (only its URIs and capacity matter)."""
    per_file = storage.key_count_per_file
    kind = storage.type
    spec: Any
    if kind == "nfs":
        spec = NfsStorageSpec(root_path=f"/kvsim/{storage.name}/", key_count_per_file=per_file)
    elif kind == "3fs":
        spec = ThreeFSStorageSpec(mountpoint="/3fs", root_dir=storage.name, key_count_per_file=per_file)
    elif kind == "vcns_3fs":
        spec = VcnsThreeFSStorageSpec(
            mountpoint="/3fs",
            root_dir=storage.name,
            key_count_per_file=per_file,
            remote_host="vcns.kvsim",
            remote_port=1,
            meta_storage_uri=f"kvsim://{storage.name}",
        )
    elif kind == "mooncake":
        spec = MooncakeStorageSpec(
            local_hostname="kvsim",
            metadata_connstring="kvsim",
            protocol="rdma",
            rdma_device="mlx5_0",
            master_service_entry="kvsim",
        )
    else:
        spec = TairMemPoolStorageSpec(domain=storage.name)
    return StorageConfig(global_unique_name=storage.name, spec=spec)


class DiscardSink:
    """An event sink that drops what it is given (a run that keeps no event log still counts events)."""

    def write(self, records: Sequence[Record]) -> None:
        """Drop the batch."""

    def close(self) -> None:
        """Nothing to release."""


class KvcmStore:
    """The L3 store backed by a :class:`~kvsim.cache.CacheManager` (see the module docstring).

    Args:
        section: the resolved ``kvcm:`` section.
        page_size: tokens per page (the instance's block size).
        spec_bytes: bytes of one page on one TP rank (one location spec).
        tp: TP ranks (one location spec each: ``tp0``, ``tp1``, ...).
        model: the model's name and KV dtype, registered as the instance's deployment.
        rng: the manager's generator (a named child of the run's seed).
        sink: where the event log goes (a file for a run directory, memory for tests); dropped when None.
        probe: storage probing of the manager (:mod:`kvsim.cache.health`); None (the default) probes
            nothing. A run with scripted faults probes, so outages change what KVCM hands out.
    """

    def __init__(
        self,
        section: KvcmSection,
        page_size: int,
        spec_bytes: int,
        tp: int,
        model: tuple[str, str],
        rng: np.random.Generator,
        sink: EventSink | None = None,
        probe: ProbeSettings | None = None,
    ) -> None:
        self.name = "kvcm"
        self.section = section
        self.query_latency_s = section.rpc_latency_s
        self.write_latency_s = section.rpc_latency_s
        self.poll_interval_s = section.reclaimer_interval_s
        self.clock = ManualClock(0.0)
        tiers = {s.name: s.tier for s in section.storages}
        capacities = {s.name: s.tier.capacity_bytes for s in section.storages}

        def backend(config: StorageConfig) -> SimulatedBackend:
            capacity = capacities.get(config.global_unique_name)
            return SimulatedBackend(config, None if capacity is None else int(capacity))

        self.events = EventLog(sink if sink is not None else DiscardSink())
        self.manager = CacheManager(
            self.clock,
            rng,
            backend_factory=backend,
            events=self.events,
            reclaimer=ReclaimerConfig(interval_s=section.reclaimer_interval_s),
            storage_probe=probe,
        )
        mgr = self.manager
        for storage in section.storages:
            mgr.add_storage(_storage_config(storage))
        rs = CacheReclaimStrategy(
            storage_unique_name=section.storages[0].name,
            reclaim_policy=RECLAIM_POLICIES[section.reclaim_policy],
            trigger_strategy=TriggerStrategy(used_percentage=section.water_level),
            delay_before_delete_ms=section.delay_before_delete_ms,
            ttl_seconds=section.ttl_seconds,
        )
        mgr.create_instance_group(
            InstanceGroup(
                name=section.instance_group,
                storage_candidates=tuple(s.name for s in section.storages),
                global_quota_group_name=f"{section.instance_group}_quota",
                max_instance_count=100,
                quota=InstanceGroupQuota(
                    capacity=section.quota_bytes,
                    quota_config=tuple(
                        QuotaConfig(STORAGE_TYPES[kind][0], capacity)
                        for kind, capacity in section.type_quotas
                    ),
                ),
                cache_config=CacheConfig(
                    reclaim_strategy=rs,
                    data_storage_strategy=STRATEGIES[section.data_storage_strategy],
                    meta_indexer_config=MetaIndexerConfig(max_key_count=section.max_key_count),
                ),
            )
        )
        self.instance_id = section.instance_id
        mgr.register_instance(
            RegisterInstanceRequest(
                instance_group=section.instance_group,
                instance_id=section.instance_id,
                block_size=page_size,
                location_spec_infos=tuple(LocationSpecInfo(f"tp{rank}", spec_bytes) for rank in range(tp)),
                model_deployment=ModelDeployment(model_name=model[0], dtype=model[1], tp_size=tp),
            )
        )
        # A storage type held by exactly one storage names its tier without parsing URIs.
        by_type: dict[StorageType, list[str]] = {}
        for storage in section.storages:
            by_type.setdefault(STORAGE_TYPES[storage.type][0], []).append(storage.name)
        self._type_tier = {t: tiers[names[0]] for t, names in by_type.items() if len(names) == 1}
        self._tiers = tiers
        self.queries = 0
        self.query_pages = 0
        self.hit_pages = 0
        self.refusals: dict[str, int] = {}
        self.finish_failures = 0
        self.reclaimed_locations = 0
        self._down: set[str] = set()  # storages in a scripted outage
        self.faulted = False  # a fault was ever scheduled (its totals are then reported)
        self.failed_read_pages = 0
        self.failed_queries = 0
        self.health_changes = 0
        self.router_queries = 0  # prefix matches a cache-aware router asked for

    def storage_names(self) -> tuple[str, ...]:
        """The names of the ``kvcm:`` storages."""
        return tuple(s.name for s in self.section.storages)

    def tier_of_storage(self, name: str) -> StorageTier:
        """The tier of storage ``name``."""
        return self._tiers[name]

    def set_down(self, name: str, down: bool, now: float) -> None:
        """Begin or end an outage of storage ``name``: its simulated backend fails creates and probes
        (the manager notices at its next probe); reads of its pages fail meanwhile."""
        backend = self.manager.backend(name)
        assert isinstance(backend, SimulatedBackend)
        backend.set_down(down)
        if down:
            self._down.add(name)
        else:
            self._down.discard(name)

    def _tier_of(self, location: Any) -> StorageTier:
        tier = self._type_tier.get(location.type)
        if tier is None:
            tier = self._tiers[parse_uri(location.location_specs[0].uri)[1]]
        return tier

    def query(self, keys: np.ndarray, skip_pages: int, now: float) -> TierRuns:
        """``GetCacheLocation`` prefix match of ``keys`` with the first ``skip_pages`` masked off."""
        self.clock.set(now)
        try:
            result = self.manager.get_cache_location(
                GetCacheLocationRequest(
                    instance_id=self.instance_id,
                    query_type=QueryType.QT_PREFIX_MATCH,
                    block_keys=keys,
                    block_mask=BlockMask(offset=skip_pages) if skip_pages else None,
                )
            )
        except CacheError:
            # Every storage of the group is unavailable (an outage): the engine sees a miss.
            self.queries += 1
            self.query_pages += len(keys) - skip_pages
            self.failed_queries += 1
            return []
        locations = result.locations
        if self._down:
            # The client's read of a page on a storage that is down fails: the prefetch ends there.
            for index, location in enumerate(locations):
                if parse_uri(location.location_specs[0].uri)[1] in self._down:
                    self.failed_read_pages += len(locations) - index
                    locations = locations[:index]
                    break
        self.queries += 1
        self.query_pages += len(keys) - skip_pages
        self.hit_pages += len(locations)
        runs: TierRuns = []
        for location in locations:
            tier = self._tier_of(location)
            if runs and runs[-1][0] is tier:
                runs[-1] = (tier, runs[-1][1] + 1)
            else:
                runs.append((tier, 1))
        return runs

    def router_prefix(self, keys: np.ndarray, now: float) -> int:
        """Pages of ``keys`` KVCM holds as a prefix, for a cache-aware router asking it (a
        ``GetCacheLocation`` prefix match of its own: it counts as a read for KVCM's access statistics,
        as a real router's call would, but not in this engine's L3 totals). 0 when KVCM refuses."""
        self.clock.set(max(now, self.clock.now()))
        self.router_queries += 1
        try:
            result = self.manager.get_cache_location(
                GetCacheLocationRequest(
                    instance_id=self.instance_id, query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys
                )
            )
        except CacheError:
            return 0
        return len(result.locations)

    def start_write(self, keys: np.ndarray, now: float) -> WriteTicket:
        """``StartWriteCache``: KVCM's answer (cached pages, where the new ones go) or its refusal."""
        self.clock.set(now)
        try:
            result = self.manager.start_write_cache(
                StartWriteCacheRequest(
                    instance_id=self.instance_id,
                    block_keys=keys,
                    write_timeout_seconds=self.section.write_timeout_seconds,
                )
            )
        except CacheError as exc:
            reason = exc.code.name
            self.refusals[reason] = self.refusals.get(reason, 0) + len(keys)
            return WriteTicket(0, None, len(keys), None)
        locations = result.locations
        tier = self._tier_of(locations[0]) if locations else None
        return WriteTicket(len(locations), tier, 0, result.write_session_id)

    def finish_write(self, ticket: WriteTicket, now: float) -> int:
        """``FinishWriteCache`` with every page written; 0 when KVCM no longer knows the session (it
        expired: the write took longer than ``write_timeout_seconds``)."""
        self.clock.set(now)
        try:
            result = self.manager.finish_write_cache(
                FinishWriteCacheRequest(
                    instance_id=self.instance_id,
                    write_session_id=str(ticket.handle),
                    success_blocks=BlockMask(offset=ticket.new_pages),
                )
            )
        except CacheError:
            self.finish_failures += 1
            return 0
        return result.num_serving

    def next_deadline(self) -> float | None:
        """KVCM's next session deadline, due deletion or reclaim round."""
        return self.manager.next_deadline()

    def poll(self, now: float) -> None:
        """Let KVCM expire sessions, reclaim and delete what is due by ``now``."""
        self.clock.set(max(now, self.clock.now()))
        result = self.manager.poll(self.clock.now())
        self.reclaimed_locations += result.reclaimed_locations
        self.health_changes += result.storage_health_changes

    def close(self) -> None:
        """Flush the event log to its sink and close it."""
        self.events.close()

    def metrics(self) -> dict[str, object]:
        """KVCM's share of the run totals (pages = KVCM blocks)."""
        refused = ",".join(f"{code}={count}" for code, count in sorted(self.refusals.items()))
        return {
            "l3_storage_tiers": ",".join(f"{s.name}={s.tier.name}" for s in self.section.storages),
            "l3_queries": self.queries,
            "l3_query_blocks": self.query_pages,
            "l3_hit_blocks": self.hit_pages,
            "kvcm_reclaimed_blocks": self.reclaimed_locations,
            "kvcm_refusals": refused,
            "kvcm_expired_writes": self.finish_failures,
            "kvcm_events": self.events.published,
            **self._fault_metrics(),
        }

    def _fault_metrics(self) -> dict[str, object]:
        """Totals of scripted faults (only in runs that have some)."""
        if not self.faulted:
            return {}
        return {
            "l3_failed_read_blocks": self.failed_read_pages,
            "kvcm_failed_queries": self.failed_queries,
            "kvcm_storage_health_changes": self.health_changes,
        }


class SharedKvcmView:
    """One engine's handle on a :class:`KvcmStore` that several engines of a fleet share (global KVCM).

    Every engine of a "global" fleet talks to the same :class:`~kvsim.cache.CacheManager` under the same
    instance id, so one engine's backups are another's prefetch hits and all draw on one group quota.
    The view forwards to the shared store and keeps this engine's own counters, so that summing the
    instances' metrics gives the fleet's totals; the manager-wide counters (reclaimed blocks, events)
    are reported by the owning view only.

    Time: each engine's L3 controller acts on its storage events lazily, at its own scheduler passes, so
    a call may carry a time earlier than one another engine already made the shared manager see (its
    clock never goes back). Such a call is applied at the manager's current time instead: late by at
    most one scheduler pass of the calling engine. ``late_calls`` counts them.

    Args:
        store: the shared store.
        owner: whether this view reports the manager-wide counters (exactly one view per store should).
    """

    def __init__(self, store: KvcmStore, *, owner: bool) -> None:
        self.store = store
        self.owner = owner
        self.name = store.name
        self.query_latency_s = store.query_latency_s
        self.write_latency_s = store.write_latency_s
        self.poll_interval_s = store.poll_interval_s
        self.queries = 0
        self.query_pages = 0
        self.hit_pages = 0
        self.refusals: dict[str, int] = {}
        self.finish_failures = 0
        self.late_calls = 0

    def _at(self, now: float) -> float:
        current = self.store.clock.now()
        if now < current:
            self.late_calls += 1
            return current
        return now

    def query(self, keys: np.ndarray, skip_pages: int, now: float) -> TierRuns:
        """The shared manager's prefix match (see :meth:`KvcmStore.query`), counted for this engine."""
        runs = self.store.query(keys, skip_pages, self._at(now))
        self.queries += 1
        self.query_pages += len(keys) - skip_pages
        self.hit_pages += sum(pages for _, pages in runs)
        return runs

    def start_write(self, keys: np.ndarray, now: float) -> WriteTicket:
        """The shared manager's ``StartWriteCache``; refusals counted for this engine."""
        before = dict(self.store.refusals)
        ticket = self.store.start_write(keys, self._at(now))
        for code, count in self.store.refusals.items():
            if count > before.get(code, 0):
                self.refusals[code] = self.refusals.get(code, 0) + count - before.get(code, 0)
        return ticket

    def finish_write(self, ticket: WriteTicket, now: float) -> int:
        """The shared manager's ``FinishWriteCache``; an expired session counted for this engine."""
        failures = self.store.finish_failures
        served = self.store.finish_write(ticket, self._at(now))
        self.finish_failures += self.store.finish_failures - failures
        return served

    def next_deadline(self) -> float | None:
        """The shared manager's next deadline."""
        return self.store.next_deadline()

    def router_prefix(self, keys: np.ndarray, now: float) -> int:
        """The shared manager's answer to a router (see :meth:`KvcmStore.router_prefix`)."""
        return self.store.router_prefix(keys, now)

    @property
    def faulted(self) -> bool:
        """Whether the shared store has scripted faults."""
        return self.store.faulted

    @faulted.setter
    def faulted(self, value: bool) -> None:
        self.store.faulted = self.store.faulted or value

    def storage_names(self) -> tuple[str, ...]:
        """The shared store's storages."""
        return self.store.storage_names()

    def tier_of_storage(self, name: str) -> StorageTier:
        """The tier of a shared storage."""
        return self.store.tier_of_storage(name)

    def set_down(self, name: str, down: bool, now: float) -> None:
        """A scripted outage of a shared storage (every engine schedules it; repeats change nothing)."""
        self.store.set_down(name, down, self._at(now))

    def poll(self, now: float) -> None:
        """Let the shared manager act on what is due (it never moves its clock back)."""
        self.store.poll(now)

    def close(self) -> None:
        """Nothing: the fleet closes the shared store once every engine is done."""

    def metrics(self) -> dict[str, object]:
        """This engine's queries, hits, refusals and expired writes; the manager-wide counters from the
        owning view only (0 elsewhere), so that instances sum to the fleet's totals."""
        refused = ",".join(f"{code}={count}" for code, count in sorted(self.refusals.items()))
        return {
            "l3_storage_tiers": ",".join(f"{s.name}={s.tier.name}" for s in self.store.section.storages),
            "l3_queries": self.queries,
            "l3_query_blocks": self.query_pages,
            "l3_hit_blocks": self.hit_pages,
            "kvcm_reclaimed_blocks": self.store.reclaimed_locations if self.owner else 0,
            "kvcm_refusals": refused,
            "kvcm_expired_writes": self.finish_failures,
            "kvcm_events": self.store.events.published if self.owner else 0,
            "kvcm_late_calls": self.late_calls,
            # Manager-wide, like the reclaimed blocks: the owner's figures, zeros elsewhere.
            **{k: (v if self.owner else 0) for k, v in self.store._fault_metrics().items()},
        }


__all__ = [
    "KVCM_KEYS",
    "STORAGE_TYPES",
    "DiscardSink",
    "KvcmSection",
    "KvcmStorage",
    "KvcmStore",
    "SharedKvcmView",
    "parse_kvcm_section",
]
