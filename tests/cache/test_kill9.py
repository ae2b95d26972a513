"""``kill -9`` of a process writing through the sqlite store loses nothing it acknowledged.

A child process registers instances and streams two-phase writes through a :class:`CacheManager` over
a SQLite file, printing a line after each call returns (the acknowledgement a client would get); every
fifth write is started and never finished, so WRITING locations are in the file. The test kills the
child with SIGKILL mid-stream, starts a second writer over the same file (which recovers and writes on),
kills that one too, and then reads the file from this process: every acknowledged registration and
finished write is there and SERVING, no WRITING location survives recovery, and the deletions recovery
queued leave nothing behind after one poll.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from kvsim.cache import GetCacheLocationRequest, QueryType
from kvsim.cache.store import SqliteStore
from kvsim.cache.types import LocationStatus
from kvsim.core import ManualClock

from .conftest import T0, make_manager

INSTANCES = ("i0", "i1", "i2")
KEYS_PER_WRITE = 16

# The writer: argv = database path, first key. Prints "REG <id>" and "ACK <id> <first key>" after the
# call returned, "OPEN ..." for a write it leaves unfinished. Bounded, in case the test dies first.
WRITER = f"""
import sys
from kvsim.cache import (BlockMask, CacheManager, FinishWriteCacheRequest, LocationSpecInfo, ModelDeployment,
                         RegisterInstanceRequest, StartWriteCacheRequest, default_startup_config)
from kvsim.cache.store import SqliteStore
from kvsim.core import ManualClock, make_rng

path, first = sys.argv[1], int(sys.argv[2])
clock = ManualClock({T0})
mgr = CacheManager(clock, make_rng(first), store=SqliteStore(path), password_iterations=1000)
mgr.apply_startup_config(*default_startup_config())
for inst in {INSTANCES!r}:
    mgr.register_instance(RegisterInstanceRequest(
        instance_group="default", instance_id=inst, block_size=16,
        location_spec_infos=(LocationSpecInfo("tp0", 1024),),
        model_deployment=ModelDeployment(model_name="m", dtype="bfloat16")))
    print("REG", inst, flush=True)
for n in range(100_000):
    inst = {INSTANCES!r}[n % 3]
    keys = list(range(first + n * {KEYS_PER_WRITE}, first + (n + 1) * {KEYS_PER_WRITE}))
    w = mgr.start_write_cache(
        StartWriteCacheRequest(instance_id=inst, block_keys=keys, write_timeout_seconds=60))
    if n % 5 == 4:
        print("OPEN", inst, keys[0], flush=True)
        continue
    mgr.finish_write_cache(FinishWriteCacheRequest(instance_id=inst, write_session_id=w.write_session_id,
                                                   success_blocks=BlockMask(offset=len(keys))))
    print("ACK", inst, keys[0], flush=True)
    clock.advance(0.001)
"""


def run_and_kill(path: Path, first_key: int, acks_before_kill: int) -> list[list[str]]:
    """Start a writer, SIGKILL it after ``acks_before_kill`` acknowledged writes, return every line it
    printed (lines already in the pipe when it died were acknowledged too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(first_key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    lines: list[list[str]] = []
    acks = 0
    try:
        for line in child.stdout:
            lines.append(line.split())
            acks += lines[-1][0] == "ACK"
            if acks >= acks_before_kill:
                child.send_signal(signal.SIGKILL)  # mid-stream: it is writing the next batch
                break
        else:
            raise AssertionError(f"writer stopped early: {child.wait()} {child.stderr.read()}")  # type: ignore[union-attr]
        lines.extend(line.split() for line in child.stdout)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return lines


def test_kill_9_loses_no_acknowledged_write_and_leaves_no_writing_location(tmp_path: Path) -> None:
    path = tmp_path / "kvsim-meta.db"
    lines = run_and_kill(path, first_key=0, acks_before_kill=120)
    lines += run_and_kill(path, first_key=10_000_000, acks_before_kill=80)  # recovers, writes on, dies

    registered = {inst for kind, inst, *_ in lines if kind == "REG"}
    acked = [(inst, int(first)) for kind, inst, first in (x for x in lines if x[0] != "REG") if kind == "ACK"]
    opened = [
        (inst, int(first)) for kind, inst, first in (x for x in lines if x[0] != "REG") if kind == "OPEN"
    ]
    assert registered == set(INSTANCES) and len(acked) >= 200 and len(opened) >= 40

    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()

    # A new process (this one) opens the file: recovery runs in the manager's constructor.
    mgr = make_manager(ManualClock(T0 + 3600), store=SqliteStore(path))
    assert [i.instance_id for i in mgr.list_instance_info()] == list(INSTANCES)
    for inst, first in acked:
        keys = list(range(first, first + KEYS_PER_WRITE))
        found = mgr.get_cache_location(
            GetCacheLocationRequest(instance_id=inst, query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys)
        ).locations
        assert len(found) == KEYS_PER_WRITE, f"acknowledged write {inst}/{first} lost"

    def statuses() -> dict[LocationStatus, int]:
        out: dict[LocationStatus, int] = {}
        for inst in INSTANCES:
            cursor = ""
            while True:
                keys, cursor = mgr.store.meta_scan(inst, cursor, 1000)
                for record in mgr.store.meta_get(inst, keys):
                    assert record is not None
                    for location in record.locations:
                        out[location.status] = out.get(location.status, 0) + 1
                if not cursor:
                    break
        return out

    after_recovery = statuses()
    assert LocationStatus.CLS_WRITING not in after_recovery
    serving = after_recovery[LocationStatus.CLS_SERVING]
    # Each writer may have committed one more finish whose ACK it never printed: at most one extra write
    # per kill, never one fewer.
    assert serving - len(acked) * KEYS_PER_WRITE in (0, KEYS_PER_WRITE, 2 * KEYS_PER_WRITE)
    # The unfinished writes (and a start cut short by the kill) are queued for deletion...
    assert after_recovery[LocationStatus.CLS_DELETING] >= len(opened) * KEYS_PER_WRITE
    assert mgr.num_pending_deletions() == after_recovery[LocationStatus.CLS_DELETING]
    # ...and carried out by poll once the deletion delay has passed.
    mgr.poll(T0 + 7200)
    assert statuses() == {LocationStatus.CLS_SERVING: serving}
    assert mgr.num_pending_deletions() == 0
    mgr.close()
