"""The KVCM domain model: enums, configuration objects, requests and results as frozen dataclasses.

Each class mirrors one message of Tair KVCM's ``meta_service.proto`` / ``admin_service.proto`` with the
same field names and order, so ``kvsim.serve`` converts between the wire and these objects field by
field. Enum members keep the proto names and numbers (``StorageType.ST_NFS == 4``).

Like proto3 messages, every field has a default and nothing is validated here; the
:class:`~kvsim.cache.manager.CacheManager` validates a request when it receives it and raises
``CacheError(INVALID_ARGUMENT, "<field>: <why>")``. Sub-messages whose *presence* matters on the wire
(``model_deployment``, ``cache_config``, ``block_mask``, ``success_blocks``) are ``None`` when absent.

Sequences are stored as given (tuples are preferred; lists and numpy arrays are accepted for key lists);
results always hold tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

import numpy as np

from kvsim.cache.errors import invalid

# ---------------------------------------------------------------------------------------------- enums


class StorageType(IntEnum):
    """Data-storage kind of a location (proto ``StorageType``; same numbers as the model's)."""

    ST_UNSPECIFIED = 0
    ST_3FS = 1
    ST_MOONCAKE = 2
    ST_TAIRMEMPOOL = 3
    ST_NFS = 4
    ST_VCNS_3FS = 5


class QueryType(IntEnum):
    """How GetCacheLocation matches keys."""

    QT_UNSPECIFIED = 0
    QT_BATCH_GET = 1
    QT_PREFIX_MATCH = 2
    QT_REVERSE_ROLL_SW_MATCH = 3


class TrimStrategy(IntEnum):
    """What TrimCache removes."""

    TS_UNSPECIFIED = 0
    TS_REMOVE_ALL_CACHE = 1
    TS_REMOVE_ALL_META = 2
    TS_TIMESTAMP = 3


class LocationStatus(IntEnum):
    """Life-cycle state of one stored location (``CacheLocationStatus``)."""

    CLS_NOT_FOUND = 0
    CLS_NEW = 1
    CLS_WRITING = 2
    CLS_SERVING = 3
    CLS_DELETING = 4


class ReclaimPolicy(IntEnum):
    """Victim order of the reclaimer."""

    POLICY_UNSPECIFIED = 0
    POLICY_LRU = 1
    POLICY_LFU = 2
    POLICY_TTL = 3


class CachePreferStrategy(IntEnum):
    """Which storage type new blocks go to (``data_storage_strategy``)."""

    CPS_UNSPECIFIED = 0
    CPS_ALWAYS_3FS = 1
    CPS_PREFER_3FS = 2
    CPS_ALWAYS_MOONCAKE = 3
    CPS_PREFER_MOONCAKE = 4
    CPS_ALWAYS_TAIR_MEMPOOL = 5
    CPS_PREFER_TAIR_MEMPOOL = 6
    CPS_ALWAYS_VCNS_3FS = 7
    CPS_PREFER_VCNS_3FS = 8


class AccountRole(IntEnum):
    """Role of an admin account."""

    ROLE_USER = 0
    ROLE_ADMIN = 1


# ---------------------------------------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class LocalStorageSpec:
    """Proto ``LocalStorageSpec``: declared by the reference but not a supported storage."""

    TYPE: ClassVar[StorageType] = StorageType.ST_UNSPECIFIED
    TYPE_NAME: ClassVar[str] = "unknown"
    ONEOF: ClassVar[str] = "local"


@dataclass(frozen=True, slots=True)
class NfsStorageSpec:
    """An NFS or local file system tree; blocks are packed ``key_count_per_file`` to a file."""

    TYPE: ClassVar[StorageType] = StorageType.ST_NFS
    TYPE_NAME: ClassVar[str] = "file"
    ONEOF: ClassVar[str] = "nfs"
    root_path: str = ""
    key_count_per_file: int = 1


@dataclass(frozen=True, slots=True)
class ThreeFSStorageSpec:
    """A 3FS (HF3FS) mount; ``cluster_name`` is carried but unused, as in the reference."""

    TYPE: ClassVar[StorageType] = StorageType.ST_3FS
    TYPE_NAME: ClassVar[str] = "hf3fs"
    ONEOF: ClassVar[str] = "threefs"
    cluster_name: str = ""
    mountpoint: str = ""
    root_dir: str = ""
    key_count_per_file: int = 1
    touch_file_when_create: bool = False


@dataclass(frozen=True, slots=True)
class VcnsThreeFSStorageSpec:
    """A remote (VCNS) 3FS mount."""

    TYPE: ClassVar[StorageType] = StorageType.ST_VCNS_3FS
    TYPE_NAME: ClassVar[str] = "vcns_hf3fs"
    ONEOF: ClassVar[str] = "vcnsthreefs"
    cluster_name: str = ""
    mountpoint: str = ""
    root_dir: str = ""
    key_count_per_file: int = 1
    touch_file_when_create: bool = False
    remote_host: str = ""
    remote_port: int = 0
    meta_storage_uri: str = ""


@dataclass(frozen=True, slots=True)
class MooncakeStorageSpec:
    """A Mooncake store (one object per block); ``protocol`` is ``"rdma"`` or ``"tcp"``."""

    TYPE: ClassVar[StorageType] = StorageType.ST_MOONCAKE
    TYPE_NAME: ClassVar[str] = "mooncake"
    ONEOF: ClassVar[str] = "mooncake"
    local_hostname: str = ""
    metadata_connstring: str = ""
    protocol: str = ""
    rdma_device: str = ""
    master_service_entry: str = ""


@dataclass(frozen=True, slots=True)
class TairMemPoolStorageSpec:
    """A Tair memory pool."""

    TYPE: ClassVar[StorageType] = StorageType.ST_TAIRMEMPOOL
    TYPE_NAME: ClassVar[str] = "pace"
    ONEOF: ClassVar[str] = "tair_mem_pool"
    domain: str = ""
    timeout: int = 0
    enable_vipserver: bool = False


StorageSpec = (
    LocalStorageSpec
    | NfsStorageSpec
    | ThreeFSStorageSpec
    | VcnsThreeFSStorageSpec
    | MooncakeStorageSpec
    | TairMemPoolStorageSpec
)

STORAGE_SPEC_CLASSES: tuple[type, ...] = (
    LocalStorageSpec,
    NfsStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
    MooncakeStorageSpec,
    TairMemPoolStorageSpec,
)

# Keys of the reference's storage-config *model* JSON (what RegisterInstance returns in
# ``storage_configs``), per type name, in the reference's order. Note ``master_server_entry``.
_MODEL_SPEC_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "file": (("root_path", "root_path"), ("key_count_per_file", "key_count_per_file")),
    "hf3fs": (
        ("cluster_name", "cluster_name"),
        ("mountpoint", "mountpoint"),
        ("root_dir", "root_dir"),
        ("key_count_per_file", "key_count_per_file"),
    ),
    "vcns_hf3fs": (
        ("cluster_name", "cluster_name"),
        ("mountpoint", "mountpoint"),
        ("root_dir", "root_dir"),
        ("key_count_per_file", "key_count_per_file"),
        ("remote_host", "remote_host"),
        ("remote_port", "remote_port"),
        ("meta_storage_uri", "meta_storage_uri"),
    ),
    "mooncake": (
        ("local_hostname", "local_hostname"),
        ("metadata_connstring", "metadata_connstring"),
        ("protocol", "protocol"),
        ("rdma_device", "rdma_device"),
        ("master_server_entry", "master_service_entry"),
    ),
    "pace": (("enable_vipserver", "enable_vipserver"), ("domain", "domain"), ("timeout", "timeout")),
}


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """One registered data storage (proto ``StorageConfig``; the oneof is the ``spec`` field).

    ``is_available`` is not on the wire: it is the registry's enable/disable flag.
    """

    global_unique_name: str = ""
    spec: StorageSpec | None = None
    check_storage_available_when_open: bool = False
    is_available: bool = True

    @property
    def type(self) -> StorageType:
        """The storage type implied by ``spec`` (UNSPECIFIED without one)."""
        return StorageType.ST_UNSPECIFIED if self.spec is None else self.spec.TYPE

    @property
    def type_name(self) -> str:
        """The reference's type string: file, hf3fs, vcns_hf3fs, mooncake, pace or unknown."""
        return "unknown" if self.spec is None else self.spec.TYPE_NAME

    def to_model_dict(self) -> dict[str, object]:
        """The reference's storage-config model JSON object, as clients parse it from ``storage_configs``."""
        spec: dict[str, object] = {}
        if self.spec is not None:
            for json_key, attr in _MODEL_SPEC_KEYS.get(self.spec.TYPE_NAME, ()):
                spec[json_key] = getattr(self.spec, attr)
        return {
            "type": self.type_name,
            "is_available": self.is_available,
            "global_unique_name": self.global_unique_name,
            "storage_spec": spec,
        }


# ---------------------------------------------------------------------------------------------- groups


@dataclass(frozen=True, slots=True)
class TriggerStrategy:
    """When the reclaimer starts: ``used_percentage`` is a fraction (0.8 = 80 %); ``used_size`` is ignored."""

    used_size: int = 0
    used_percentage: float = 0.0


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """Byte quota of one storage type within a group."""

    storage_type: StorageType = StorageType.ST_UNSPECIFIED
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class InstanceGroupQuota:
    """Byte quota of a whole group plus optional per-type quotas."""

    capacity: int = 0
    quota_config: tuple[QuotaConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheReclaimStrategy:
    """Reclaim settings of a group (see :mod:`kvsim.cache.reclaim`).

    ``storage_unique_name``, ``trigger_period_seconds`` and ``reclaim_step_*`` are stored and echoed but
    unused, as in the reference. ``ttl_seconds`` is a kvsim extension (proto field number 100, above the
    reference's 1-7, so reference clients ignore it): with ``POLICY_TTL`` a block unused for that long
    is reclaimed even below the water level; 0 makes TTL behave as LRU.
    """

    storage_unique_name: str = ""
    reclaim_policy: ReclaimPolicy = ReclaimPolicy.POLICY_UNSPECIFIED
    trigger_strategy: TriggerStrategy = field(default_factory=TriggerStrategy)
    trigger_period_seconds: int = 0
    reclaim_step_size: int = 0
    reclaim_step_percentage: int = 0
    delay_before_delete_ms: int = 0
    ttl_seconds: int = 0


@dataclass(frozen=True, slots=True)
class MetaStorageBackendConfig:
    """Where an instance's meta index lives (``"local"`` or ``"redis"`` in the reference)."""

    storage_type: str = "local"
    storage_uri: str = ""


@dataclass(frozen=True, slots=True)
class MetaCachePolicyConfig:
    """Read cache in front of the meta index (capacity in MB); stored and echoed, not modelled."""

    capacity: int = 0
    type: str = "lru"
    cache_shard_bits: int = 0
    high_pri_pool_ratio: float = 0.0


@dataclass(frozen=True, slots=True)
class MetaIndexerConfig:
    """Per-instance index settings. ``max_key_count`` is enforced; ``mutex_shard_num`` and
    ``batch_key_size`` tune the reference's C++ locking and are only stored (the stores batch per call).
    """

    max_key_count: int = (1 << 63) - 1
    mutex_shard_num: int = 16
    batch_key_size: int = 16
    meta_storage_backend_config: MetaStorageBackendConfig = field(default_factory=MetaStorageBackendConfig)
    meta_cache_policy_config: MetaCachePolicyConfig = field(default_factory=MetaCachePolicyConfig)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Cache behaviour of a group."""

    reclaim_strategy: CacheReclaimStrategy = field(default_factory=CacheReclaimStrategy)
    data_storage_strategy: CachePreferStrategy = CachePreferStrategy.CPS_UNSPECIFIED
    meta_indexer_config: MetaIndexerConfig = field(default_factory=MetaIndexerConfig)


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """A set of instances sharing storages, quota and cache settings; ``version`` orders updates."""

    name: str = ""
    storage_candidates: tuple[str, ...] = ()
    global_quota_group_name: str = ""
    max_instance_count: int = 0
    quota: InstanceGroupQuota = field(default_factory=InstanceGroupQuota)
    cache_config: CacheConfig | None = None
    user_data: str = ""
    version: int = 0


# ---------------------------------------------------------------------------------------------- instances


@dataclass(frozen=True, slots=True)
class LocationSpecInfo:
    """One shard of a block (typically one TP rank) and its size in bytes."""

    name: str = ""
    size: int = 0


@dataclass(frozen=True, slots=True)
class LocationSpecGroup:
    """A named subset of spec names (hybrid attention: blocks that hold only some shards)."""

    name: str = ""
    spec_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelDeployment:
    """What model an instance serves; two registrations match when all but ``user_data`` agree."""

    model_name: str = ""
    dtype: str = ""
    use_mla: bool = False
    tp_size: int = 0
    dp_size: int = 0
    lora_name: str = ""
    pp_size: int = 0
    extra: str = ""
    user_data: str = ""

    def same_model(self, other: ModelDeployment) -> bool:
        """True when every field but ``user_data`` is equal (the reference's duplicate rule)."""
        return (
            self.model_name,
            self.dtype,
            self.use_mla,
            self.tp_size,
            self.dp_size,
            self.lora_name,
            self.pp_size,
            self.extra,
        ) == (
            other.model_name,
            other.dtype,
            other.use_mla,
            other.tp_size,
            other.dp_size,
            other.lora_name,
            other.pp_size,
            other.extra,
        )


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A registered engine instance."""

    quota_group_name: str = ""
    instance_group_name: str = ""
    instance_id: str = ""
    block_size: int = 0
    location_spec_infos: tuple[LocationSpecInfo, ...] = ()
    model_deployment: ModelDeployment = field(default_factory=ModelDeployment)
    location_spec_groups: tuple[LocationSpecGroup, ...] = ()

    def same_registration(self, other: InstanceInfo) -> bool:
        """The reference's rule for an idempotent re-register: block size, specs (ordered), model
        (minus ``user_data``) and spec groups (compared sorted) agree; the group name is not compared."""
        return (
            self.block_size == other.block_size
            and tuple(self.location_spec_infos) == tuple(other.location_spec_infos)
            and self.model_deployment.same_model(other.model_deployment)
            and _sorted_groups(self.location_spec_groups) == _sorted_groups(other.location_spec_groups)
        )


def _sorted_groups(groups: Sequence[LocationSpecGroup]) -> list[tuple[str, tuple[str, ...]]]:
    return sorted((g.name, tuple(sorted(g.spec_names))) for g in groups)


@dataclass(frozen=True, slots=True)
class Account:
    """An admin account as listed (no password)."""

    user_name: str = ""
    role: AccountRole = AccountRole.ROLE_USER


# ---------------------------------------------------------------------------------------------- locations


@dataclass(frozen=True, slots=True)
class LocationSpec:
    """Where one shard of a block lives: the spec name and its URI (empty URI = not cached)."""

    name: str = ""
    uri: str = ""


@dataclass(frozen=True, slots=True)
class CacheLocation:
    """Where one block lives: storage type, number of specs it was written with, and the specs."""

    type: StorageType = StorageType.ST_UNSPECIFIED
    spec_size: int = 0
    location_specs: tuple[LocationSpec, ...] = ()


EMPTY_LOCATION = CacheLocation()


@dataclass(frozen=True, slots=True)
class BlockMask:
    """A proto ``BlockMask``: exactly one of ``offset`` (indices ``< offset`` are in the mask) or
    ``bool_masks`` (index ``i`` is in the mask iff ``i < len`` and ``bool_masks[i]``).

    What "in the mask" means depends on the call: skip this key (GetCacheLocation, GetCacheMeta),
    already cached (StartWriteCache result), written successfully (FinishWriteCache).
    """

    offset: int | None = None
    bool_masks: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if (self.offset is None) == (self.bool_masks is None):
            raise invalid("block_mask", "set exactly one of offset and bool_masks")
        if self.bool_masks is not None and not isinstance(self.bool_masks, tuple):
            object.__setattr__(self, "bool_masks", tuple(bool(v) for v in self.bool_masks))

    @classmethod
    def of_offset(cls, offset: int) -> BlockMask:
        """The mask of the first ``offset`` indices."""
        return cls(offset=offset)

    @classmethod
    def of_bools(cls, values: Sequence[bool]) -> BlockMask:
        """The mask of the indices whose value is true."""
        return cls(bool_masks=tuple(bool(v) for v in values))

    def contains(self, index: int) -> bool:
        """True when ``index`` is in the mask."""
        if self.offset is not None:
            return index < self.offset
        assert self.bool_masks is not None
        return index < len(self.bool_masks) and self.bool_masks[index]

    def to_bools(self, n: int) -> list[bool]:
        """The mask over indices ``0 .. n-1`` as a list of bools."""
        return [self.contains(i) for i in range(n)]


KeyList = Sequence[int] | np.ndarray


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class RegisterInstanceRequest:
    """Register an instance with its block size, specs and model (``RegisterInstanceRequest``)."""

    trace_id: str = ""
    instance_group: str = ""
    instance_id: str = ""
    block_size: int = 0
    location_spec_infos: tuple[LocationSpecInfo, ...] = ()
    model_deployment: ModelDeployment | None = None
    location_spec_groups: tuple[LocationSpecGroup, ...] = ()


@dataclass(frozen=True, slots=True)
class GetInstanceInfoRequest:
    """Look up a registered instance."""

    trace_id: str = ""
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class GetCacheLocationRequest:
    """Find cached blocks: ``block_keys`` if given, else keys derived from ``token_ids``."""

    trace_id: str = ""
    instance_id: str = ""
    query_type: QueryType = QueryType.QT_UNSPECIFIED
    block_keys: KeyList = ()
    token_ids: KeyList = ()
    block_mask: BlockMask | None = None
    sw_size: int = 0
    location_spec_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GetCacheMetaRequest:
    """Inspect the stored state of keys (``detail_level`` is accepted and ignored, as in the reference)."""

    trace_id: str = ""
    instance_id: str = ""
    block_keys: KeyList = ()
    token_ids: KeyList = ()
    block_mask: BlockMask | None = None
    detail_level: int = 0


@dataclass(frozen=True, slots=True)
class StartWriteCacheRequest:
    """Phase 1 of a write: allocate locations for the keys not cached yet."""

    trace_id: str = ""
    instance_id: str = ""
    block_keys: KeyList = ()
    token_ids: KeyList = ()
    location_spec_group_names: tuple[str, ...] = ()
    write_timeout_seconds: int = 0


@dataclass(frozen=True, slots=True)
class FinishWriteCacheRequest:
    """Phase 2 of a write: ``success_blocks`` is a mask over the locations StartWriteCache returned.

    ``locations`` is accepted and ignored (client-side allocation is not supported, as in the reference).
    """

    trace_id: str = ""
    instance_id: str = ""
    write_session_id: str = ""
    success_blocks: BlockMask | None = None
    locations: tuple[CacheLocation, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveCacheRequest:
    """Delete keys (every location, any status); ``block_mask`` is ignored as in the reference."""

    trace_id: str = ""
    instance_id: str = ""
    block_keys: KeyList = ()
    token_ids: KeyList = ()
    block_mask: BlockMask | None = None


@dataclass(frozen=True, slots=True)
class TrimCacheRequest:
    """Remove cache of an instance by strategy; timestamps are epoch seconds for ``TS_TIMESTAMP``."""

    trace_id: str = ""
    instance_id: str = ""
    strategy: TrimStrategy = TrimStrategy.TS_UNSPECIFIED
    begin_timestamp: int = 0
    end_timestamp: int = 0


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class RegisterInstanceResult:
    """``storage_configs``: JSON array of the group's storages, as clients configure their transfer SDK."""

    storage_configs: str


@dataclass(frozen=True, slots=True)
class GetInstanceInfoResult:
    """The instance's group name and its info."""

    instance_group: str
    instance_info: InstanceInfo


@dataclass(frozen=True, slots=True)
class GetCacheLocationResult:
    """Locations found, shaped by the query type (see :meth:`CacheManager.get_cache_location`)."""

    locations: tuple[CacheLocation, ...]


@dataclass(frozen=True, slots=True)
class GetCacheMetaResult:
    """One location and one JSON meta string per unmasked key."""

    locations: tuple[CacheLocation, ...]
    metas: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StartWriteCacheResult:
    """The session, which keys are already cached (``block_mask``) and where to write the others."""

    write_session_id: str
    block_mask: BlockMask
    locations: tuple[CacheLocation, ...]


@dataclass(frozen=True, slots=True)
class FinishWriteCacheResult:
    """How many written blocks became SERVING and how many were treated as failed.

    A block the client reported as written but that was deleted meanwhile (its location is DELETING or
    gone) counts as failed.
    """

    num_serving: int
    num_failed: int


@dataclass(frozen=True, slots=True)
class RemoveCacheResult:
    """Keys that had locations and locations newly marked DELETING (deleted at the next ``poll``)."""

    num_keys: int
    num_locations: int


@dataclass(frozen=True, slots=True)
class TrimCacheResult:
    """Keys affected and locations marked DELETING (``TS_REMOVE_ALL_META`` drops index entries directly)."""

    num_keys: int
    num_locations: int


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one :meth:`CacheManager.poll` did: sessions expired, locations and keys deleted, locations
    the reclaimer submitted for deletion, locations whose storage delete failed (kept DELETING and
    retried later), and storages whose probed health flipped."""

    expired_sessions: int
    deleted_locations: int
    deleted_keys: int
    reclaimed_locations: int = 0
    failed_deletions: int = 0
    storage_health_changes: int = 0
