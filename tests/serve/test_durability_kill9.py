"""``kill -9`` of ``kvsim serve`` with the default sqlite store loses nothing it acknowledged.

A reply is sent only after the store's commit returned, so every registration and finished write a
client saw acknowledged must be served again after the process is killed and restarted over the same data
directory. Write sessions are not persisted: recovery turns the WRITING locations of a session open at the
kill into deletions (COMPAT "restart after kill -9"), so that session can no longer be finished, its
blocks are never served, and its storage is released.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from kvsim.cache import BlockMask, ErrorCode, FinishWriteCacheRequest, GetCacheMetaRequest
from kvsim.serve.client import ServiceUnavailable

from .serve_process import (
    ServeProcess,
    error_code,
    node_factory,
    register,
    served_uris,
    start_write,
    wait_until,
    write,
)

OPEN_KEYS = list(range(1000, 1008))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Makes ``kvsim serve`` processes; kills them all at the end."""
    yield from node_factory(tmp_path)


def file_of(uri: str) -> Path:
    """The file a ``file://nfs_01/<root>/...?blkid=..`` URI of the real file backend points into."""
    return Path(urlsplit(uri).path)


def test_kill_9_restart_serves_all_64_blocks_and_expires_the_open_session(
    nodes: Callable[..., ServeProcess],
) -> None:
    node: ServeProcess = nodes("solo").start()  # the defaults: sqlite in the data dir, real file storage
    node.wait_ready()
    acked: dict[int, str] = {}
    with node.client("grpc") as client:
        register(client, "i1")
        register(client, "i2")
        for n in range(4):
            keys = list(range(n * 16, (n + 1) * 16))
            acked.update(zip(keys, write(client, keys), strict=True))
        opened = start_write(client, OPEN_KEYS)  # acknowledged, never finished
    open_uris = [loc.location_specs[0].uri for loc in opened.locations]
    assert len(acked) == 64 and len(open_uris) == 8
    assert all(file_of(uri).exists() for uri in open_uris)  # the real backend made the files

    node.kill()
    assert node.process is not None and node.process.returncode == -signal.SIGKILL

    node.start().wait_ready()
    keys = sorted(acked)
    with node.client("http") as client:
        assert [info.instance_id for info in client.list_instance_info()] == ["i1", "i2"]
        assert served_uris(client, keys) == [acked[k] for k in keys]  # all 64, at the same locations
        # The session died with the process: it cannot be finished and its blocks are not served...
        finish = FinishWriteCacheRequest(
            instance_id="i1", write_session_id=opened.write_session_id, success_blocks=BlockMask(offset=8)
        )
        assert error_code(lambda: client.finish_write_cache(finish)) == ErrorCode.INTERNAL_ERROR
        assert served_uris(client, OPEN_KEYS) == []

        # ...and the background poll deletes its locations and their files.
        def all_gone() -> bool:
            metas = client.get_cache_meta(GetCacheMetaRequest(instance_id="i1", block_keys=OPEN_KEYS)).metas
            return [json.loads(m)["status"] for m in metas] == ["CLS_NOT_FOUND"] * 8

        wait_until(all_gone, timeout_s=10)
        assert not any(file_of(uri).exists() for uri in open_uris)
        assert len(write(client, OPEN_KEYS)) == 8  # the keys can be written afresh
    assert node.terminate() == 0


def test_kill_9_mid_stream_loses_no_acknowledged_write(nodes: Callable[..., ServeProcess]) -> None:
    """Writers stream two-phase writes over both transports; the server is killed while they run. Every
    write whose FinishWriteCache was answered OK is served after the restart."""
    node: ServeProcess = nodes("stream", "--storage-backend", "simulated").start()
    node.wait_ready()
    with node.client("grpc") as client:
        register(client)
    acked: list[list[int]] = []
    failures: list[str] = []
    enough = threading.Event()

    def writer(transport: str, first: int) -> None:
        with node.client(transport, timeout_s=5.0) as client:
            for n in range(100_000):
                keys = list(range(first + n * 8, first + (n + 1) * 8))
                try:
                    write(client, keys)
                except ServiceUnavailable:
                    return  # the server is gone: this write was not acknowledged
                except Exception as exc:  # anything else is a broken server
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                acked.append(keys)
                if len(acked) >= 150:
                    enough.set()

    threads = [
        threading.Thread(target=writer, args=("grpc", 0)),
        threading.Thread(target=writer, args=("http", 10_000_000)),
    ]
    for thread in threads:
        thread.start()
    assert enough.wait(30), f"writers stalled: {failures}"
    node.kill()  # mid-stream: both writers have calls in flight
    for thread in threads:
        thread.join(30)
    assert failures == []
    done = list(acked)

    node.start().wait_ready()
    with node.client("grpc") as client:
        lost = [keys[0] for keys in done if len(served_uris(client, keys)) != 8]
    assert lost == []
    assert node.terminate() == 0
