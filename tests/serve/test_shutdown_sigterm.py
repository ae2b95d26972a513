"""SIGTERM while clients write: ``kvsim serve`` drains and exits 0, and no acknowledged request is lost.

Four writers (two over gRPC, two over HTTP) stream two-phase writes into a server with the default sqlite
store. The server gets SIGTERM in the middle; each writer stops at its first "unavailable". Every call
either completed with a proper answer or was refused cleanly, never half-answered, and after a restart
over the same data directory every write whose FinishWriteCache was acknowledged is served.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvsim.serve.client import ServiceUnavailable

from .serve_process import ServeProcess, node_factory, register, served_uris, write


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Makes ``kvsim serve`` processes; kills them all at the end."""
    yield from node_factory(tmp_path)


def test_sigterm_under_load_drains_and_loses_no_acknowledged_write(
    nodes: Callable[..., ServeProcess],
) -> None:
    node = nodes("drain", "--storage-backend", "simulated").start()
    node.wait_ready()
    with node.client("grpc") as client:
        register(client)
    acked: list[list[int]] = []
    broken: list[str] = []
    refused = [0]
    enough = threading.Event()

    def writer(transport: str, first: int) -> None:
        with node.client(transport, timeout_s=10.0) as client:
            for n in range(100_000):
                keys = list(range(first + n * 4, first + (n + 1) * 4))
                try:
                    write(client, keys)
                except ServiceUnavailable:
                    refused[0] += 1
                    return
                except Exception as exc:  # a half-answered call or a server error
                    broken.append(f"{type(exc).__name__}: {exc}")
                    return
                acked.append(keys)
                if len(acked) >= 200:
                    enough.set()

    threads = [
        threading.Thread(target=writer, args=(transport, k * 10_000_000))
        for k, transport in enumerate(("grpc", "http", "grpc", "http"))
    ]
    for thread in threads:
        thread.start()
    assert enough.wait(30)
    assert node.terminate(timeout_s=30) == 0  # drained within the grace period, then exited 0
    for thread in threads:
        thread.join(30)
    assert broken == []
    assert refused[0] == 4  # every writer ended on a clean refusal
    log = node.stderr()
    assert "stopping: no new requests; draining in-flight ones" in log
    assert log.rstrip().endswith("kvsim.serve: stopped")

    node.start().wait_ready()
    with node.client("grpc") as client:
        lost = [keys[0] for keys in acked if len(served_uris(client, keys)) != 4]
    assert (len(acked) >= 200, lost) == (True, [])
    assert node.terminate() == 0
