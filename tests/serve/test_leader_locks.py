"""The lock backends of leader election: one contract for ``memory://``, ``file:///dir`` and ``redis://``
(a real redis-server on a free loopback port), plus each backend's own format and failure modes.

The contract is what makes the election safe: a lock is taken only when free or expired, renewed and
released only by its holder (compare-and-set), and it expires by itself after its lease.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsim.core import ConfigError
from kvsim.serve.locks import (
    LEADER_KEY,
    FileLock,
    LockBackend,
    LockError,
    MemoryLock,
    RedisLock,
    open_lock,
    redact,
)

from ..cache.redis_server import RedisServer, free_port

TTL_MS = 10_000
SHORT_MS = 150


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for this module (skipped without the binary, a failure under CI=true)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "file", "redis"])
def lock_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LockBackend, LockBackend]]:
    """Two handles on one lock, as two nodes would hold them."""
    made: list[LockBackend] = []
    if request.param == "memory":
        shared = MemoryLock()
        made = [shared, shared]
    elif request.param == "file":
        made = [FileLock(tmp_path / "locks"), FileLock(tmp_path / "locks")]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        made = [RedisLock(server.url), RedisLock(server.url)]
    try:
        yield made[0], made[1]
    finally:
        for lock in made:
            lock.close()


def test_only_one_value_takes_a_free_lock(lock_pair: tuple[LockBackend, LockBackend]) -> None:
    a, b = lock_pair
    assert a.holder() is None
    assert a.try_lock("a#1", TTL_MS) is True
    assert b.try_lock("b#1", TTL_MS) is False
    assert a.try_lock("a#1", TTL_MS) is False  # taking is never re-entrant; the holder renews instead
    holder = b.holder()
    assert holder is not None and holder.value == "a#1"
    assert 0 < holder.ttl_ms <= TTL_MS


def test_only_the_holder_renews_or_releases(lock_pair: tuple[LockBackend, LockBackend]) -> None:
    a, b = lock_pair
    assert a.try_lock("a#1", SHORT_MS * 2)
    assert b.renew("b#1", TTL_MS) is False
    assert b.unlock("b#1") is False  # never deletes another node's lock
    assert a.holder().value == "a#1"  # type: ignore[union-attr]
    assert a.renew("a#1", TTL_MS) is True
    assert a.holder().ttl_ms > SHORT_MS * 2  # type: ignore[union-attr]
    assert a.unlock("a#1") is True
    assert a.holder() is None
    assert a.unlock("a#1") is False
    assert a.renew("a#1", TTL_MS) is False  # a released lock is not renewed back into existence
    assert b.try_lock("b#1", TTL_MS) is True


def test_an_unrenewed_lock_expires_and_cannot_be_renewed_after(
    lock_pair: tuple[LockBackend, LockBackend],
) -> None:
    a, b = lock_pair
    assert a.try_lock("a#1", SHORT_MS)
    assert b.try_lock("b#1", TTL_MS) is False
    time.sleep(SHORT_MS / 1000 + 0.1)
    assert b.holder() is None
    assert a.renew("a#1", TTL_MS) is False  # the lease is over: the old holder has lost it
    assert b.try_lock("b#1", TTL_MS) is True
    assert a.renew("a#1", TTL_MS) is False


# ---------------------------------------------------------------------------------------------- file


def test_file_lock_uses_the_reference_format(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "d", wall_ms=lambda: 1_000_000.0)
    assert lock.path == tmp_path / "d" / f"{LEADER_KEY}.lock"
    assert lock.try_lock("n1#t", 2000)
    assert json.loads(lock.path.read_text()) == {"value": "n1#t", "expire_time_ms": 1_002_000}
    assert lock.path.stat().st_size == 4096  # the record padded to one page
    assert lock.unlock("n1#t")
    assert lock.path.read_text().strip() == "{}"


def test_file_lock_treats_a_torn_file_as_free(tmp_path: Path) -> None:
    lock = FileLock(tmp_path)
    lock.path.write_text('{"value": "n1#t", "expire')
    assert lock.holder() is None
    assert lock.try_lock("n2#t", TTL_MS)
    assert lock.holder().value == "n2#t"  # type: ignore[union-attr]


def test_file_lock_ignores_what_follows_the_record(tmp_path: Path) -> None:
    lock = FileLock(tmp_path)
    lock.path.write_text('{"value":"n1#t","expire_time_ms":99999999999999} trailing bytes' + "x" * 5000)
    assert lock.holder().value == "n1#t"  # type: ignore[union-attr]
    assert lock.renew("n1#t", TTL_MS) and lock.path.stat().st_size == 4096


# The holder: takes the lock with a long lease, then renews it as fast as it can until killed.
_RENEWER = """
import sys
from kvsim.serve.locks import FileLock
lock = FileLock(sys.argv[1])
assert lock.try_lock("child#t", 600_000)
print("held", flush=True)
while True:
    lock.renew("child#t", 600_000)
"""


def test_a_file_lock_holder_killed_mid_renewal_still_holds_it(tmp_path: Path) -> None:
    """kill -9 lands at a random point of a renewal: the lock must still read as held (a truncate-then-
    write renewal would sometimes leave an empty file, which another node reads as a free lock)."""
    for attempt in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", _RENEWER, str(tmp_path / "locks")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "held\n"
            time.sleep(0.03 + attempt * 0.005)  # thousands of renewals in flight
        finally:
            child.kill()
            child.wait(10)
        holder = FileLock(tmp_path / "locks").holder()
        assert holder is not None and holder.value == "child#t", f"lost at kill {attempt}"
        assert FileLock(tmp_path / "locks").unlock("child#t")


def test_file_lock_directory_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(LockError, match="file lock"):
        FileLock(tmp_path / "plain" / "sub")


# ---------------------------------------------------------------------------------------------- redis


def test_redis_lock_key_and_expiry(redis_server: RedisServer) -> None:
    import redis

    redis_server.flush()
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    lock = RedisLock(redis_server.url)
    other = RedisLock(f"{redis_server.url}?cluster_name=blue&timeout_ms=500")
    try:
        assert lock.key == "kvcm_lock:_TAIR_KVCM_LEADER_KEY"  # the reference's key
        assert other.key == "kvcm_lock:blue:_TAIR_KVCM_LEADER_KEY"
        assert lock.try_lock("n1#t", 5000) and other.try_lock("n2#t", 5000)  # separate clusters
        assert raw.get(lock.key) == "n1#t"
        assert 4000 < raw.pttl(lock.key) <= 5000
        raw.set(lock.key, "intruder#x", px=5000)
        assert lock.renew("n1#t", 5000) is False and lock.unlock("n1#t") is False
        assert raw.get(lock.key) == "intruder#x"  # compare-and-set never touched it
    finally:
        lock.close()
        other.close()
        raw.close()


def test_redis_lock_survives_a_script_cache_flush(redis_server: RedisServer) -> None:
    import redis

    redis_server.flush()
    lock = RedisLock(redis_server.url)
    try:
        assert lock.try_lock("n1#t", TTL_MS) and lock.renew("n1#t", TTL_MS)
        redis.Redis(host="127.0.0.1", port=redis_server.port).script_flush()  # e.g. a Redis restart
        assert lock.renew("n1#t", TTL_MS) is True
        assert lock.unlock("n1#t") is True
    finally:
        lock.close()


def test_an_unreachable_redis_is_a_lock_error() -> None:
    pytest.importorskip("redis")
    lock = RedisLock(f"redis://127.0.0.1:{free_port()}?timeout_ms=200")
    try:
        for call in (
            lambda: lock.try_lock("n#t", TTL_MS),
            lambda: lock.renew("n#t", TTL_MS),
            lambda: lock.unlock("n#t"),
            lock.holder,
        ):
            with pytest.raises(LockError, match=r"redis lock 127\.0\.0\.1:"):
                call()
    finally:
        lock.close()


# ---------------------------------------------------------------------------------------------- opening


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("", "memory"),
        ("memory://", "memory"),
        ("file:///tmp/kvsim-lock-test", "file"),
        ("redis://h:1", "redis"),
    ],
)
def test_open_lock_picks_the_backend(uri: str, kind: str) -> None:
    if kind == "redis":
        pytest.importorskip("redis")
    lock = open_lock(uri)
    try:
        assert lock.kind == kind
    finally:
        lock.close()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("zk://h:1", "distributed lock 'zk://h:1': unknown kind"),
        ("file://relative/dir", "expected file:///absolute/directory"),
        ("redis://h:1?auth=x", "redis lock h:1: unknown parameter 'auth'"),
        ("redis://u:secret@h:1/x", "unexpected path '/x'"),
    ],
)
def test_open_lock_refuses_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        open_lock(uri)
    assert "secret" not in str(err.value)


def test_redact_hides_passwords() -> None:
    assert redact("redis://u:pw@h:1?timeout_ms=5") == "redis://u:***@h:1?timeout_ms=5"
    assert redact("redis://pw@h:1") == "redis://***@h:1"
    assert redact("redis://h:1") == "redis://h:1"


def test_memory_lock_expires_on_its_clock() -> None:
    now = [0.0]
    lock = MemoryLock(monotonic=lambda: now[0])
    assert lock.try_lock("a#1", 1000)
    now[0] = 0.999
    assert lock.holder() is not None and lock.try_lock("b#1", 1000) is False
    now[0] = 1.0
    assert lock.holder() is None and lock.try_lock("b#1", 1000)
