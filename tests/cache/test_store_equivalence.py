"""The same seeded operation sequence gives identical results on the memory, sqlite and redis stores.

A generator (seeded, independent of the manager's) writes a script of manager calls: two-phase writes
with random masks and timeouts, the three query types, GetCacheMeta, RemoveCache, the three trims,
polls that move the clock (expiring sessions, running the reclaimer against a tight ``max_key_count``
and the deletions it queues), reclaimer samples straight from the store, and restarts (a new manager
over the reopened store, which recovers). The script runs once per store; every result, error, event
and the final contents of the index must be equal. Anything a store's own order (insertion, B-tree,
Redis hash) could leak into — victims, deletion order, events — is therefore checked too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    QueryType,
    RemoveCacheRequest,
    TrimCacheRequest,
    TrimStrategy,
)
from kvsim.cache.events import EventLog, MemorySink
from kvsim.cache.reclaim import ReclaimerConfig
from kvsim.cache.store import CacheStore, MemoryStore, SqliteStore
from kvsim.core import ManualClock, make_rng

from .conftest import T0, finish, make_manager, register, start
from .redis_server import RedisServer, require_redis_server

INSTANCES = ("i1", "i2")
KEY_POOL = 90  # keys per instance: more than max_key_count, so writes are refused and reclaimed
MAX_KEYS = 40
QUERY_TYPES = (QueryType.QT_PREFIX_MATCH, QueryType.QT_BATCH_GET, QueryType.QT_REVERSE_ROLL_SW_MATCH)
Op = tuple[Any, ...]


def script(seed: int, steps: int) -> list[Op]:
    """A random but reproducible list of operations (plain data, no store involved)."""
    r = np.random.default_rng(seed)  # test data only, never the manager's generator
    ops: list[Op] = []
    started = 0

    def keys(low: int = 1, high: int = 12) -> list[int]:
        n = int(r.integers(low, high + 1))
        base = int(r.integers(0, KEY_POOL - n + 1))
        if r.random() < 0.7:  # a run of consecutive keys (prefixes overlap across calls)
            return [base * 7919 - 300_000 + i * 7919 for i in range(n)]
        return [int(k) * 7919 - 300_000 for k in r.choice(KEY_POOL, size=n, replace=False)]

    for _ in range(steps):
        inst = INSTANCES[int(r.integers(0, 2))]
        p = r.random()
        if p < 0.30:
            ops.append(("start", inst, keys(), int(r.integers(0, 6))))
            started += 1
        elif p < 0.52 and started:
            which = int(r.integers(max(0, started - 4), started))
            kind = ("offset", "bools", "all")[int(r.integers(0, 3))]
            ops.append(("finish", which, kind, int(r.integers(0, 1 << 30))))
        elif p < 0.70:
            ks = keys(1, 16)
            ops.append(("get", inst, int(r.integers(0, 3)), ks, int(r.integers(1, len(ks) + 1))))
        elif p < 0.74:
            ops.append(("meta", inst, keys()))
        elif p < 0.79:
            ops.append(("remove", inst, keys(1, 4)))
        elif p < 0.82:
            strategy = (TrimStrategy.TS_TIMESTAMP,) * 4 + (
                TrimStrategy.TS_REMOVE_ALL_META,
                TrimStrategy.TS_REMOVE_ALL_CACHE,
            )
            chosen = strategy[int(r.integers(0, len(strategy)))]
            begin = int(T0) + int(r.integers(0, 30))
            ops.append(("trim", inst, chosen, begin, begin + int(r.integers(0, 10))))
        elif p < 0.93:
            ops.append(("poll", float(r.integers(0, 4)) + 0.25 * int(r.integers(0, 4))))
        elif p < 0.97:
            ops.append(("sample", inst, int(r.integers(1, 30)), int(r.integers(0, 1000))))
        else:
            ops.append(("restart",))
    return ops


StoreOpener = Callable[[], CacheStore]


def run(ops: list[Op], open_store: StoreOpener) -> list[Any]:
    """Execute ``ops`` on managers over ``open_store()``; return everything observable."""
    clock = ManualClock(T0)
    sink = MemorySink()
    restarts = 0

    def manager() -> CacheManager:
        return make_manager(
            clock,
            seed=100 + restarts,
            store=open_store(),
            events=EventLog(sink, buffer_size=1),
            reclaimer=ReclaimerConfig(sampling_size=12, batch_size=4, interval_s=0.0),
        )

    mgr = manager()
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    cc = group.cache_config
    tight = dataclasses.replace(
        cc,
        meta_indexer_config=dataclasses.replace(cc.meta_indexer_config, max_key_count=MAX_KEYS),
        # Reclaim above half of the keys: the reclaimer samples and deletes often.
        reclaim_strategy=dataclasses.replace(
            cc.reclaim_strategy,
            trigger_strategy=dataclasses.replace(cc.reclaim_strategy.trigger_strategy, used_percentage=0.5),
        ),
    )
    mgr.update_instance_group(dataclasses.replace(group, cache_config=tight, version=group.version + 1), 0)
    for inst in INSTANCES:
        register(mgr, inst, specs=(("tp0", 512), ("tp1", 512)))
    out: list[Any] = []
    sessions: list[tuple[str, str, int]] = []  # (instance, session id, locations) per start

    for op in ops:
        kind = op[0]
        try:
            if kind == "start":
                _, inst, keys, timeout = op
                res = start(mgr, keys, instance_id=inst, timeout=timeout)
                sessions.append((inst, res.write_session_id, len(res.locations)))
                out.append(res)
            elif kind == "finish":
                _, which, mask_kind, bits = op
                inst, sid, n = sessions[which]
                if mask_kind == "offset":
                    mask = BlockMask(offset=bits % (n + 1))
                elif mask_kind == "bools":
                    mask = BlockMask(bool_masks=tuple(bool(bits >> i & 1) for i in range(n)))
                else:
                    mask = BlockMask(offset=n)
                out.append(finish(mgr, sid, mask, instance_id=inst))
            elif kind == "get":
                _, inst, qt, keys, sw = op
                out.append(
                    mgr.get_cache_location(
                        GetCacheLocationRequest(
                            instance_id=inst, query_type=QUERY_TYPES[qt], block_keys=keys, sw_size=sw
                        )
                    )
                )
            elif kind == "meta":
                out.append(mgr.get_cache_meta(GetCacheMetaRequest(instance_id=op[1], block_keys=op[2])))
            elif kind == "remove":
                out.append(mgr.remove_cache(RemoveCacheRequest(instance_id=op[1], block_keys=op[2])))
            elif kind == "trim":
                _, inst, strategy, begin, end = op
                out.append(
                    mgr.trim_cache(
                        TrimCacheRequest(
                            instance_id=inst, strategy=strategy, begin_timestamp=begin, end_timestamp=end
                        )
                    )
                )
            elif kind == "poll":
                clock.advance(op[1])
                out.append(mgr.poll())
            elif kind == "sample":
                out.append(("sample", mgr.store.meta_sample(op[1], op[2], make_rng(op[3]))))
            else:  # restart: the process dies (no close, nothing flushed); a new one opens the store
                restarts += 1
                mgr = manager()
                out.append(("restarted", mgr.num_pending_deletions()))
        except CacheError as exc:
            out.append(("error", kind, exc.code, exc.message))
            if kind == "start":  # finishing it later must fail the same way everywhere
                sessions.append((op[1], "refused-start", 0))
    clock.advance(30)
    out.append(mgr.poll())
    out.append(("final", dump(mgr.store)))
    out.append(("events", sink.records))
    mgr.close()
    return out


def dump(store: CacheStore) -> dict[str, list[Any]]:
    """Every record of every instance, by key."""
    out: dict[str, list[Any]] = {}
    for inst in store.meta_instances():
        keys: list[int] = []
        cursor = ""
        while True:
            page, cursor = store.meta_scan(inst, cursor, 7)
            keys.extend(page)
            if not cursor:
                break
        keys.sort()
        out[inst] = list(zip(keys, store.meta_get(inst, keys), strict=True))
    return out


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for this module. Every hash uses a real hash table (not the insertion-ordered
    listpack Redis keeps for small hashes), so its scan order differs from the memory store's."""
    require_redis_server()
    with RedisServer(
        tmp_path_factory.mktemp("redis-eq"), extra_args=("--hash-max-listpack-entries", "0")
    ) as srv:
        yield srv


def openers(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreOpener:
    """A function that (re)opens one store of ``kind`` over the same data."""
    if kind == "memory":
        memory = MemoryStore()
        return lambda: memory
    if kind == "sqlite":
        return lambda: SqliteStore(tmp_path / "eq.db")
    srv: RedisServer = request.getfixturevalue("redis_srv")
    srv.flush()
    from kvsim.cache.store.redis import RedisStore

    return lambda: RedisStore(srv.url)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_same_sequence_same_results(
    seed: int, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ops = script(seed, 260)
    assert {op[0] for op in ops} >= {"start", "finish", "get", "poll", "sample", "restart"}
    expected = run(ops, openers("memory", tmp_path, request))
    got = run(ops, openers(kind, tmp_path, request))
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == b, f"step {i}: {ops[i] if i < len(ops) else 'end'}"
    # The sequence did exercise what it is meant to compare.
    assert any(isinstance(x, tuple) and x[0] == "error" for x in expected)
    assert sum(getattr(x, "reclaimed_locations", 0) for x in expected) > 0
    assert any(getattr(x, "expired_sessions", 0) for x in expected)
