"""Leader election between real ``kvsim serve`` processes: two nodes sharing one Redis store (a real
redis-server, started for this module) or one sqlite file under a ``file:///dir`` lock.

Covers the reference's HA integration tests (study §7: test_leader_election_with_file_lock,
test_leader_switch_when_worker_stops, test_leader_demote) and the issue's: exactly one leader; the follower
answers SERVER_NOT_LEADER on leader-only RPCs and everything else normally; killing the leader promotes the
other within the lease, and the survivor serves what the dead one acknowledged; a restarted node follows;
LeaderDemote hands over at once and its campaign delay keeps the old leader out; SIGTERM on a leader
releases the lock, so the follower takes over without waiting for the lease.

Every node uses the reference's test lease (2000 ms) and a 100 ms election loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvsim.cache import (
    BlockMask,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    GetInstanceInfoRequest,
    QueryType,
)

from ..cache.redis_server import RedisServer
from .serve_process import (
    LEASE_MS,
    LOOP_MS,
    ServeProcess,
    error_code,
    ha_config,
    is_leader,
    node_factory,
    register,
    served_uris,
    start_write,
    wait_until,
    write,
)

Nodes = Callable[..., ServeProcess]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (skipped without the binary, a failure under CI=true)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Makes ``kvsim serve`` processes; kills them all at the end."""
    yield from node_factory(tmp_path)


def redis_pair(nodes: Nodes, tmp_path: Path, server: RedisServer) -> tuple[ServeProcess, ServeProcess]:
    """Start ``a`` (which becomes the leader), then ``b``, both over the Redis store (and, by default,
    its lock)."""
    server.flush()
    config = ha_config(tmp_path)
    # Short store timeouts: a leader stops admitting requests one store call (250 ms x 2 attempts) before
    # its lease ends, which the 2000 ms test lease must leave room for.
    store = f"{server.url}?timeout_ms=250&retry_count=1"
    args = ("--meta-store", store, "--storage-backend", "simulated", "--config", str(config))
    a = nodes("a", *args).start()
    a.wait_ready()
    b = nodes("b", *args).start()
    b.wait_ready()
    return a, b


def leaders(*group: ServeProcess) -> list[str]:
    """The names of the nodes that say they lead."""
    return [node.name for node in group if is_leader(node)]


@pytest.mark.slow
def test_failover_on_redis_promotes_the_follower_within_the_lease(
    nodes: Nodes, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = redis_pair(nodes, tmp_path, redis_server)
    assert leaders(a, b) == ["a"]
    with a.client("grpc") as ca, b.client("http") as cb:
        info_a, info_b = ca.get_manager_cluster_info(), cb.get_manager_cluster_info()
        assert (info_a.self_node_id, info_a.leader_node_id) == ("a", "a")
        assert (info_b.self_node_id, info_b.leader_node_id, info_b.self_leader_expiration_time) == (
            "b",
            "a",
            -1,
        )
        assert info_a.self_leader_expiration_time > time.time() * 1e6
        # The follower refuses leader-only RPCs of both services and answers the others.
        assert error_code(cb.list_storage) == ErrorCode.SERVER_NOT_LEADER
        assert error_code(lambda: register(cb)) == ErrorCode.SERVER_NOT_LEADER
        assert error_code(lambda: cb.call("admin", "LeaderDemote")) == ErrorCode.SERVER_NOT_LEADER
        assert cb.get_leader_elector_config() == 0
        cb.update_logger("INFO")
        assert cb.get_metrics().timestamp > 0
        # The leader acknowledges a registration, 64 finished blocks and one open session.
        register(ca)
        acked: dict[int, str] = {}
        for n in range(4):
            keys = list(range(n * 16, (n + 1) * 16))
            acked.update(zip(keys, write(ca, keys), strict=True))
        opened = start_write(ca, [900, 901])

    killed = time.monotonic()
    a.kill()
    refused = 0
    with b.client("grpc", timeout_s=1.0) as cb:
        while not is_leader(b):
            assert time.monotonic() - killed < 10, "no failover within 10 s"
            # Until promoted, b keeps refusing (never serves a half-recovered cache).
            request = GetCacheLocationRequest(
                instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=[0]
            )
            refused += error_code(lambda r=request: cb.get_cache_location(r)) == ErrorCode.SERVER_NOT_LEADER
            time.sleep(0.02)
        failover_s = time.monotonic() - killed
        print(
            f"\nfailover after kill -9: {failover_s * 1000:.0f} ms (lease {LEASE_MS} ms, loop {LOOP_MS} ms)"
        )
        # The lock outlives the dead leader by up to one lease (its last renewal was at most a loop before
        # the kill); b takes it within a loop or two of the expiry and recovers the store.
        assert (LEASE_MS - 2 * LOOP_MS) / 1000 <= failover_s <= (LEASE_MS + 1000) / 1000
        assert refused > 0
        # The survivor serves what the dead leader acknowledged; the session that died with it is expired.
        assert (
            cb.get_instance_info(GetInstanceInfoRequest(instance_id="i1")).instance_info.instance_id == "i1"
        )
        keys = sorted(acked)
        assert served_uris(cb, keys) == [acked[k] for k in keys]
        finish = FinishWriteCacheRequest(
            instance_id="i1", write_session_id=opened.write_session_id, success_blocks=BlockMask(offset=2)
        )
        assert error_code(lambda: cb.finish_write_cache(finish)) == ErrorCode.INTERNAL_ERROR
        assert served_uris(cb, [900, 901]) == []

        def deleted() -> bool:  # the new leader's poll deletes the dead session's locations
            metas = cb.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=[900, 901])).metas
            return [json.loads(m)["status"] for m in metas] == ["CLS_NOT_FOUND"] * 2

        wait_until(deleted, timeout_s=5)
        assert len(write(cb, [900, 901])) == 2

    # The old leader comes back as a follower of the new one.
    a.start().wait_ready()
    assert leaders(a, b) == ["b"]
    with a.client("http") as ca:
        assert ca.get_manager_cluster_info().leader_node_id == "b"
        assert error_code(ca.list_storage) == ErrorCode.SERVER_NOT_LEADER


@pytest.mark.slow
def test_leader_demote_with_a_campaign_delay_then_sigterm_hands_over(
    nodes: Nodes, tmp_path: Path, redis_server: RedisServer
) -> None:
    a, b = redis_pair(nodes, tmp_path, redis_server)
    with a.client("grpc") as ca, b.client("grpc") as cb:
        register(ca)
        keys = list(range(32))
        uris = write(ca, keys)
        ca.update_leader_elector_config(1500)
        assert ca.get_leader_elector_config() == 1500
        demoted = time.monotonic()
        reply = ca.call("admin", "LeaderDemote")
        assert reply.header.status.message == "Leader demote request accepted"
        assert error_code(ca.list_storage) == ErrorCode.SERVER_NOT_LEADER  # at once
        took = wait_until(lambda: is_leader(b) is True, timeout_s=5)
        print(f"\nLeaderDemote hand-over: {(took - demoted) * 1000:.0f} ms (lease {LEASE_MS} ms)")
        assert took - demoted < LEASE_MS / 2000  # the lock was released: no waiting for the lease
        assert served_uris(cb, keys) == uris

        # b demotes with no delay while a is inside its 1.5 s window: b leads again, a stays out.
        cb.call("admin", "LeaderDemote")
        wait_until(lambda: error_code(cb.list_storage) is None, timeout_s=1.2)
        assert time.monotonic() - demoted < 1.5
        assert leaders(a, b) == ["b"]

        # After a's window, b demotes with a delay of its own: a leads again.
        time.sleep(max(0.0, demoted + 1.6 - time.monotonic()))
        cb.update_leader_elector_config(700)
        b_demoted = time.monotonic()
        cb.call("admin", "LeaderDemote")
        wait_until(lambda: is_leader(a) is True, timeout_s=5)
        assert served_uris(ca, keys) == uris
        assert error_code(lambda: cb.call("admin", "LeaderDemote")) == ErrorCode.SERVER_NOT_LEADER

    # SIGTERM on the leader once b's window is over: a drains, flushes, releases the lock and exits 0,
    # and b leads well before a lease could have expired.
    time.sleep(max(0.0, b_demoted + 0.8 - time.monotonic()))
    stopped = time.monotonic()
    assert a.terminate() == 0
    took = wait_until(lambda: is_leader(b) is True, timeout_s=5)
    print(f"SIGTERM hand-over (from the signal, drain included): {(took - stopped) * 1000:.0f} ms")
    assert took - stopped < LEASE_MS / 1000
    assert "giving up leadership: shutting down" in a.stderr()


@pytest.mark.slow
def test_file_lock_and_a_shared_sqlite_file_on_one_host(nodes: Nodes, tmp_path: Path) -> None:
    """``kvcm.distributed_lock.uri=file:///dir``: two nodes on one host over one sqlite file."""
    config = ha_config(tmp_path)
    lock_dir = tmp_path / "locks"
    args = (
        "--distributed-lock-uri",
        f"file://{lock_dir}",
        "--meta-store",
        f"sqlite://{tmp_path / 'shared.db'}",
        "--storage-backend",
        "simulated",
        "--config",
        str(config),
    )
    a = nodes("a", *args).start()
    a.wait_ready()
    b = nodes("b", *args).start()
    b.wait_ready()
    assert leaders(a, b) == ["a"]
    assert (lock_dir / "_TAIR_KVCM_LEADER_KEY.lock").read_text().startswith('{"value":"a#')
    with a.client("grpc") as ca:
        register(ca)
        uris = write(ca, list(range(16)))
    killed = time.monotonic()
    a.kill()
    wait_until(lambda: is_leader(b) is True, timeout_s=10)
    failover_s = time.monotonic() - killed
    print(f"\nfile-lock failover after kill -9: {failover_s * 1000:.0f} ms (lease {LEASE_MS} ms)")
    assert (LEASE_MS - 2 * LOOP_MS) / 1000 <= failover_s <= (LEASE_MS + 1000) / 1000
    with b.client("http") as cb:
        assert served_uris(cb, list(range(16))) == uris
    a.start().wait_ready()
    assert leaders(a, b) == ["b"]
