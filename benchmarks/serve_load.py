"""Load benchmark of ``kvsim serve``: N concurrent clients over gRPC and HTTP, on loopback only.

It starts ``kvsim serve`` as a child process (sqlite meta store in a temporary data folder, every port
free, an admin token) and drives it from this process with asyncio clients (one gRPC channel or one
HTTP connection per client). Two scenarios, each bounded by a request count and a duration (whichever
ends first):

* ``match``: every client repeats a prefix match of ``--keys`` cached keys (GetCacheLocation,
  QT_PREFIX_MATCH) on one instance;
* ``lifecycle``: every client registers its own instance, then repeats match (the keys it wrote last),
  StartWriteCache of ``--keys`` new keys and FinishWriteCache of all of them.

For each transport and scenario it prints requests per second, p50 and p99 latency (per operation too,
for the lifecycle) and the server's CPU time per request. The CPU time comes from the server's own
resource usage: ``process_cpu_seconds_total`` (``getrusage``, every thread) on its ``GET /metrics``,
read before and after the measured requests; warm-up requests are not measured. The client shares the
machine with the server, so its own CPU time per request is printed as well.

The issue's target (2-core machine, sqlite): ``match`` of 64 keys over gRPC with 32 clients at
>= 1,500 requests/s, p99 <= 50 ms and <= 400 µs of server CPU per request; ``--check`` exits 1 when
it is missed. Run: ``python benchmarks/serve_load.py [--clients 32] [--requests 20000] [--duration 15]``.
Not a test: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from kvsim.serve.catalog import RpcInfo, rpc

TARGET_RPS = 1500.0
TARGET_P99_MS = 50.0
TARGET_CPU_US = 400.0
SPEC_BYTES = 4096  # small blocks: the lifecycle writes hundreds of thousands of keys within the quota
BLOCK_SIZE = 16
OK = 1  # KVCM ErrorCode.OK


# ---------------------------------------------------------------------------------------------- server


@dataclass
class Server:
    """The ``kvsim serve`` child process and how to reach it."""

    process: subprocess.Popen[bytes]
    ports: dict[str, Any]
    token: str

    def cpu_seconds(self) -> float:
        """``process_cpu_seconds_total`` from the server's ``GET /metrics`` (its own getrusage). A server
        without that endpoint (an older kvsim, to compare against) is read from ``/proc/<pid>/stat``."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['admin_http_port']}/metrics",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:  # loopback only
                for line in reply.read().decode().splitlines():
                    if line.startswith("process_cpu_seconds_total "):
                        return float(line.split()[1])
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


@contextlib.contextmanager
def running_server(
    meta_store: str, storage_backend: str, startup_timeout_s: float = 60.0
) -> Iterator[Server]:
    """Start ``kvsim serve`` on free loopback ports in a temporary data folder; stop it at the end."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="kvsim-load-") as tmp:
        data = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "kvsim.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--rpc-port",
            "0",
            "--http-port",
            "0",
            "--admin-rpc-port",
            "0",
            "--admin-http-port",
            "0",
            "--data-dir",
            str(data),
            "--meta-store",
            meta_store,
            "--storage-backend",
            storage_backend,
            "--log-level",
            "WARN",
        ]
        env = {**os.environ, "KVSIM_ADMIN_TOKEN": token}  # not a flag: flags show in the process list
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        try:
            ports_file = data / "ports.json"
            deadline = time.monotonic() + startup_timeout_s
            while not ports_file.exists():
                if process.poll() is not None:
                    raise RuntimeError(f"kvsim serve exited with {process.returncode} before listening")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kvsim serve did not listen within {startup_timeout_s:.0f} s")
                time.sleep(0.05)
            yield Server(process, json.loads(ports_file.read_text()), token)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


# ---------------------------------------------------------------------------------------------- clients


class Client:
    """One benchmark client: one gRPC channel or one HTTP connection."""

    async def call(self, info: RpcInfo, request: Message) -> Any:
        """Send one request; returns the response message (raises on a non-OK status)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release the connection."""


class GrpcClient(Client):
    def __init__(self, server: Server) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.ports['rpc_port']}")
        self._admin_metadata = (("authorization", f"Bearer {server.token}"),)
        self._calls: dict[str, Any] = {}

    async def call(self, info: RpcInfo, request: Message) -> Any:
        stub = self._calls.get(info.grpc_path)
        if stub is None:
            stub = self._calls[info.grpc_path] = self._channel.unary_unary(
                info.grpc_path,
                request_serializer=info.request_type.SerializeToString,
                response_deserializer=info.response_type.FromString,
            )
        metadata = self._admin_metadata if info.kind != "meta" else None
        response = await stub(request, timeout=60, metadata=metadata)
        _check(info, response.header.status.code, response.header.status.message)
        return response

    async def close(self) -> None:
        await self._channel.close()


class HttpClient(Client):
    """Responses come back as plain dicts (``json.loads``): parsing them into messages would cost the
    client more CPU than the server spends, on a machine the two share."""

    def __init__(self, server: Server) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=60)
        )
        self._ports = {"meta": server.ports["http_port"], "admin": server.ports["admin_http_port"]}
        self._token = server.token
        self._bodies: dict[int, tuple[Message, bytes]] = {}

    async def call(self, info: RpcInfo, request: Message) -> Any:
        cached = self._bodies.get(id(request))
        if cached is not None and cached[0] is request:  # the match request is sent over and over
            body = cached[1]
        else:
            body = json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)).encode()
            if len(self._bodies) < 4:
                self._bodies[id(request)] = (request, body)
        headers = {"Content-Type": "application/json"}
        if info.kind != "meta":
            headers["Authorization"] = f"Bearer {self._token}"
        url = f"http://127.0.0.1:{self._ports[info.kind]}/api/{info.http_name}"
        async with self._session.post(url, data=body, headers=headers) as reply:
            if reply.status != 200:
                raise RuntimeError(f"{info.name}: HTTP {reply.status}")
            data = await reply.read()
        document = json.loads(data)
        status = document["header"]["status"]
        if status["code"] != "OK":
            raise RuntimeError(f"{info.name}: status {status['code']}: {status.get('message', '')}")
        return document

    async def close(self) -> None:
        await self._session.close()


def _session(started: Any) -> str:
    """The write session id of a StartWriteCache response (a message over gRPC, a dict over HTTP)."""
    return started["write_session_id"] if isinstance(started, dict) else started.write_session_id  # type: ignore[no-any-return]


def _check(info: RpcInfo, code: int, message: str) -> None:
    if code != OK:
        raise RuntimeError(f"{info.name}: status {code}: {message}")


# ---------------------------------------------------------------------------------------------- requests

REGISTER = rpc("meta", "RegisterInstance")
MATCH = rpc("meta", "GetCacheLocation")
START = rpc("meta", "StartWriteCache")
FINISH = rpc("meta", "FinishWriteCache")


def register_request(instance_id: str) -> Message:
    request = REGISTER.request_type(
        trace_id="load", instance_group="default", instance_id=instance_id, block_size=BLOCK_SIZE
    )
    request.model_deployment.model_name = "bench"  # type: ignore[attr-defined]
    request.model_deployment.dtype = "bf16"  # type: ignore[attr-defined]
    request.location_spec_infos.add(name="tp0", size=SPEC_BYTES)  # type: ignore[attr-defined]
    return request


def match_request(instance_id: str, keys: range) -> Message:
    return MATCH.request_type(trace_id="load", instance_id=instance_id, query_type=1, block_keys=keys)


async def write_keys(client: Client, instance_id: str, keys: range) -> Any:
    """StartWriteCache then FinishWriteCache of every key; returns the StartWriteCache response."""
    started = await client.call(
        START,
        START.request_type(
            trace_id="load", instance_id=instance_id, block_keys=keys, write_timeout_seconds=60
        ),
    )
    finish = FINISH.request_type(
        trace_id="load", instance_id=instance_id, write_session_id=started.write_session_id
    )
    finish.success_blocks.offset = len(keys)  # type: ignore[attr-defined]
    await client.call(FINISH, finish)
    return started


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Result:
    """What one transport and scenario measured."""

    transport: str
    scenario: str
    clients: int
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    first_error: str = ""

    def all_latencies(self) -> list[float]:
        return sorted(x for values in self.latencies.values() for x in values)

    def as_dict(self) -> dict[str, Any]:
        lat = self.all_latencies()
        out: dict[str, Any] = {
            "transport": self.transport,
            "scenario": self.scenario,
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "req_per_s": round(self.requests / self.wall_s, 1) if self.wall_s else 0.0,
            "p50_ms": round(percentile(lat, 0.50) * 1e3, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1e3, 2),
            "server_cpu_us_per_req": round(self.server_cpu_s / self.requests * 1e6, 1)
            if self.requests
            else 0.0,
            "client_cpu_us_per_req": round(self.client_cpu_s / self.requests * 1e6, 1)
            if self.requests
            else 0.0,
        }
        out["operations"] = {
            op: {
                "requests": len(values),
                "p50_ms": round(percentile(sorted(values), 0.50) * 1e3, 2),
                "p99_ms": round(percentile(sorted(values), 0.99) * 1e3, 2),
            }
            for op, values in self.latencies.items()
        }
        return out


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank); 0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


class Budget:
    """Shared stop condition of one measured run: a request count and a deadline."""

    def __init__(self, requests: int, duration_s: float) -> None:
        self.left = requests
        self.deadline = time.monotonic() + duration_s

    def take(self, n: int = 1) -> bool:
        if self.left < n or time.monotonic() >= self.deadline:
            return False
        self.left -= n
        return True


async def timed(result: Result, op: str, call: Awaitable[Any]) -> Any:
    started = time.perf_counter()
    try:
        response = await call
    except Exception as exc:
        result.errors += 1
        result.first_error = result.first_error or f"{op}: {exc}"
        return None
    result.latencies.setdefault(op, []).append(time.perf_counter() - started)
    result.requests += 1
    return response


Scenario = Callable[[Client, int, Budget, Result, int], Awaitable[None]]


async def match_worker(client: Client, index: int, budget: Budget, result: Result, keys: int) -> None:
    request = match_request("bench-match", range(1, keys + 1))
    while budget.take():
        await timed(result, "match", client.call(MATCH, request))


async def lifecycle_worker(client: Client, index: int, budget: Budget, result: Result, keys: int) -> None:
    instance = f"bench-{result.transport}-{index}"
    if not budget.take():
        return
    await timed(result, "register", client.call(REGISTER, register_request(instance)))
    written: range | None = None
    cycle = 0
    while budget.take(3):
        if written is not None:
            await timed(result, "match", client.call(MATCH, match_request(instance, written)))
        else:
            budget.left += 1  # the first cycle has nothing to match yet
        fresh = range(cycle * keys + 1, (cycle + 1) * keys + 1)
        start = START.request_type(
            trace_id="load", instance_id=instance, block_keys=fresh, write_timeout_seconds=60
        )
        started = await timed(result, "start", client.call(START, start))
        if started is None:
            return
        finish = FINISH.request_type(
            trace_id="load", instance_id=instance, write_session_id=_session(started)
        )
        finish.success_blocks.offset = len(fresh)  # type: ignore[attr-defined]
        await timed(result, "finish", client.call(FINISH, finish))
        written = fresh
        cycle += 1


async def run_scenario(
    server: Server,
    transport: str,
    scenario: str,
    clients: int,
    requests: int,
    duration_s: float,
    warmup: int,
    keys: int,
) -> Result:
    """Warm up, then measure one scenario with ``clients`` concurrent clients."""
    make: Callable[[Server], Client] = GrpcClient if transport == "grpc" else HttpClient
    pool = [make(server) for _ in range(clients)]
    worker: Scenario = match_worker if scenario == "match" else lifecycle_worker
    try:
        if scenario == "match":
            await asyncio.gather(
                *(p.call(MATCH, match_request("bench-match", range(1, keys + 1))) for p in pool)
            )
        warm = Result(transport, scenario, clients)
        warm_budget = Budget(warmup, duration_s)
        if scenario == "match":
            await asyncio.gather(*(worker(p, i, warm_budget, warm, keys) for i, p in enumerate(pool)))
        result = Result(transport, scenario, clients)
        budget = Budget(requests, duration_s)
        cpu0, client0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(p, i, budget, result, keys) for i, p in enumerate(pool)))
        result.wall_s = time.perf_counter() - t0
        result.client_cpu_s = time.process_time() - client0
        # The scrape itself costs the server a little CPU; it is one request among thousands.
        result.server_cpu_s = server.cpu_seconds() - cpu0
        return result
    finally:
        await asyncio.gather(*(p.close() for p in pool))


async def prepare(server: Server, keys: int) -> None:
    """Register the match scenario's instance and write its keys."""
    client = GrpcClient(server)
    try:
        await client.call(REGISTER, register_request("bench-match"))
        await write_keys(client, "bench-match", range(1, keys + 1))
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    header = (
        f"{'transport':<9} {'scenario':<10} {'op':<9} {'clients':>7} {'requests':>9} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'srv CPU µs/req':>15} {'cli CPU µs/req':>15} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        d = r.as_dict()
        print(
            f"{r.transport:<9} {r.scenario:<10} {'all':<9} {r.clients:>7} {r.requests:>9} "
            f"{d['req_per_s']:>8.0f} {d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f} "
            f"{d['server_cpu_us_per_req']:>15.0f} {d['client_cpu_us_per_req']:>15.0f} {r.errors:>6}"
        )
        if len(d["operations"]) > 1:
            for op, o in d["operations"].items():
                print(
                    f"{'':<9} {'':<10} {op:<9} {'':>7} {o['requests']:>9} {'':>8} "
                    f"{o['p50_ms']:>8.2f} {o['p99_ms']:>8.2f}"
                )
        if r.first_error:
            print(f"  first error: {r.first_error}")


def check_target(results: list[Result], keys: int, clients: int) -> bool | None:
    """Print the verdict of the issue's target (None when the run did not measure it)."""
    for r in results:
        if (r.transport, r.scenario) == ("grpc", "match") and keys == 64 and clients == 32:
            d = r.as_dict()
            checks = [
                (f"{d['req_per_s']:.0f} req/s >= {TARGET_RPS:.0f}", d["req_per_s"] >= TARGET_RPS),
                (f"p99 {d['p99_ms']:.1f} ms <= {TARGET_P99_MS:.0f}", d["p99_ms"] <= TARGET_P99_MS),
                (
                    f"server CPU {d['server_cpu_us_per_req']:.0f} µs/req <= {TARGET_CPU_US:.0f}",
                    d["server_cpu_us_per_req"] <= TARGET_CPU_US,
                ),
                ("no errors", r.errors == 0),
            ]
            print("\ntarget (gRPC prefix match of 64 keys, 32 clients):")
            for text, ok in checks:
                print(f"  {'PASS' if ok else 'MISS'}  {text}")
            return all(ok for _, ok in checks)
    return None


async def main_async(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with running_server(args.meta_store, args.storage_backend) as server:
        await prepare(server, args.keys)
        for transport in args.transports:
            for scenario in args.scenarios:
                results.append(
                    await run_scenario(
                        server,
                        transport,
                        scenario,
                        args.clients,
                        args.requests,
                        args.duration,
                        args.warmup,
                        args.keys,
                    )
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument(
        "--requests", type=int, default=20_000, help="measured requests per run (default 20000)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run at most (default 15)")
    parser.add_argument("--warmup", type=int, default=1_000, help="unmeasured requests first (match only)")
    parser.add_argument("--keys", type=int, default=64, help="keys per match and per write (default 64)")
    parser.add_argument("--transports", default="grpc,http", help="comma-separated: grpc, http")
    parser.add_argument("--scenarios", default="match,lifecycle", help="comma-separated: match, lifecycle")
    parser.add_argument("--meta-store", default="sqlite", help="the server's --meta-store (default sqlite)")
    parser.add_argument(
        "--storage-backend", default="simulated", help="the server's --storage-backend (default simulated)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--check", action="store_true", help="exit 1 when the issue's target is missed")
    args = parser.parse_args(argv)
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not set(args.transports) <= {"grpc", "http"} or not set(args.scenarios) <= {"match", "lifecycle"}:
        parser.error("--transports takes grpc and http, --scenarios match and lifecycle")
    if args.clients <= 0 or args.requests <= 0 or args.duration <= 0 or args.keys <= 0:
        parser.error("--clients, --requests, --duration and --keys must be > 0")
    print(
        f"kvsim serve load: {args.clients} clients, up to {args.requests} requests or {args.duration:g} s "
        f"per run, {args.keys} keys, meta store {args.meta_store}, {os.cpu_count()} CPUs, loopback\n"
    )
    results = asyncio.run(main_async(args))
    print_table(results)
    verdict = check_target(results, args.keys, args.clients)
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n", encoding="utf-8")
    return 1 if args.check and verdict is False else 0


if __name__ == "__main__":
    sys.exit(main())
