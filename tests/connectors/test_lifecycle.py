"""The scheduler-side lifecycle against a real ``kvsim serve``: register, match with the engine's blocks
masked out, two-phase writes with per-block and per-rank masks, expired sessions, refused and unreachable
servers, failover across addresses, and a server restart in the middle of a write."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kvsim.cache import BlockMask, CacheError, ErrorCode, GetCacheMetaRequest
from kvsim.connectors import (
    ConnectorError,
    KvcmScheduler,
    LocalServe,
    ManagerConnection,
    ManagerError,
    RankMasks,
    TransferClient,
    WriteAborted,
    make_registration,
    ok_mask,
    parse_address,
    spec_uris,
)
from kvsim.serve.client import CacheClient

BLOCK = 4
SPEC = 512
TOKENS = list(range(1000, 1000 + 10 * BLOCK))  # ten full blocks


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(
    address: str | list[str], instance_id: str, ranks: int = 2, **kwargs: object
) -> ManagerConnection:
    """A connection registering ``instance_id`` with ``ranks`` specs of SPEC bytes."""
    registration = make_registration(instance_id, BLOCK, [(f"tp{r}", SPEC) for r in range(ranks)])
    addresses = [address] if isinstance(address, str) else address
    return ManagerConnection(addresses, registration, timeout_s=5, retries=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["http", "grpc"])
def address(request: pytest.FixtureRequest, server: LocalServe) -> str:
    """The session server's meta address over each transport."""
    return server.http_address if request.param == "http" else server.grpc_address


@pytest.fixture
def sched(address: str, instance_id: str) -> Iterator[KvcmScheduler]:
    """A scheduler on a fresh instance of the session's server."""
    conn = connect(address, instance_id)
    try:
        yield KvcmScheduler(conn, write_timeout_s=30)
    finally:
        conn.close()


def statuses(sched: KvcmScheduler, n: int = 10) -> list[str]:
    """The stored status of the first ``n`` blocks of TOKENS."""
    request = GetCacheMetaRequest(instance_id=sched.connection.instance_id, token_ids=TOKENS[: n * BLOCK])
    result = sched.connection.call("GetCacheMeta", lambda c: c.get_cache_meta(request))
    return [json.loads(m)["status"] for m in result.metas]


def test_register_returns_the_storage_configs(sched: KvcmScheduler, server: LocalServe) -> None:
    configs = json.loads(sched.connection.register())
    assert [(c["type"], c["global_unique_name"]) for c in configs] == [("file", "nfs_01")]
    assert configs[0]["storage_spec"] == {"root_path": f"{server.storage_root}/", "key_count_per_file": 8}
    assert sched.connection.register() == sched.connection.storage_configs  # registering again is harmless


def test_a_block_counts_only_when_every_rank_saved_it(sched: KvcmScheduler) -> None:
    plan = sched.start_write(token_ids=TOKENS)
    assert (plan.num_keys, plan.cached, plan.indices) == (10, (False,) * 10, tuple(range(10)))
    assert len(plan.session_id) == 32 and all(len(loc.location_specs) == 2 for loc in plan.locations)
    masks = RankMasks(len(plan.locations), ranks=2)
    masks.report(0, [True] * 10)
    assert not masks.complete and masks.missing == [1] and masks.mask() == [False] * 10
    masks.report(1, [i != 6 for i in range(10)])  # rank 1 failed block 6
    assert masks.complete
    outcome = sched.finish_write(plan, masks.mask())
    assert outcome.stored == tuple(i != 6 for i in range(10))
    assert (outcome.num_serving, outcome.num_failed) == (9, 1)
    hit = sched.match(token_ids=TOKENS)
    assert hit.num_blocks == 6 and hit.indices == tuple(range(6))  # the prefix stops at the failed block
    time.sleep(0.3)  # the server's poll deletes the failed block
    assert statuses(sched) == ["CLS_SERVING"] * 6 + ["CLS_NOT_FOUND"] + ["CLS_SERVING"] * 3


def test_match_skips_what_the_engine_holds(sched: KvcmScheduler) -> None:
    plan = sched.start_write(token_ids=TOKENS[: 6 * BLOCK])
    sched.finish_write(plan, [True] * 6)
    by_count = sched.match(token_ids=TOKENS, held=2)
    assert (by_count.num_keys, by_count.indices, by_count.num_blocks) == (10, (2, 3, 4, 5), 4)
    by_mask = sched.match(token_ids=TOKENS, held=[True, False, True])
    assert by_mask.indices == (1, 3, 4, 5)
    assert sched.match(token_ids=TOKENS, held=10).num_blocks == 0
    one_rank = sched.match(token_ids=TOKENS, spec_names=["tp1"])
    assert all([s.name for s in loc.location_specs] == ["tp1"] for loc in one_rank.locations)
    assert spec_uris(one_rank.locations, "tp1") == [loc.location_specs[0].uri for loc in one_rank.locations]
    assert spec_uris(one_rank.locations, "tp0") == [""] * 6


def test_a_second_write_of_stored_keys_has_nothing_to_do(sched: KvcmScheduler) -> None:
    first = sched.start_write(token_ids=TOKENS[: 4 * BLOCK])
    sched.finish_write(first, [True] * 4)
    second = sched.start_write(token_ids=TOKENS[: 6 * BLOCK])
    assert second.cached == (True,) * 4 + (False,) * 2 and second.indices == (4, 5)
    outcome = sched.finish_write(second, [True, False])
    assert outcome.stored == (True,) * 5 + (False,)
    third = sched.start_write(token_ids=TOKENS[: 4 * BLOCK])
    assert third.locations == () and sched.finish_write(third, []).stored == (True,) * 4


def test_write_with_real_bytes_round_trips(sched: KvcmScheduler) -> None:
    transfer = TransferClient(sched.connection.register())
    data = {r: [np.full(SPEC, 16 * r + i, np.uint8) for i in range(10)] for r in (0, 1)}

    def save(plan: object) -> list[bool]:
        results = [transfer.save(plan.uris(f"tp{r}"), data[r]).ok for r in (0, 1)]  # type: ignore[attr-defined]
        return [a and b for a, b in zip(*results, strict=True)]

    outcome = sched.write(save, token_ids=TOKENS)
    assert outcome.stored == (True,) * 10
    hit = sched.match(token_ids=TOKENS, held=3)
    out = [np.zeros(SPEC, np.uint8) for _ in hit.locations]
    assert transfer.load(spec_uris(hit.locations, "tp1"), out).all_ok
    assert [int(b[0]) for b in out] == [16 + i for i in range(3, 10)]
    transfer.close()


def test_an_exception_while_saving_aborts_the_session(sched: KvcmScheduler) -> None:
    def save(plan: object) -> list[bool]:
        raise RuntimeError("the engine died")

    with pytest.raises(RuntimeError, match="the engine died"):
        sched.write(save, token_ids=TOKENS[: 3 * BLOCK])
    assert sched.open_sessions() == []
    assert sched.match(token_ids=TOKENS).num_blocks == 0
    time.sleep(0.3)
    assert sched.start_write(token_ids=TOKENS[: 3 * BLOCK]).indices == (0, 1, 2)  # deleted, writable again


def test_an_expired_session_stores_nothing(server: LocalServe, instance_id: str) -> None:
    conn = connect(server.http_address, instance_id)
    sched = KvcmScheduler(conn, write_timeout_s=1)
    plan = sched.start_write(token_ids=TOKENS[: 3 * BLOCK])
    time.sleep(1.4)  # past the deadline; the server polls every 100 ms
    with pytest.raises(WriteAborted) as info:
        sched.finish_write(plan, [True] * 3)
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert f"write session {plan.session_id} expired (write timeout 1 s) before FinishWriteCache" in str(
        info.value
    )
    assert "none of its 3 blocks is stored" in str(info.value)
    assert sched.match(token_ids=TOKENS).num_blocks == 0
    conn.close()


def test_finish_masks_of_the_wrong_length_are_refused_before_sending(sched: KvcmScheduler) -> None:
    plan = sched.start_write(token_ids=TOKENS[: 2 * BLOCK])
    with pytest.raises(ConnectorError, match="finish_write: 3 results for 2 locations"):
        sched.finish_write(plan, [True] * 3)
    assert sched.finish_write(plan, [True, True]).stored == (True, True)  # the session is still usable


@pytest.mark.usefixtures("no_faults")
def test_a_server_answering_non_ok_is_one_clear_error(sched: KvcmScheduler, admin: CacheClient) -> None:
    admin.inject_fault("StartWriteCache")
    with pytest.raises(ManagerError) as info:
        sched.start_write(token_ids=TOKENS)
    assert info.value.code == ErrorCode.INTERNAL_ERROR and str(info.value).startswith(
        "INTERNAL_ERROR: StartWriteCache:"
    )
    admin.clear_faults()
    plan = sched.start_write(token_ids=TOKENS[: 2 * BLOCK])
    admin.inject_fault("FinishWriteCache")
    with pytest.raises(
        WriteAborted, match=f"write session {plan.session_id} could not be finished; none of its 2"
    ):
        sched.finish_write(plan, [True, True])
    admin.inject_fault("GetCacheLocation")
    with pytest.raises(ManagerError, match="INTERNAL_ERROR: GetCacheLocation:"):
        sched.match(token_ids=TOKENS)
    admin.clear_faults()
    assert sched.match(token_ids=TOKENS).num_blocks == 0  # the refused finish stored nothing


def test_an_unreachable_server_is_one_clear_error(instance_id: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    conn = connect(dead, instance_id)
    with pytest.raises(ManagerError) as info:
        KvcmScheduler(conn).match(token_ids=TOKENS)
    assert info.value.code == ErrorCode.SERVICE_NOT_READY
    assert str(info.value).startswith(
        f"SERVICE_NOT_READY: GetCacheLocation: no KVCM server answered: {dead}:"
    )
    conn.close()


def test_calls_fail_over_to_the_next_address(server: LocalServe, instance_id: str) -> None:
    dead = f"grpc://127.0.0.1:{free_port()}"
    conn = connect([dead, server.http_address], instance_id)
    sched = KvcmScheduler(conn)
    plan = sched.start_write(token_ids=TOKENS[: 2 * BLOCK])
    assert conn.address == server.http_address
    assert sched.finish_write(plan, [True, True]).stored == (True, True)
    assert sched.match(token_ids=TOKENS).num_blocks == 2
    conn.close()


def test_registration_conflicts_are_reported_as_register_errors(server: LocalServe, instance_id: str) -> None:
    first = connect(server.http_address, instance_id, ranks=2)
    first.register()
    other = connect(server.http_address, instance_id, ranks=1)  # the same id with other specs
    with pytest.raises(ManagerError) as info:
        KvcmScheduler(other).match(token_ids=TOKENS)
    assert info.value.code == ErrorCode.DUPLICATE_ENTITY
    assert str(info.value).startswith("DUPLICATE_ENTITY: RegisterInstance:")
    first.close()
    other.close()


def test_a_server_restart_in_the_middle_of_a_write(tmp_path: Path, instance_id: str) -> None:
    with LocalServe(tmp_path / "serve") as server:
        conn = connect(server.http_address, instance_id)
        sched = KvcmScheduler(conn)
        transfer = TransferClient(conn.register())
        plan = sched.start_write(token_ids=TOKENS[: 3 * BLOCK])
        ok = [transfer.save(plan.uris(f"tp{r}"), [np.ones(SPEC, np.uint8)] * 3).all_ok for r in (0, 1)]
        assert ok == [True, True]
        server.restart()  # kill -9 and start again on the same ports: the memory store is empty
        with pytest.raises(WriteAborted, match="none of its 3 blocks is stored"):
            sched.finish_write(plan, [True] * 3)
        # The next call finds the instance gone, registers again and is answered.
        assert sched.match(token_ids=TOKENS).num_blocks == 0
        again = sched.start_write(token_ids=TOKENS[: 3 * BLOCK])
        assert again.indices == (0, 1, 2)
        assert sched.finish_write(again, [True] * 3).stored == (True,) * 3
        transfer.close()
        conn.close()


def test_rank_masks_and_ok_masks() -> None:
    masks = RankMasks(3, ranks=2)
    with pytest.raises(ConnectorError, match=r"rank 2: expected 0..1"):
        masks.report(2, [True] * 3)
    with pytest.raises(ConnectorError, match="rank 0: 2 results for 3 blocks"):
        masks.report(0, [True, True])
    masks.report(0, [True, False, True])
    masks.report(0, [True, True, False])  # a second report of a rank keeps the AND
    masks.report(1, [True, True, True])
    assert masks.mask() == [True, False, False]
    assert ok_mask([True, True, False, False]) == BlockMask.of_offset(2)
    assert ok_mask([]) == BlockMask.of_offset(0)
    assert ok_mask([False, True]) == BlockMask.of_bools([False, True])


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("http://127.0.0.1:6382", ("http", "127.0.0.1", 6382)),
        ("grpc://kvcm:6381/", ("grpc", "kvcm", 6381)),
        ("10.0.0.1:6382", ("http", "10.0.0.1", 6382)),
        ("http://[::1]:6382", ("http", "::1", 6382)),
    ],
)
def test_addresses(text: str, parsed: tuple[str, str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["https://h:1", "http://h", "http://h:0", "http://:80", "grpc://h:port"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConnectorError, match="manager address"):
        parse_address(text)


def test_keys_must_be_given_one_way(sched: KvcmScheduler) -> None:
    with pytest.raises(ConnectorError, match="give exactly one of token_ids and block_keys"):
        sched.match(token_ids=TOKENS, block_keys=[1])
    with pytest.raises(ConnectorError, match="give exactly one of token_ids and block_keys"):
        sched.start_write()
    with pytest.raises(ConnectorError, match="manager addresses: give at least one"):
        ManagerConnection([], make_registration("x", 1, [("tp0", 1)]))


class StubClient(CacheClient):
    """A client whose every call fails with one code (a follower, or a server that is going away)."""

    def __init__(self, code: ErrorCode) -> None:
        self.code = code
        self.calls = 0

    def register_instance(self, request: object) -> object:
        self.calls += 1
        raise CacheError(self.code, "not the leader; the leader is elsewhere")

    def close(self) -> None:
        pass


def test_a_follower_sends_the_call_to_the_next_address(server: LocalServe, instance_id: str) -> None:
    follower = StubClient(ErrorCode.SERVER_NOT_LEADER)
    conn = connect([follower, server.http_address], instance_id)  # type: ignore[list-item]
    sched = KvcmScheduler(conn)
    assert sched.match(token_ids=TOKENS).num_blocks == 0
    assert follower.calls == 1 and conn.address == server.http_address
    assert sched.match(token_ids=TOKENS).num_blocks == 0
    assert follower.calls == 1  # the leader that answered is kept
    conn.close()
