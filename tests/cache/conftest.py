"""Fixtures and builders for the cache tests: a manual clock, a seeded manager with the reference's
startup config (storage ``nfs_01``, group ``default``) and helpers that shorten common requests."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kvsim.cache import (
    BlockMask,
    CacheManager,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecGroup,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
    StartWriteCacheResult,
    default_startup_config,
)
from kvsim.cache.backends import BackendFactory
from kvsim.cache.store import CacheStore
from kvsim.core import ManualClock, make_rng

T0 = 1000.0


def make_manager(
    clock: ManualClock | None = None,
    seed: int = 0,
    *,
    store: CacheStore | None = None,
    backend_factory: BackendFactory | None = None,
    defaults: bool = True,
    **kwargs: object,
) -> CacheManager:
    """A manager on a manual clock with cheap password hashing and (by default) the startup config."""
    mgr = CacheManager(
        clock or ManualClock(T0),
        make_rng(seed),
        store=store,
        backend_factory=backend_factory,
        password_iterations=1_000,
        **kwargs,  # type: ignore[arg-type]
    )
    if defaults:
        mgr.apply_startup_config(*default_startup_config())
    return mgr


def register(
    mgr: CacheManager,
    instance_id: str = "i1",
    *,
    specs: Sequence[tuple[str, int]] = (("tp0", 1024),),
    block_size: int = 128,
    group: str = "default",
    spec_groups: Sequence[tuple[str, Sequence[str]]] = (),
    model: ModelDeployment | None = None,
) -> str:
    """Register an instance; return its ``storage_configs`` JSON."""
    result = mgr.register_instance(
        RegisterInstanceRequest(
            instance_group=group,
            instance_id=instance_id,
            block_size=block_size,
            location_spec_infos=tuple(LocationSpecInfo(n, s) for n, s in specs),
            model_deployment=model or ModelDeployment(model_name="m", dtype="bfloat16", tp_size=1),
            location_spec_groups=tuple(LocationSpecGroup(n, tuple(m)) for n, m in spec_groups),
        )
    )
    return result.storage_configs


def start(
    mgr: CacheManager,
    keys: Sequence[int],
    *,
    instance_id: str = "i1",
    timeout: int = 30,
    groups: Sequence[str] = (),
) -> StartWriteCacheResult:
    """StartWriteCache for block keys."""
    return mgr.start_write_cache(
        StartWriteCacheRequest(
            instance_id=instance_id,
            block_keys=list(keys),
            write_timeout_seconds=timeout,
            location_spec_group_names=tuple(groups),
        )
    )


def finish(mgr: CacheManager, session: str, mask: BlockMask, *, instance_id: str = "i1") -> object:
    """FinishWriteCache."""
    return mgr.finish_write_cache(
        FinishWriteCacheRequest(instance_id=instance_id, write_session_id=session, success_blocks=mask)
    )


def write(mgr: CacheManager, keys: Sequence[int], *, instance_id: str = "i1") -> StartWriteCacheResult:
    """Start and finish a write of every new key, all successful."""
    res = start(mgr, keys, instance_id=instance_id)
    finish(mgr, res.write_session_id, BlockMask(offset=len(res.locations)), instance_id=instance_id)
    return res


def prefix(
    mgr: CacheManager,
    keys: Sequence[int],
    mask: BlockMask | None = None,
    *,
    instance_id: str = "i1",
) -> tuple:
    """QT_PREFIX_MATCH locations."""
    return mgr.get_cache_location(
        GetCacheLocationRequest(
            instance_id=instance_id,
            query_type=QueryType.QT_PREFIX_MATCH,
            block_keys=list(keys),
            block_mask=mask,
        )
    ).locations


def uris(locations: Sequence) -> list[list[str]]:
    """The URIs of each location."""
    return [[s.uri for s in loc.location_specs] for loc in locations]


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at T0."""
    return ManualClock(T0)


@pytest.fixture
def mgr(clock: ManualClock) -> CacheManager:
    """A manager with the startup config and instance ``i1`` (block 128, spec tp0 of 1024 bytes)."""
    m = make_manager(clock)
    register(m)
    return m
