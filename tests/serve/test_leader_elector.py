"""The leader elector in process: which RPCs are gated, exactly one leader per lock, the lease check, demotion
with a campaign delay, failed and outdated promotions, shutdown, and the service's view of it all.

Every test runs electors on one asyncio loop with short leases (hundreds of milliseconds) over the
in-process lock, sampling their state every few milliseconds; each is bounded by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kvsim.cache import CacheError, ErrorCode
from kvsim.core import ConfigError, ManualClock
from kvsim.serve.catalog import rpcs
from kvsim.serve.config import resolve_settings
from kvsim.serve.leader import (
    DEMOTE_ACCEPTED,
    LEADER_FREE_ADMIN_RPCS,
    NOT_LEADER_MESSAGE,
    CacheLeadership,
    LeaderElector,
    Role,
    leader_only,
    node_of,
)
from kvsim.serve.locks import LockBackend, LockError, LockHolder, MemoryLock
from kvsim.serve.service import KvcmService

from .conftest import T0, new_manager

LEASE = 0.6
LOOP = 0.05
R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R], timeout_s: float = 20.0) -> R:
    """Run a test coroutine on a fresh loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class Hooks:
    """Records what the elector did to the node's state; ``prepare`` may fail or take time."""

    def __init__(self, fail: bool = False, prepare_s: float = 0.0) -> None:
        self.fail = fail
        self.prepare_s = prepare_s
        self.log: list[tuple[str, Any]] = []
        self.state: int | None = None
        self.built = 0
        self.on_uninstall: Any = None

    async def prepare(self) -> int:
        await asyncio.sleep(self.prepare_s)
        if self.fail:
            raise RuntimeError("store down")
        self.built += 1
        self.log.append(("prepare", self.built))
        return self.built

    def install(self, state: int) -> None:
        self.state = state
        self.log.append(("install", state))

    async def uninstall(self, graceful: bool) -> None:
        if self.on_uninstall is not None:
            self.on_uninstall()
        self.log.append(("uninstall", graceful))
        self.state = None

    async def discard(self, state: int) -> None:
        self.log.append(("discard", state))


class FlakyLock(LockBackend):
    """A lock whose every call fails while ``down`` (a network partition from the lock backend)."""

    kind = "flaky"

    def __init__(self, inner: LockBackend) -> None:
        self.inner = inner
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise LockError("flaky lock: unreachable")

    def try_lock(self, value: str, ttl_ms: int) -> bool:
        self._check()
        return self.inner.try_lock(value, ttl_ms)

    def renew(self, value: str, ttl_ms: int) -> bool:
        self._check()
        return self.inner.renew(value, ttl_ms)

    def unlock(self, value: str) -> bool:
        self._check()
        return self.inner.unlock(value)

    def holder(self) -> LockHolder | None:
        self._check()
        return self.inner.holder()


def elector(lock: LockBackend, node: str, hooks: Hooks | None = None, **kwargs: Any) -> LeaderElector:
    kwargs.setdefault("lease_s", LEASE)
    kwargs.setdefault("loop_interval_s", LOOP)
    return LeaderElector(lock, hooks or Hooks(), node_id=node, **kwargs)


async def until(predicate: Any, timeout_s: float, step_s: float = 0.005) -> float:
    """Wait (on the loop) until ``predicate()``; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


# ---------------------------------------------------------------------------------------------- gating


def test_leader_only_rpcs_are_the_studys() -> None:
    """Study §1.3: every meta RPC and 21 admin RPCs are leader-only; 7 admin RPCs and the debug service
    are answered by every node."""
    gated = {
        kind: sorted(n for n in rpcs(kind) if leader_only(kind, n)) for kind in ("meta", "admin", "debug")
    }
    assert len(gated["meta"]) == 8 and gated["debug"] == []
    assert sorted(set(rpcs("admin")) - set(gated["admin"])) == sorted(LEADER_FREE_ADMIN_RPCS)
    assert sorted(LEADER_FREE_ADMIN_RPCS) == [
        "CheckHealth",
        "GetLeaderElectorConfig",
        "GetManagerClusterInfo",
        "GetMetrics",
        "LeaderDemote",
        "UpdateLeaderElectorConfig",
        "UpdateLogger",
    ]
    assert len(gated["admin"]) == 21


def test_a_follower_refuses_every_leader_only_rpc_and_answers_the_rest() -> None:
    async def main() -> dict[tuple[str, str], tuple[int, str]]:
        lock = MemoryLock()
        assert lock.try_lock("other#1", 60_000)  # another node leads
        service = KvcmService(None, clock=ManualClock(T0), node_id="f")
        service.elector = elector(lock, "f", Hooks())
        await service.elector.start()
        out = {}
        for kind in ("meta", "admin", "debug"):
            for name, route in service.routes(kind).items():  # type: ignore[arg-type]
                header = service.dispatch(route, route.info.request_type()).header  # type: ignore[attr-defined]
                out[(kind, name)] = (header.status.code, header.status.message)
        await service.elector.stop()
        return out

    answers = run(main())
    for (kind, name), (code, message) in answers.items():
        if leader_only(kind, name):
            assert (code, message) == (ErrorCode.SERVER_NOT_LEADER, NOT_LEADER_MESSAGE), (kind, name)
        elif name != "LeaderDemote":  # answered by every node; on a follower its answer is "not leader"
            assert code != ErrorCode.SERVER_NOT_LEADER, (kind, name)
    assert answers[("admin", "LeaderDemote")] == (ErrorCode.SERVER_NOT_LEADER, NOT_LEADER_MESSAGE)
    assert answers[("admin", "GetMetrics")][0] == ErrorCode.OK
    assert answers[("admin", "CheckHealth")][0] == ErrorCode.OK


# ---------------------------------------------------------------------------------------------- election


def test_two_electors_on_one_lock_elect_exactly_one() -> None:
    async def main() -> None:
        lock = MemoryLock()
        a, b = elector(lock, "a"), elector(lock, "b")
        await a.start()
        await b.start()
        assert (a.serving(), b.serving()) == (True, False)
        assert (a.leader_node_id, b.leader_node_id) == ("a", "a")
        assert (a.role, b.role) == (Role.LEADER, Role.FOLLOWER)
        end = time.monotonic() + 3 * LEASE  # several lease periods of renewals: still exactly one
        while time.monotonic() < end:
            assert (a.serving(), b.serving()) == (True, False)
            await asyncio.sleep(0.01)
        await b.stop()
        await a.stop()
        assert lock.holder() is None

    run(main())


def test_one_node_id_twice_never_gives_two_leaders() -> None:
    """Lock values carry a per-process token: a second process with the same node id stays a follower."""

    async def main() -> None:
        lock = MemoryLock()
        a1, a2 = elector(lock, "a"), elector(lock, "a")
        await a1.start()
        await a2.start()
        assert a1.value != a2.value and node_of(a1.value) == node_of(a2.value) == "a"
        await asyncio.sleep(3 * LOOP)
        assert (a1.serving(), a2.serving()) == (True, False)
        await a1.stop()
        await a2.stop()

    run(main())


def test_a_leader_that_cannot_renew_stops_serving_before_another_can_lead() -> None:
    """A partition from the lock backend: the leader stops serving one loop interval before its lease
    deadline; the other node takes the lock only once it has expired. They never serve at once."""

    async def main() -> dict[str, float]:
        inner = MemoryLock()
        flaky = FlakyLock(inner)
        hooks_a = Hooks()
        a, b = elector(flaky, "a", hooks_a), elector(inner, "b")
        await a.start()
        await b.start()
        await asyncio.sleep(2 * LOOP)
        down = time.monotonic()
        flaky.down = True
        off = on = 0.0
        while time.monotonic() < down + 3 * LEASE and not on:
            both = a.serving() and b.serving()
            assert not both, "two leaders"
            if not off and not a.serving():
                off = time.monotonic()
            if not on and b.serving():
                on = time.monotonic()
            await asyncio.sleep(0.002)
        assert hooks_a.log[-1] == ("uninstall", False)
        assert a.role is Role.FOLLOWER and b.leader_node_id == "b"
        await a.stop()
        await b.stop()
        return {"off": off - down, "on": on - down}

    times = run(main())
    # a's last renewal was sent at most one loop before the partition: it stops serving by lease - loop.
    assert 0 < times["off"] <= LEASE - LOOP + 0.02
    # b cannot lead before a's lock expired (at least one loop after a stopped serving) ...
    assert times["on"] - times["off"] >= LOOP * 0.5
    # ... and takes over within a loop or two of the expiry.
    assert times["on"] <= LEASE + 3 * LOOP


def test_a_refused_renewal_demotes_at_once() -> None:
    async def main() -> None:
        lock = MemoryLock()
        hooks = Hooks()
        a = elector(lock, "a", hooks, lease_s=10.0)
        await a.start()
        assert a.serving()
        assert lock.unlock(a.value) and lock.try_lock("x#1", 60_000)  # e.g. an operator deleted the key
        await until(lambda: not a.serving(), timeout_s=3 * LOOP + 0.1)
        await until(lambda: a.leader_node_id == "x", timeout_s=3 * LOOP + 0.1)
        assert a.role is Role.FOLLOWER and hooks.log[-1] == ("uninstall", False)
        assert lock.holder().value == "x#1"  # type: ignore[union-attr]
        await a.stop()
        assert lock.holder().value == "x#1"  # stopping a follower releases nothing  # type: ignore[union-attr]

    run(main())


def test_a_node_takes_back_its_own_lock() -> None:
    """The lock still holds this process's value (its renewals failed, the lock did not expire): nobody
    else can have held it since, so the node renews and leads."""

    async def main() -> None:
        lock = MemoryLock()
        a = elector(lock, "a", token="t0")
        assert lock.try_lock("a#t0", 60_000)
        await a.start()
        assert a.serving() and a.terms == 1
        await a.stop()

    run(main())


# ---------------------------------------------------------------------------------------------- demotion


def test_leader_demote_hands_over_and_the_campaign_delay_keeps_the_old_leader_out() -> None:
    async def main() -> None:
        lock = MemoryLock()
        delays = {"a": 600, "b": 0}
        a = elector(lock, "a", lease_s=10.0, campaign_delay_ms=lambda: delays["a"])
        b = elector(lock, "b", lease_s=10.0, campaign_delay_ms=lambda: delays["b"])
        await a.start()
        await b.start()
        demoted = time.monotonic()
        assert a.request_demotion() == DEMOTE_ACCEPTED
        assert not a.serving()  # the gate closes before the call returns
        took = await until(b.serving, timeout_s=1.0)
        assert took - demoted < 0.5  # the lock was released: no waiting for the 10 s lease
        # b demotes with no delay while a is still inside its 600 ms window: b takes the lock back.
        assert b.request_demotion() == DEMOTE_ACCEPTED
        await until(lambda: b.serving() and b.terms == 2, timeout_s=1.0)
        assert time.monotonic() - demoted < 0.6 and not a.serving()
        # After a's window, b demotes with a delay: now a leads again.
        delays["b"] = 5000
        await asyncio.sleep(max(0.0, demoted + 0.65 - time.monotonic()))
        b.request_demotion()
        await until(a.serving, timeout_s=1.0)
        await until(lambda: b.leader_node_id == "a", timeout_s=1.0)
        with pytest.raises(CacheError) as err:
            b.request_demotion()
        assert (err.value.code, err.value.message) == (ErrorCode.SERVER_NOT_LEADER, NOT_LEADER_MESSAGE)
        await a.stop()
        await b.stop()

    run(main())


def test_a_single_node_demoted_with_a_delay_stays_follower_for_the_delay() -> None:
    """The reference's test_leader_demote on one node (in-process lock): demote with a delay, not leader
    during it, leader again after it."""

    async def main() -> tuple[float, float]:
        lock = MemoryLock()
        hooks = Hooks()
        a = elector(lock, "a", hooks, campaign_delay_ms=lambda: 400)
        await a.start()
        demoted = time.monotonic()
        a.request_demotion()
        await until(lambda: lock.holder() is None, timeout_s=1.0)
        back = await until(a.serving, timeout_s=2.0)
        assert hooks.log == [
            ("prepare", 1),
            ("install", 1),
            ("uninstall", True),
            ("prepare", 2),
            ("install", 2),
        ]
        await a.stop()
        return demoted, back

    demoted, back = run(main())
    assert 0.4 <= back - demoted <= 0.4 + 4 * LOOP


# ---------------------------------------------------------------------------------------------- promotion


def test_a_failed_promotion_releases_the_lock_for_another_node() -> None:
    async def main() -> None:
        lock = MemoryLock()
        broken = Hooks(fail=True)
        a = elector(lock, "a", broken)
        await a.start()
        assert not a.serving() and not a.holds_lock() and lock.holder() is None
        b = elector(lock, "b")
        await b.start()
        assert b.serving()  # a stays out of the campaign for one lease after failing
        await until(lambda: a.leader_node_id == "b", timeout_s=1.0)
        assert broken.log == []
        await b.stop()
        await a.stop()

    run(main())


def test_a_promotion_that_outlives_its_term_is_discarded() -> None:
    async def main() -> None:
        lock = MemoryLock()
        slow = Hooks(prepare_s=0.3)
        a = elector(lock, "a", slow, lease_s=10.0)
        task = asyncio.create_task(a.start())
        await until(lambda: a.role is Role.PROMOTING, timeout_s=1.0)
        assert not a.serving()  # holding the lock is not enough: recovery comes first
        assert lock.unlock(a.value) and lock.try_lock("x#1", 60_000)
        await task
        await until(lambda: slow.log == [("prepare", 1), ("discard", 1)], timeout_s=1.0)
        assert not a.serving() and slow.state is None
        await a.stop()

    run(main())


def test_stop_drops_the_state_before_releasing_the_lock() -> None:
    async def main() -> None:
        lock = MemoryLock()
        hooks = Hooks()
        a = elector(lock, "a", hooks)
        await a.start()
        holders: list[str | None] = []
        hooks.on_uninstall = lambda: holders.append(getattr(lock.holder(), "value", None))
        await a.stop()
        assert holders == [a.value]  # still ours while the cache flushed
        assert hooks.log[-1] == ("uninstall", True) and lock.holder() is None
        await a.stop()  # idempotent

    run(main())


# ---------------------------------------------------------------------------------------------- the service


def test_the_service_serves_a_cache_only_while_leading() -> None:
    async def main() -> None:
        clock = ManualClock(T0)
        service = KvcmService(None, clock=clock, node_id="n1")
        managers: list[Any] = []

        def build() -> Any:
            managers.append(new_manager(clock))
            return managers[-1]

        a = LeaderElector(
            MemoryLock(),
            CacheLeadership(service, build),
            node_id="n1",
            lease_s=LEASE,
            loop_interval_s=LOOP,
            campaign_delay_ms=lambda: int(service.campaign_delay_ms),
            wall=clock,
        )
        service.elector = a
        await a.start()

        def call(kind: str, name: str, **fields: Any) -> Any:
            route = service.route(kind, name)  # type: ignore[arg-type]
            return service.dispatch(route, route.info.request_type(**fields))

        assert service.cache is managers[0]
        assert call("admin", "ListStorage").storage[0].global_unique_name == "nfs_01"
        health = call("admin", "CheckHealth")
        assert (health.is_leader, health.is_health, health.elector_last_loop_time_ms) == (
            True,
            True,
            T0 * 1000,
        )
        info = call("admin", "GetManagerClusterInfo")
        assert (info.self_node_id, info.leader_node_id, info.info_updated_time) == ("n1", "n1", 0)
        assert (T0 + LEASE - 2 * LOOP) * 1e6 < info.self_leader_expiration_time <= (T0 + LEASE) * 1e6
        assert (
            call("admin", "UpdateLeaderElectorConfig", campaign_delay_time_ms=60_000).header.status.code == 1
        )
        assert call("admin", "GetLeaderElectorConfig").campaign_delay_time_ms == 60_000

        reply = call("admin", "LeaderDemote")
        assert (reply.header.status.code, reply.header.status.message) == (ErrorCode.OK, DEMOTE_ACCEPTED)
        assert (
            call("meta", "GetCacheLocation", instance_id="i1").header.status.code
            == ErrorCode.SERVER_NOT_LEADER
        )
        await until(lambda: service.cache is None, timeout_s=1.0)
        info = call("admin", "GetManagerClusterInfo")
        assert (info.self_leader_expiration_time, info.leader_node_id) == (-1, "")
        assert call("admin", "CheckHealth").is_leader is False
        assert call("admin", "GetMetrics").header.status.code == ErrorCode.OK  # no cache, still answered
        await asyncio.sleep(3 * LOOP)
        assert a.role is Role.FOLLOWER and len(managers) == 1  # the 60 s campaign delay holds
        await a.stop()

    run(main())


# ---------------------------------------------------------------------------------------------- settings


def test_elector_settings_come_from_the_reference_keys(tmp_path: Path) -> None:
    settings = resolve_settings(
        {"kvcm.leader_elector.lease_ms": "2000", "kvcm.leader_elector.loop_interval_ms": "100"},
        {"kvcm.distributed_lock.uri": f"file://{tmp_path}"},
        {"node_id": "n7"},
    )
    assert (settings.lease_s, settings.loop_interval_s) == (2.0, 0.1)
    assert (settings.distributed_lock_uri, settings.node_id) == (f"file://{tmp_path}", "n7")
    defaults = resolve_settings()
    assert (defaults.lease_s, defaults.loop_interval_s, defaults.distributed_lock_uri) == (10.0, 0.1, "")


def test_a_lease_too_short_for_its_loop_is_refused() -> None:
    with pytest.raises(ConfigError, match="loop_interval_ms 600 must be at most a quarter of"):
        resolve_settings(
            {"kvcm.leader_elector.lease_ms": "2000", "kvcm.leader_elector.loop_interval_ms": "600"}
        )
    with pytest.raises(ValueError, match="at most a quarter of the lease"):
        LeaderElector(MemoryLock(), Hooks(), node_id="a", lease_s=1.0, loop_interval_s=0.3)


# ---------------------------------------------------------------------------------------------- the margin


def test_a_store_call_budget_closes_the_gate_that_much_earlier() -> None:
    """With a 300 ms admission margin, a leader cut off from the lock stops admitting requests 300 ms
    before its lease ends, so a store call admitted just before has landed before anyone else can lead."""

    async def main() -> float:
        flaky = FlakyLock(MemoryLock())
        a = elector(flaky, "a", admission_margin_s=0.3)
        await a.start()
        await asyncio.sleep(2 * LOOP)
        down = time.monotonic()
        flaky.down = True
        off = await until(lambda: not a.serving(), timeout_s=2 * LEASE)
        assert a.role is Role.LEADER  # still holding: it demotes only one loop before the deadline
        await until(lambda: a.role is Role.FOLLOWER, timeout_s=2 * LEASE)
        await a.stop()
        return off - down

    off = run(main())
    assert LEASE - 0.3 - LOOP - 0.02 <= off <= LEASE - 0.3 + 0.02


def test_the_margin_comes_from_the_store_and_must_fit_the_lease() -> None:
    from kvsim.serve.leader import admission_margin_s, store_call_budget_s

    assert store_call_budget_s("sqlite") == store_call_budget_s("memory") == 0.0
    assert store_call_budget_s("redis://h:1") == pytest.approx(
        2.0 * 3 + 0.1
    )  # the defaults: 2000 ms, 2 retries
    assert store_call_budget_s("redis://h:1?timeout_ms=250&retry_count=1") == pytest.approx(0.6)
    fits = resolve_settings({"kvsim.meta_store": "redis://h:1"})  # the default 10 s lease
    assert admission_margin_s(fits) == pytest.approx(6.1)
    short = resolve_settings({"kvsim.meta_store": "redis://h:1", "kvcm.leader_elector.lease_ms": "2000"})
    with pytest.raises(
        ConfigError, match="lease_ms 2000 is too short for the meta store: a store call may take"
    ):
        admission_margin_s(short)
    with pytest.raises(ValueError, match="must exceed the longest store call"):
        LeaderElector(
            MemoryLock(), Hooks(), node_id="a", lease_s=1.0, loop_interval_s=0.1, admission_margin_s=0.9
        )
