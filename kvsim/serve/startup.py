"""The startup configuration: the storage and instance group a fresh server creates.

``--startup-config PATH`` reads the reference's startup JSON::

    {"storage_config": {"type": "file", "global_unique_name": "nfs_01",
                        "storage_spec": {"root_path": "/tmp/nfs/", "key_count_per_file": 8}},
     "instance_group": {"name": "default", "storage_candidates": ["nfs_01"], ...,
                        "cache_config": {"cache_prefer_strategy": 2, "reclaim_strategy": {...},
                                         "meta_indexer_config": {...}}}}

This is the reference's *model* JSON, not proto JSON: the storage type is a string (``file``, ``hf3fs``,
``vcns_hf3fs``, ``mooncake``, ``pace``) with a ``storage_spec`` object, the prefer strategy is named
``cache_prefer_strategy``, quota types are storage-type strings, and enums are numbers (names are
accepted too). Missing keys keep the model's defaults and nothing is validated here; the cache validates
when the config is applied. Without a file the reference's built-in default is used, with ``nfs_01``'s
root moved into the data folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path
from typing import Any

from kvsim.cache import (
    CacheConfig,
    CachePreferStrategy,
    CacheReclaimStrategy,
    InstanceGroup,
    InstanceGroupQuota,
    MetaCachePolicyConfig,
    MetaIndexerConfig,
    MetaStorageBackendConfig,
    MooncakeStorageSpec,
    NfsStorageSpec,
    QuotaConfig,
    ReclaimPolicy,
    StorageConfig,
    StorageType,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    TriggerStrategy,
    VcnsThreeFSStorageSpec,
    default_startup_config,
)
from kvsim.core import ConfigError

_SPEC_BY_TYPE: dict[str, type] = {
    "file": NfsStorageSpec,
    "hf3fs": ThreeFSStorageSpec,
    "vcns_hf3fs": VcnsThreeFSStorageSpec,
    "mooncake": MooncakeStorageSpec,
    "pace": TairMemPoolStorageSpec,
}
_TYPE_BY_NAME = {cls.TYPE_NAME: cls.TYPE for cls in _SPEC_BY_TYPE.values()}  # type: ignore[attr-defined]
# Model-JSON spec keys that differ from the dataclass field names.
_SPEC_KEY_ALIASES = {"master_server_entry": "master_service_entry"}
# Defaults of the reference's model JSON where they differ from the proto's zeros.
_MOONCAKE_DEFAULTS = {
    "local_hostname": "localhost",
    "metadata_connstring": "http://localhost:8080/metadata",
    "protocol": "tcp",
    "master_service_entry": "localhost:50051",
}
_CACHE_POLICY_DEFAULTS = {"capacity": 1024, "type": "lru", "cache_shard_bits": 6}


def _object(doc: object, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"startup config: {where} must be a JSON object")
    return doc


def _fill(cls: type, doc: Mapping[str, Any], where: str, defaults: Mapping[str, Any] | None = None) -> Any:
    """``cls`` from the keys of ``doc`` that name its plain fields (numbers, strings, bools)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = dict(defaults or {})
    for key, value in doc.items():
        key = _SPEC_KEY_ALIASES.get(key, key)
        if key in names and not isinstance(value, Mapping | list):
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"startup config: {where}: {exc}") from None


def _enum(cls: type[IntEnum], value: object, where: str) -> IntEnum:
    try:
        return cls[value] if isinstance(value, str) else cls(value)  # type: ignore[arg-type]
    except (KeyError, ValueError):
        raise ConfigError(f"startup config: {where}: {value!r} is not a {cls.__name__}") from None


def parse_storage(doc: Mapping[str, Any]) -> StorageConfig:
    """A ``StorageConfig`` from the reference's storage model JSON."""
    type_name = doc.get("type", "")
    spec_cls = _SPEC_BY_TYPE.get(type_name)
    if spec_cls is None:
        raise ConfigError(
            f"startup config: storage_config.type: {type_name!r} is not one of {sorted(_SPEC_BY_TYPE)}"
        )
    defaults = _MOONCAKE_DEFAULTS if spec_cls is MooncakeStorageSpec else None
    spec = _fill(spec_cls, _object(doc.get("storage_spec", {}), "storage_spec"), "storage_spec", defaults)
    return StorageConfig(
        global_unique_name=str(doc.get("global_unique_name", "")),
        spec=spec,
        check_storage_available_when_open=bool(doc.get("check_storage_available_when_open", False)),
        is_available=bool(doc.get("is_available", True)),
    )


def parse_group(doc: Mapping[str, Any]) -> InstanceGroup:
    """An ``InstanceGroup`` from the reference's instance-group model JSON."""
    quota_doc = _object(doc.get("quota", {}), "quota")
    quotas = []
    for i, entry in enumerate(quota_doc.get("quota_config", [])):
        entry = _object(entry, f"quota.quota_config[{i}]")
        raw = entry.get("storage_type", 0)
        if isinstance(raw, str) and raw in _TYPE_BY_NAME:
            kind = _TYPE_BY_NAME[raw]  # the model's type strings ("file", "hf3fs", ...)
        else:
            kind = _enum(StorageType, raw, f"quota.quota_config[{i}].storage_type")
        quotas.append(QuotaConfig(StorageType(kind), int(entry.get("capacity", 0))))
    cache_doc = _object(doc.get("cache_config", {}), "cache_config")
    reclaim_doc = _object(cache_doc.get("reclaim_strategy", {}), "reclaim_strategy")
    indexer_doc = _object(cache_doc.get("meta_indexer_config", {}), "meta_indexer_config")
    reclaim = dataclasses.replace(
        _fill(CacheReclaimStrategy, reclaim_doc, "reclaim_strategy"),
        reclaim_policy=_enum(ReclaimPolicy, reclaim_doc.get("reclaim_policy", 0), "reclaim_policy"),
        trigger_strategy=_fill(
            TriggerStrategy,
            _object(reclaim_doc.get("trigger_strategy", {}), "trigger_strategy"),
            "trigger_strategy",
        ),
    )
    indexer = dataclasses.replace(
        _fill(MetaIndexerConfig, indexer_doc, "meta_indexer_config"),
        meta_storage_backend_config=_fill(
            MetaStorageBackendConfig,
            _object(indexer_doc.get("meta_storage_backend_config", {}), "meta_storage_backend_config"),
            "meta_storage_backend_config",
        ),
        meta_cache_policy_config=_fill(
            MetaCachePolicyConfig,
            _object(indexer_doc.get("meta_cache_policy_config", {}), "meta_cache_policy_config"),
            "meta_cache_policy_config",
            _CACHE_POLICY_DEFAULTS,
        ),
    )
    strategy = _enum(CachePreferStrategy, cache_doc.get("cache_prefer_strategy", 0), "cache_prefer_strategy")
    return dataclasses.replace(
        _fill(InstanceGroup, doc, "instance_group"),
        storage_candidates=tuple(str(n) for n in doc.get("storage_candidates", [])),
        quota=InstanceGroupQuota(int(quota_doc.get("capacity", 0)), tuple(quotas)),
        cache_config=CacheConfig(reclaim, CachePreferStrategy(strategy), indexer),
    )


def load_startup_config(path: Path) -> tuple[StorageConfig | None, InstanceGroup | None]:
    """The storage and group of a startup JSON file (either may be absent).

    Raises:
        ConfigError: the file cannot be read, is not JSON, or a value has the wrong kind.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--startup-config {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--startup-config {path}: not JSON: {exc}") from None
    doc = _object(doc, "the document")
    storage = (
        parse_storage(_object(doc["storage_config"], "storage_config")) if "storage_config" in doc else None
    )
    group = parse_group(_object(doc["instance_group"], "instance_group")) if "instance_group" in doc else None
    return storage, group


def default_serve_startup(data_dir: Path) -> tuple[StorageConfig, InstanceGroup]:
    """The reference's built-in startup config with ``nfs_01`` rooted at ``<data_dir>/nfs/``."""
    storage, group = default_startup_config()
    assert isinstance(storage.spec, NfsStorageSpec)
    # The root must end with "/": the reference appends file names to it by plain concatenation.
    root = str(data_dir.resolve() / "nfs") + "/"
    return dataclasses.replace(storage, spec=dataclasses.replace(storage.spec, root_path=root)), group
