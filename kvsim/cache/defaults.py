"""The reference's built-in startup configuration: storage ``nfs_01`` and group ``default``.

The reference applies it the first time a node becomes leader; ``CacheManager.apply_startup_config``
does the same on demand. Tests and examples use it as the standard setup.
"""

from __future__ import annotations

from kvsim.cache.types import (
    CacheConfig,
    CachePreferStrategy,
    CacheReclaimStrategy,
    InstanceGroup,
    InstanceGroupQuota,
    MetaCachePolicyConfig,
    MetaIndexerConfig,
    MetaStorageBackendConfig,
    NfsStorageSpec,
    QuotaConfig,
    ReclaimPolicy,
    StorageConfig,
    StorageType,
    TriggerStrategy,
)

DEFAULT_STORAGE_NAME = "nfs_01"
DEFAULT_GROUP_NAME = "default"


def default_storage_config() -> StorageConfig:
    """NFS storage ``nfs_01`` at ``/tmp/nfs/`` with 8 blocks per file."""
    return StorageConfig(
        global_unique_name=DEFAULT_STORAGE_NAME,
        spec=NfsStorageSpec(root_path="/tmp/nfs/", key_count_per_file=8),
    )


def default_instance_group() -> InstanceGroup:
    """Group ``default``: candidate ``nfs_01``, 3e10 bytes quota (1e10 per file/3FS/TairMemPool type),
    LRU reclaim at 80 % with a 1 s delete delay, prefer 3FS (falls back to NFS), 1e6 keys per instance."""
    return InstanceGroup(
        name=DEFAULT_GROUP_NAME,
        storage_candidates=(DEFAULT_STORAGE_NAME,),
        global_quota_group_name="default_quota_group",
        max_instance_count=100,
        quota=InstanceGroupQuota(
            capacity=30_000_000_000,
            quota_config=(
                QuotaConfig(StorageType.ST_NFS, 10_000_000_000),
                QuotaConfig(StorageType.ST_3FS, 10_000_000_000),
                QuotaConfig(StorageType.ST_TAIRMEMPOOL, 10_000_000_000),
            ),
        ),
        cache_config=CacheConfig(
            reclaim_strategy=CacheReclaimStrategy(
                storage_unique_name=DEFAULT_STORAGE_NAME,
                reclaim_policy=ReclaimPolicy.POLICY_LRU,
                trigger_strategy=TriggerStrategy(used_percentage=0.8),
                delay_before_delete_ms=1000,
            ),
            data_storage_strategy=CachePreferStrategy.CPS_PREFER_3FS,
            meta_indexer_config=MetaIndexerConfig(
                max_key_count=1_000_000,
                mutex_shard_num=16,
                batch_key_size=16,
                meta_storage_backend_config=MetaStorageBackendConfig(storage_type="local", storage_uri=""),
                meta_cache_policy_config=MetaCachePolicyConfig(
                    capacity=10000, type="lru", cache_shard_bits=0
                ),
            ),
        ),
    )


def default_startup_config() -> tuple[StorageConfig, InstanceGroup]:
    """``(default_storage_config(), default_instance_group())``."""
    return default_storage_config(), default_instance_group()
