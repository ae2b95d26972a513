"""Throughput of the cache manager on each meta store (memory, sqlite, redis); prints figures.

Targets from issue 5: a prefix match of 64 keys (32 of them cached) at >= 5,000/s on sqlite and
>= 1,500/s on redis. Also reports StartWriteCache+FinishWriteCache pairs of 16 new keys, the same
match with the decode memo off (every record parsed), and what this redis-server does with plain GETs
through redis-py, for scale.

Each figure is measured ``--repeats`` times on fresh state; it prints operations per second of this
process's CPU time (best repeat) and of wall time (median). The sqlite target is checked against CPU
time, as in ``bench_cache.py``: SQLite runs inside this process, and CPU time is what one core delivers
whatever else the machine runs. The redis target is checked against wall time, since most of a redis
call is the round trip and the server's work, which this process's CPU time does not see.

The redis figures need ``redis-server`` on the PATH (a private one is started on a free loopback port
in a temporary directory and stopped afterwards), or ``--redis-url`` for a running server (its
database is flushed). Run: ``python benchmarks/bench_stores.py [--repeats N] [--quick]``. Not a test:
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from kvsim.cache import (
    BlockMask,
    CacheManager,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    LocationSpecInfo,
    ModelDeployment,
    QueryType,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
    default_startup_config,
)
from kvsim.cache.store import CacheStore, MemoryStore, SqliteStore
from kvsim.core import ManualClock, make_rng

Setup = Callable[[], tuple[int, Callable[[int], object], Callable[[], None]]]
StoreFactory = Callable[[], CacheStore]


def measure(
    label: str,
    unit: str,
    setup: Setup,
    repeats: int,
    target: float | None = None,
    target_on: str = "cpu",
) -> float:
    """Run ``setup()`` -> ``(n, op, done)``, then ``op(i)`` for i < n and ``done()``, ``repeats`` times;
    print the CPU-time rate (best) and the wall-time rate (median); check ``target`` against the
    ``target_on`` one ("cpu" or "wall") and return that rate."""
    cpu_rates, wall_rates = [], []
    for _ in range(repeats):
        n, op, done = setup()
        gc.collect()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n):
            op(i)
        cpu_rates.append(n / max(time.process_time() - cpu0, 1e-9))
        wall_rates.append(n / (time.perf_counter() - wall0))
        done()
    cpu, wall = max(cpu_rates), statistics.median(wall_rates)
    rate = wall if target_on == "wall" else cpu
    verdict = ""
    if target is not None:
        verdict = f"  ok ({target_on})" if rate >= target else f"  BELOW TARGET {target:,.0f} ({target_on})"
    print(f"{label:<52} {cpu:>9,.0f} {unit}/s CPU, {wall:>9,.0f} {unit}/s wall{verdict}")
    return rate


def make_manager(store: CacheStore) -> CacheManager:
    """A manager with the startup config and one instance (block 16 tokens, one 16 KiB spec)."""
    mgr = CacheManager(ManualClock(0.0), make_rng(0), store=store)
    mgr.apply_startup_config(*default_startup_config())
    mgr.register_instance(
        RegisterInstanceRequest(
            instance_group="default",
            instance_id="bench",
            block_size=16,
            location_spec_infos=(LocationSpecInfo("tp0", 16 << 10),),
            model_deployment=ModelDeployment(model_name="m", dtype="bfloat16", tp_size=1),
        )
    )
    return mgr


def start_request(keys: list[int]) -> StartWriteCacheRequest:
    return StartWriteCacheRequest(instance_id="bench", block_keys=keys, write_timeout_seconds=30)


def finish_request(session: str, written: int) -> FinishWriteCacheRequest:
    return FinishWriteCacheRequest(
        instance_id="bench", write_session_id=session, success_blocks=BlockMask(offset=written)
    )


def prefix_setup(n: int, stores: StoreFactory) -> Setup:
    """500 sequences of 64 keys whose first 32 are cached; match them in turn."""

    def setup() -> tuple[int, Callable[[int], object], Callable[[], None]]:
        mgr = make_manager(stores())
        rng = np.random.default_rng(1)  # benchmark data only
        seqs = [rng.integers(-(2**62), 2**62, size=64).tolist() for _ in range(500)]
        for seq in seqs:
            res = mgr.start_write_cache(start_request(seq[:32]))
            mgr.finish_write_cache(finish_request(res.write_session_id, 32))
        requests = [
            GetCacheLocationRequest(instance_id="bench", query_type=QueryType.QT_PREFIX_MATCH, block_keys=seq)
            for seq in seqs
        ]
        assert len(mgr.get_cache_location(requests[0]).locations) == 32
        return n, lambda i: mgr.get_cache_location(requests[i % 500]), mgr.close

    return setup


def write_setup(n: int, stores: StoreFactory) -> Setup:
    """Start and finish writes of 16 new keys."""

    def setup() -> tuple[int, Callable[[int], object], Callable[[], None]]:
        mgr = make_manager(stores())
        fresh = np.random.default_rng(2).integers(-(2**62), 2**62, size=(n, 16)).tolist()

        def pair(i: int) -> None:
            res = mgr.start_write_cache(start_request(fresh[i]))
            mgr.finish_write_cache(finish_request(res.write_session_id, 16))

        return n, pair, mgr.close

    return setup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str | None]:
    """A redis-server on a free 127.0.0.1 port (no persistence), or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir), "--save", ""]
    args += ["--appendonly", "no", "--daemonize", "no", "--logfile", str(workdir / "redis.log")]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        for _ in range(250):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def redis_gets(url: str, repeats: int, scale: float) -> None:
    """What redis-py and this server do with plain GETs, one per round trip and 64 per pipeline."""
    import redis

    client = redis.Redis.from_url(url)
    client.set("bench:k", "v" * 100)
    n = int(20_000 * scale)

    def one() -> tuple[int, Callable[[int], object], Callable[[], None]]:
        return n, lambda i: client.get("bench:k"), lambda: None

    def piped() -> tuple[int, Callable[[int], object], Callable[[], None]]:
        def batch(i: int) -> None:
            pipe = client.pipeline(transaction=False)
            for _ in range(64):
                pipe.get("bench:k")
            pipe.execute()

        return n // 16, batch, lambda: None

    measure("redis-py GET, one per round trip", "GETs", one, repeats)
    rate = measure("redis-py GET, 64 per pipeline (rate in batches)", "batches", piped, repeats)
    print(f"{'':<52} = {rate * 64:>9,.0f} GETs/s wall")
    client.delete("bench:k")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, 2 repeats")
    parser.add_argument("--redis-url", help="use this redis (flushed!) instead of starting one")
    args = parser.parse_args()
    scale, repeats = (0.25, 2) if args.quick else (1.0, args.repeats)
    n_match, n_write = int(20_000 * scale), int(4_000 * scale)

    with tempfile.TemporaryDirectory(prefix="kvsim-bench-") as tmp:
        workdir = Path(tmp)
        counter = iter(range(1_000_000))

        def sqlite(**options: object) -> StoreFactory:
            return lambda: SqliteStore(workdir / f"bench-{next(counter)}.db", **options)  # type: ignore[arg-type]

        print("memory store")
        measure("  prefix match, 64 keys, 32 hits", "matches", prefix_setup(n_match, MemoryStore), repeats)
        measure("  start+finish write, 16 new keys", "pairs", write_setup(n_write, MemoryStore), repeats)
        print("sqlite store (WAL, synchronous=normal)")
        measure(
            "  prefix match, 64 keys, 32 hits", "matches", prefix_setup(n_match, sqlite()), repeats, 5_000
        )
        measure(
            "  prefix match, decode memo off",
            "matches",
            prefix_setup(n_match, sqlite(decode_cache=0)),
            repeats,
        )
        measure("  start+finish write, 16 new keys", "pairs", write_setup(n_write, sqlite()), repeats)
        measure(
            "  start+finish write, synchronous=full",
            "pairs",
            write_setup(max(n_write // 10, 50), sqlite(synchronous="full")),
            repeats,
        )

        with contextlib.ExitStack() as stack:
            url = args.redis_url or stack.enter_context(private_redis(workdir))
            if url is None:
                print("redis store: skipped (redis-server not installed; apt-get install -y redis-server)")
                return
            from kvsim.cache.store.redis import RedisStore

            def redis_store(**options: object) -> StoreFactory:
                def open_flushed() -> CacheStore:
                    store = RedisStore(url, **options)  # type: ignore[arg-type]
                    store._r.flushdb()  # fresh state per repeat
                    return store

                return open_flushed

            probe = RedisStore(url)
            print(f"redis store ({url}, hiredis: {'yes' if probe.hiredis else 'no'})")
            probe.close()
            measure(
                "  prefix match, 64 keys, 32 hits",
                "matches",
                prefix_setup(n_match, redis_store()),
                repeats,
                1_500,
                target_on="wall",
            )
            measure(
                "  prefix match, decode memo off",
                "matches",
                prefix_setup(n_match, redis_store(decode_cache=0)),
                repeats,
            )
            measure(
                "  start+finish write, 16 new keys", "pairs", write_setup(n_write, redis_store()), repeats
            )
            redis_gets(url, repeats, scale)


if __name__ == "__main__":
    main()
