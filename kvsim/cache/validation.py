"""Input checks shared by the manager's operations.

Every check raises ``CacheError(INVALID_ARGUMENT, "<field>: <why>")`` through
:func:`kvsim.cache.errors.invalid`; nothing here changes state, so an operation validates everything
before it touches the store and a failed call applies nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvsim.cache.errors import invalid
from kvsim.cache.keys import _as_int_list, block_keys
from kvsim.cache.types import (
    BlockMask,
    CachePreferStrategy,
    InstanceGroup,
    InstanceInfo,
    KeyList,
    LocalStorageSpec,
    MooncakeStorageSpec,
    NfsStorageSpec,
    StorageConfig,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
)


def require_str(field: str, value: object) -> str:
    """``value`` must be a non-empty string."""
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise invalid(field, "is required")
    return value


def require_int(field: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` must be an int (not a bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise invalid(field, f"must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise invalid(field, f"must be >= {minimum}, got {value}")
    return value


def resolve_keys(
    info: InstanceInfo,
    keys: KeyList,
    token_ids: KeyList,
    limit: int,
) -> list[int]:
    """The request's block keys: ``keys`` if non-empty, else derived from ``token_ids``.

    Raises:
        CacheError: INVALID_ARGUMENT when both are empty, values are not int64, or there are more than
            ``limit`` keys.
    """
    if len(keys):
        if len(keys) > limit:
            raise invalid("block_keys", f"{len(keys)} keys exceed the per-request limit of {limit}")
        return _as_int_list(keys, "block_keys")
    if len(token_ids):
        if len(token_ids) // info.block_size > limit:
            raise invalid(
                "token_ids",
                f"{len(token_ids) // info.block_size} blocks exceed the per-request limit of {limit}",
            )
        return block_keys(token_ids, info.block_size)
    raise invalid("block_keys", "block_keys or token_ids must be non-empty")


def check_mask(field: str, mask: BlockMask | None, n: int, *, exact: bool = False) -> None:
    """Validate a block mask over ``n`` keys.

    Read masks (``exact=False``) follow the reference: an offset or a bool list may reach past the keys
    (the reference's own client tests send an offset of 6 and a 4-entry list for 3 keys), only a
    negative offset is refused. A FinishWriteCache mask (``exact=True``) must fit the session: an offset
    ``<= n`` or exactly ``n`` bools (kvsim fix, COMPAT "mask length").
    """
    if mask is None:
        return
    if not isinstance(mask, BlockMask):
        raise invalid(field, f"must be a BlockMask, got {type(mask).__name__}")
    if mask.offset is not None:
        offset = require_int(f"{field}.offset", mask.offset, minimum=0)
        if exact and offset > n:
            raise invalid(f"{field}.offset", f"{offset} is past the {n} blocks of the session")
        return
    assert mask.bool_masks is not None
    size = len(mask.bool_masks)
    if exact and size != n:
        raise invalid(f"{field}.bool_masks", f"has {size} values, the session has {n} blocks")


def check_names(field: str, names: Sequence[str]) -> tuple[str, ...]:
    """A sequence of non-empty strings."""
    if isinstance(names, str):
        raise invalid(field, "must be a list of names, not a string")
    out = tuple(names)
    for i, name in enumerate(out):
        require_str(f"{field}[{i}]", name)
    return out


def check_storage_config(config: object) -> StorageConfig:
    """The reference's AddStorage rules (spec-specific required fields), plus type checks."""
    if not isinstance(config, StorageConfig):
        raise invalid("storage", "is required")
    require_str("storage.global_unique_name", config.global_unique_name)
    spec = config.spec
    if spec is None or isinstance(spec, LocalStorageSpec):
        raise invalid("storage.spec", "must be one of nfs, threefs, vcnsthreefs, mooncake, tair_mem_pool")
    if isinstance(spec, NfsStorageSpec):
        require_str("storage.nfs.root_path", spec.root_path)
        require_int("storage.nfs.key_count_per_file", spec.key_count_per_file)
    elif isinstance(spec, ThreeFSStorageSpec | VcnsThreeFSStorageSpec):
        prefix = "storage.threefs" if isinstance(spec, ThreeFSStorageSpec) else "storage.vcnsthreefs"
        require_str(f"{prefix}.mountpoint", spec.mountpoint)
        require_str(f"{prefix}.root_dir", spec.root_dir)
        require_int(f"{prefix}.key_count_per_file", spec.key_count_per_file)
        if isinstance(spec, VcnsThreeFSStorageSpec):
            require_str(f"{prefix}.remote_host", spec.remote_host)
            require_int(f"{prefix}.remote_port", spec.remote_port, minimum=1)
            require_str(f"{prefix}.meta_storage_uri", spec.meta_storage_uri)
    elif isinstance(spec, MooncakeStorageSpec):
        require_str("storage.mooncake.local_hostname", spec.local_hostname)
        require_str("storage.mooncake.metadata_connstring", spec.metadata_connstring)
        require_str("storage.mooncake.protocol", spec.protocol)
        if spec.protocol == "rdma":
            require_str("storage.mooncake.rdma_device", spec.rdma_device)
    elif isinstance(spec, TairMemPoolStorageSpec):
        require_str("storage.tair_mem_pool.domain", spec.domain)
    return config


def check_instance_group(group: object) -> InstanceGroup:
    """The reference's Create/UpdateInstanceGroup rules, plus type checks of the numbers kvsim uses."""
    if not isinstance(group, InstanceGroup):
        raise invalid("instance_group", "is required")
    require_str("instance_group.name", group.name)
    candidates = check_names("instance_group.storage_candidates", group.storage_candidates)
    if not candidates:
        raise invalid("instance_group.storage_candidates", "needs at least one storage name")
    require_str("instance_group.global_quota_group_name", group.global_quota_group_name)
    require_int("instance_group.quota.capacity", group.quota.capacity)
    for i, qc in enumerate(group.quota.quota_config):
        require_int(f"instance_group.quota.quota_config[{i}].capacity", qc.capacity)
    cc = group.cache_config
    if cc is None:
        raise invalid("instance_group.cache_config", "is required")
    if cc.data_storage_strategy == CachePreferStrategy.CPS_UNSPECIFIED:
        raise invalid("instance_group.cache_config.data_storage_strategy", "must not be CPS_UNSPECIFIED")
    require_str(
        "instance_group.cache_config.reclaim_strategy.storage_unique_name",
        cc.reclaim_strategy.storage_unique_name,
    )
    mic = cc.meta_indexer_config
    require_str(
        "instance_group.cache_config.meta_indexer_config.meta_storage_backend_config.storage_type",
        mic.meta_storage_backend_config.storage_type,
    )
    require_str(
        "instance_group.cache_config.meta_indexer_config.meta_cache_policy_config.type",
        mic.meta_cache_policy_config.type,
    )
    require_int("instance_group.cache_config.meta_indexer_config.max_key_count", mic.max_key_count, minimum=0)
    require_int("instance_group.version", group.version)
    return group
