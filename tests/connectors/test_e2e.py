"""End to end against a real ``kvsim serve``: storages of every layout are added through the admin API,
an instance of a group using each one writes real bytes to the URIs the server allocated and another
client reads them back, with checksums; the files are where the server said they would be."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kvsim.cache import (
    InstanceGroup,
    NfsStorageSpec,
    StorageConfig,
    ThreeFSStorageSpec,
    default_instance_group,
)
from kvsim.connectors import KvcmScheduler, LocalServe, ManagerConnection, TransferClient, make_registration
from kvsim.serve.client import CacheClient

BLOCK = 8
SPEC = 2048
TOKENS = list(range(3000, 3000 + 9 * BLOCK))  # nine blocks


def group_for(name: str, storage: str) -> InstanceGroup:
    """The default group's settings with one storage candidate."""
    return dataclasses.replace(default_instance_group(), name=name, storage_candidates=(storage,))


@pytest.fixture(params=["file-packed", "file-single", "hf3fs"])
def storage(
    request: pytest.FixtureRequest, admin: CacheClient, tmp_path: Path, instance_id: str
) -> StorageConfig:
    """A storage of one layout, added to the session's server with a group of its own."""
    name = f"s-{instance_id}"
    if request.param == "hf3fs":
        mount = tmp_path / "3fs-mount"
        mount.mkdir()
        spec: object = ThreeFSStorageSpec(mountpoint=str(mount), root_dir="kvcache", key_count_per_file=4)
    else:
        per_file = 8 if request.param == "file-packed" else 1
        spec = NfsStorageSpec(root_path=f"{tmp_path}/files/", key_count_per_file=per_file)
    config = StorageConfig(name, spec)  # type: ignore[arg-type]
    admin.add_storage(config)
    admin.create_instance_group(group_for(f"g-{instance_id}", name))
    return config


def test_real_bytes_round_trip_through_every_storage_layout(
    server: LocalServe, storage: StorageConfig, instance_id: str
) -> None:
    registration = make_registration(
        instance_id, BLOCK, [("tp0", SPEC), ("tp1", SPEC)], instance_group=f"g-{instance_id}"
    )
    writer_conn = ManagerConnection([server.http_address], registration)
    reader_conn = ManagerConnection([server.grpc_address], registration)
    writer, reader = KvcmScheduler(writer_conn), KvcmScheduler(reader_conn)
    rng = np.random.default_rng(0)
    data = {r: [rng.integers(0, 256, SPEC, dtype=np.uint8) for _ in range(9)] for r in (0, 1)}
    with TransferClient(writer_conn.register(), checksums=True) as tx:
        plan = writer.start_write(token_ids=TOKENS)
        uri = plan.uris("tp0")[0]
        scheme = "hf3fs" if isinstance(storage.spec, ThreeFSStorageSpec) else "file"
        assert uri.startswith(f"{scheme}://{storage.global_unique_name}/")
        oks = [tx.save(plan.uris(f"tp{r}"), data[r]).ok for r in (0, 1)]
        outcome = writer.finish_write(plan, [a and b for a, b in zip(*oks, strict=True)])
        assert outcome.stored == (True,) * 9
    with TransferClient(reader_conn.register(), checksums=True) as rx:
        hit = reader.match(token_ids=TOKENS, held=1, spec_names=["tp1"])
        assert hit.indices == tuple(range(1, 9))
        out = [np.zeros(SPEC, np.uint8) for _ in hit.locations]
        assert rx.load([loc.location_specs[0].uri for loc in hit.locations], out).all_ok
    assert all(np.array_equal(a, b) for a, b in zip(out, data[1][1:], strict=True))
    spec = storage.spec
    root = Path(spec.root_path) if isinstance(spec, NfsStorageSpec) else Path(spec.mountpoint) / "kvcache"  # type: ignore[union-attr]
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".kvsum"))
    per_file = spec.key_count_per_file  # type: ignore[union-attr]
    assert len(files) == -(-18 // per_file)  # 9 blocks x 2 specs, packed per_file to a file (spec-major)
    assert sum(f.stat().st_size for f in files) == 18 * SPEC
    writer_conn.close()
    reader_conn.close()
