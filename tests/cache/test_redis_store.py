"""The redis store against a real ``redis-server`` started by the tests (loopback, free port, temp dir):
the store contract, the key layout, one round trip per call, errors at start, and a Redis restart with
the append-only file on. Skipped, with the reason, where ``redis-server`` is not installed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import BlockMask, GetCacheLocationRequest, QueryType
from kvsim.cache.store import StoreError, StoreOpenError, open_store
from kvsim.cache.types import LocationStatus
from kvsim.core import ManualClock, make_rng

from .conftest import T0, finish, make_manager, prefix, register, start, write
from .redis_server import RedisServer, free_port, require_redis_server
from .store_contract import PersistentStoreContract, StoreFactory, loc, rec


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for this module (emptied before each test that uses ``fresh``)."""
    require_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def fresh(server: RedisServer) -> RedisServer:
    """The module's server, emptied."""
    server.flush()
    return server


def redis_store(url: str, **kwargs: object) -> object:
    from kvsim.cache.store.redis import RedisStore

    return RedisStore(url, **kwargs)  # type: ignore[arg-type]


class TestRedisStore(PersistentStoreContract):
    """The contract against :class:`RedisStore` (reopened = a new client on the same server)."""

    @pytest.fixture
    def make_store(self, fresh: RedisServer) -> StoreFactory:
        return lambda: redis_store(fresh.url)  # type: ignore[return-value]


class TestRedisStoreNoMemo(TestRedisStore):
    """The contract again with the decode memo off."""

    @pytest.fixture
    def make_store(self, fresh: RedisServer) -> StoreFactory:
        return lambda: redis_store(fresh.url, decode_cache=0)  # type: ignore[return-value]


def raw(server: RedisServer) -> Any:
    """A plain redis-py client of the server (to look at the layout)."""
    import redis

    return redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)


# ----------------------------------------------------------------------------------- layout


def test_layout_one_hash_per_instance_and_registry_hashes(fresh: RedisServer) -> None:
    store = open_store(f"{fresh.url}?cluster_name=c1&timeout_ms=500")
    store.meta_write(
        "i1", {-5: rec(loc("aaaaaaaa"), created=1.5, last=2.25, hits=3), 7: rec(loc("bbbbbbbb"))}
    )
    store.registry_write("storage", {"nfs_01": '{"x":1}'})
    r = raw(fresh)
    assert sorted(r.keys("*")) == [
        "kvcache:instance_i1:cache",
        "kvcache:schema_version",
        "kvcache_registry:c1:storage",
    ]
    assert r.hget("kvcache:instance_i1:cache", "-5") == (
        '1.5 2.25 3 [["aaaaaaaa",3,4,1,"nfs_01",64,[["tp0","file://nfs_01/data/aaaaaaaa?size=64"]]]]'
    )
    assert r.hgetall("kvcache_registry:c1:storage") == {"nfs_01": '{"x":1}'}
    assert r.get("kvcache:schema_version") == "1"
    # Another cluster name is another registry; the meta index is shared by instance id.
    other = open_store(f"{fresh.url}?cluster_name=c2")
    assert other.registry_load()["storage"] == {}
    assert other.meta_key_count("i1") == 2
    # The last field gone, Redis drops the hash: the instance disappears.
    store.meta_write("i1", {}, [-5, 7])
    assert r.exists("kvcache:instance_i1:cache") == 0 and store.meta_instances() == []
    store.close()
    other.close()


def test_touch_keeps_exact_times_and_counts(fresh: RedisServer) -> None:
    store = redis_store(fresh.url)
    t = 1_765_432_109.123_456_7  # needs 17 significant digits
    store.meta_write("i1", {1: rec(loc("aaaaaaaa"), last=t, hits=2**40)})
    store.meta_touch("i1", {1: (t - 1e-6, 1), 2: (9.0, 1)})  # an older time; an absent key
    assert store.meta_get("i1", [1, 2]) == [rec(loc("aaaaaaaa"), last=t, hits=2**40 + 1), None]
    later = t + 1e-6
    store.meta_touch("i1", {1: (later, 5)})
    assert store.meta_get("i1", [1])[0].last_access == later
    assert store.meta_get("i1", [1])[0].access_count == 2**40 + 6
    store.close()


def test_scan_pages_through_a_large_hash(fresh: RedisServer) -> None:
    """Above 128 fields Redis keeps a real hash table: HSCAN pages by cursor instead of one reply."""
    store = redis_store(fresh.url)
    keys = list(range(-1000, 1500, 3))
    store.meta_write("i1", {k: rec(loc("aaaaaaaa")) for k in keys})
    seen: list[int] = []
    cursor, pages = "", 0
    while True:
        page, cursor = store.meta_scan("i1", cursor, 100)
        assert len(page) <= 100
        seen.extend(page)
        pages += 1
        if not cursor:
            break
    assert sorted(seen) == keys and len(seen) == len(keys) and pages >= 9
    with pytest.raises(StoreError, match="malformed cursor"):
        store.meta_scan("i1", "x", 10)
    store.close()


def test_one_round_trip_per_store_call_and_per_manager_read(
    fresh: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    sends: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: object, command: object, check_health: bool = True) -> None:
        sends.append(1)
        original(self, command, check_health)  # type: ignore[arg-type]

    store = redis_store(fresh.url)
    clock = ManualClock(T0)
    mgr = make_manager(clock, store=store)  # type: ignore[arg-type]
    register(mgr)
    write(mgr, list(range(64)))
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)

    def trips(fn: object) -> int:
        sends.clear()
        fn()  # type: ignore[operator]
        return len(sends)

    request = GetCacheLocationRequest(
        instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=list(range(64))
    )
    assert trips(lambda: mgr.get_cache_location(request)) == 1  # one HMGET for 64 keys
    session = start(mgr, list(range(60, 80)))
    assert (
        trips(lambda: finish(mgr, session.write_session_id, BlockMask(offset=len(session.locations)))) == 2
    )  # read + write
    assert trips(lambda: store.meta_write("i1", {1: rec(loc("x"))}, [2, 3])) == 1  # MULTI..EXEC
    assert trips(lambda: store.registry_load()) == 1
    assert trips(lambda: mgr.poll()) == 1  # the buffered statistics: one script call
    many = {k: (T0 + 1, 1) for k in range(2_500)}  # three EVALSHA of at most 1,000 keys, one pipeline
    assert trips(lambda: store.meta_touch("i1", many)) == 1
    mgr.close()


def test_touch_reloads_a_flushed_script(fresh: RedisServer) -> None:
    store = redis_store(fresh.url)
    store.meta_write("i1", {1: rec(loc("aaaaaaaa"), last=2.0, hits=0)})
    raw(fresh).script_flush()  # as after a Redis restart: the script cache is empty
    store.meta_touch("i1", {1: (5.0, 2)})
    assert store.meta_get("i1", [1]) == [rec(loc("aaaaaaaa"), last=5.0, hits=2)]
    store.close()
    with pytest.raises(StoreError, match="used after close"):
        store.meta_get("i1", [1])


def test_sample_walks_the_hash_and_matches_the_memory_store(fresh: RedisServer) -> None:
    from kvsim.cache.store import MemoryStore

    stores = [MemoryStore(), redis_store(fresh.url)]
    keys = [(k * 7919) % 2000 - 1000 for k in range(500)]
    for store in stores:
        store.meta_write("i1", {k: rec(loc("aaaaaaaa")) for k in keys})
    samples = [store.meta_sample("i1", 40, make_rng(9)) for store in stores]
    assert samples[0] == samples[1] and len(samples[1]) == 40
    assert stores[1].meta_sample("i1", 1000, make_rng(9)) == sorted(keys)
    stores[1].close()


# ----------------------------------------------------------------------------------- errors at start


def test_nothing_listening_is_one_clear_error() -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'kvsim[all]')")
    port = free_port()
    with pytest.raises(
        StoreOpenError, match=rf"redis store 127.0.0.1:{port}: does not answer: ConnectionError"
    ):
        open_store(f"redis://127.0.0.1:{port}?timeout_ms=200&retry_count=0")


def test_a_server_that_never_replies_times_out_at_start() -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'kvsim[all]')")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept connections and never answer
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with pytest.raises(StoreOpenError, match=rf"127.0.0.1:{port}: does not answer: TimeoutError"):
            open_store(f"redis://127.0.0.1:{port}?timeout_ms=150&retry_count=1")
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_bad_uris_are_refused() -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'kvsim[all]')")
    with pytest.raises(StoreOpenError, match=r"unknown parameter 'auth' \(known: \['client_max_pool_size'"):
        open_store("redis://127.0.0.1:6379?auth=123456")  # the reference's docs show it; the code ignores it
    with pytest.raises(StoreOpenError, match="bad value timeout_ms='0'"):
        open_store("redis://127.0.0.1:6379?timeout_ms=0")
    with pytest.raises(StoreOpenError, match="bad port"):
        open_store("redis://127.0.0.1:notaport")
    with pytest.raises(StoreOpenError, match="no host"):
        open_store("redis://:6379")


def test_uri_forms() -> None:
    """The reference's URI: a bare userinfo is the password; ``user:password`` an ACL user."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'kvsim[all]')")
    from kvsim.cache.store.redis import parse_uri

    bare = parse_uri("redis://s3cret@10.0.0.1?timeout_ms=5&client_min_pool_size=2")
    assert (bare["host"], bare["port"], bare["username"], bare["password"]) == (
        "10.0.0.1",
        6379,
        None,
        "s3cret",
    )
    assert (bare["timeout_ms"], bare["retry_count"], bare["client_max_pool_size"], bare["tls"]) == (
        5,
        2,
        16,
        False,
    )
    acl = parse_uri("rediss://app:p%40ss@redis.local:6380/?cluster_name=prod&db=3")
    assert (acl["username"], acl["password"], acl["port"], acl["tls"]) == ("app", "p@ss", 6380, True)
    assert (acl["cluster_name"], acl["db"]) == ("prod", 3)
    with pytest.raises(StoreOpenError, match="must start with redis://"):
        parse_uri("http://h:1")
    with pytest.raises(StoreOpenError, match="unexpected path '/0'"):
        parse_uri("redis://h:1/0")
    with pytest.raises(StoreOpenError, match="bad value cluster_name=''"):
        parse_uri("redis://h:1?cluster_name=")


def test_password_and_layout_version_are_checked_at_start(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "auth", extra_args=("--requirepass", "s3cret")) as srv:
        with pytest.raises(StoreOpenError, match="does not answer: AuthenticationError") as err:
            open_store(f"redis://wrong@127.0.0.1:{srv.port}?timeout_ms=500")
        assert "wrong" not in str(err.value)  # the password is never printed
        store = open_store(f"redis://s3cret@127.0.0.1:{srv.port}")
        store.close()
        import redis

        redis.Redis(port=srv.port, password="s3cret").set("kvcache:schema_version", "2")
        with pytest.raises(StoreOpenError, match=r"layout version 2 is newer than this kvsim's \(1\)"):
            open_store(f"redis://s3cret@127.0.0.1:{srv.port}")


def test_the_cache_package_does_not_import_redis_py() -> None:
    code = "import sys, kvsim.cache, kvsim.cache.store; assert 'redis' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------- restart


def test_redis_restart_with_aof_keeps_everything_acknowledged(tmp_path: Path) -> None:
    """kill -9 of redis-server with ``appendonly yes``: the manager's client reconnects by itself, every
    acknowledged write and registration is there, and a new manager recovers the open write."""
    with RedisServer(tmp_path / "aof", appendonly=True) as srv:
        clock = ManualClock(T0)
        mgr = make_manager(clock, store=redis_store(srv.url + "?retry_count=3"))  # type: ignore[arg-type]
        register(mgr)
        register(mgr, "i2")
        write(mgr, [1, 2, 3])
        write(mgr, [10, 11], instance_id="i2")
        open_session = start(mgr, [4])
        srv.restart()  # SIGKILL, then start on the same port and directory
        assert len(prefix(mgr, [1, 2, 3, 4])) == 3  # the same client, reconnected
        write(mgr, [5])  # and it writes again
        assert len(prefix(mgr, [1, 2, 3, 4, 5])) == 3
        srv.restart()  # the write just acknowledged survives a second kill -9
        assert len(prefix(mgr, [5])) == 1
        assert len(prefix(mgr, [10, 11], instance_id="i2")) == 2
        record = mgr.store.meta_get("i1", [4])[0]
        assert record is not None and record.locations[0].status == LocationStatus.CLS_WRITING
        mgr.store.close()

        # A new manager (a standby taking over) over the restarted server.
        mgr = make_manager(ManualClock(T0 + 1), store=redis_store(srv.url))  # type: ignore[arg-type]
        assert [i.instance_id for i in mgr.list_instance_info()] == ["i1", "i2"]
        assert len(prefix(mgr, [1, 2, 3])) == 3
        assert [x.status for x in mgr.store.meta_get("i1", [4])[0].locations] == [LocationStatus.CLS_DELETING]
        assert open_session.write_session_id  # that session died with the old manager
        mgr.poll(T0 + 100)
        assert mgr.store.meta_get("i1", [4]) == [None]
        mgr.close()
