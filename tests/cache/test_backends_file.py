"""The ``file`` backend: the reference's URIs, real files, packed-file deletion, bookkeeping across
reopenings, and its errors (bad roots, escaping keys, failed unlinks)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    ErrorCode,
    NfsStorageSpec,
    RemoveCacheRequest,
    SimulatedBackend,
    StorageConfig,
    TairMemPoolStorageSpec,
    default_instance_group,
)
from kvsim.cache.backends import (
    BackendError,
    FileBackend,
    StorageFullError,
    StorageUsage,
    make_backend_factory,
    real_backend_factory,
)
from kvsim.cache.store import MemoryStore
from kvsim.core import ManualClock

from .conftest import finish, make_manager, register, start, uris, write


def nfs(root: Path | str, per_file: int = 1, name: str = "nfs_01") -> StorageConfig:
    root = str(root)
    return StorageConfig(name, NfsStorageSpec(root if root.endswith("/") else root + "/", per_file))


def digest(*keys: str) -> str:
    return hashlib.blake2b("|".join(keys).encode(), digest_size=8).hexdigest()


def test_uris_match_the_simulated_backend(tmp_path: Path) -> None:
    keys = ["i/tp0/1", "i/tp0/2", "i/tp0/3", "i/tp1/1", "i/tp1/2"]
    for per_file in (0, 1, 2, 8):
        config = nfs(tmp_path / f"p{per_file}", per_file)
        assert FileBackend(config).create(keys, 64) == SimulatedBackend(config).create(keys, 64)


def test_reference_uri_vectors(tmp_path: Path) -> None:
    root = f"{tmp_path}/data/"
    b = FileBackend(nfs(root, 2))
    assert b.create(["key1", "key2", "key3", "key4", "key5"], 128) == [
        f"file://nfs_01{root}key1_{digest('key1', 'key2')}?blkid=0&size=128",
        f"file://nfs_01{root}key1_{digest('key1', 'key2')}?blkid=1&size=128",
        f"file://nfs_01{root}key3_{digest('key3', 'key4')}?blkid=0&size=128",
        f"file://nfs_01{root}key3_{digest('key3', 'key4')}?blkid=1&size=128",
        f"file://nfs_01{root}key5?blkid=0&size=128",
    ]
    assert sorted(os.listdir(root)) == sorted(
        [f"key1_{digest('key1', 'key2')}", f"key3_{digest('key3', 'key4')}", "key5"]
    )


def test_create_makes_sparse_files_sized_for_their_blocks(tmp_path: Path) -> None:
    b = FileBackend(nfs(tmp_path, 3))
    b.create(["inst/tp0/a", "inst/tp0/b", "inst/tp0/c", "inst/tp0/d"], 1000)
    packed = tmp_path / "inst" / "tp0" / f"a_{digest('inst/tp0/a', 'inst/tp0/b', 'inst/tp0/c')}"
    assert packed.stat().st_size == 3000
    assert (tmp_path / "inst" / "tp0" / "d").stat().st_size == 1000
    assert b.usage() == StorageUsage(4000, None)
    assert b.live_blocks(str(packed)) == 3


def test_packed_file_is_deleted_only_with_its_last_block(tmp_path: Path) -> None:
    b = FileBackend(nfs(tmp_path, 4))
    blocks = b.create(["k/s/1", "k/s/2", "k/s/3"], 10)
    path = tmp_path / "k" / "s" / f"1_{digest('k/s/1', 'k/s/2', 'k/s/3')}"
    b.delete([blocks[1]])
    assert path.exists() and b.exist(blocks) == [True, True, True]
    b.delete([blocks[0], blocks[2]])
    assert not path.exists()
    assert b.exist(blocks) == [False, False, False]
    assert b.usage().used_bytes == 0


def test_a_file_shared_by_two_locations_survives_the_first(tmp_path: Path) -> None:
    b = FileBackend(nfs(tmp_path))
    (first,) = b.create(["k/s/1"], 10)
    (again,) = b.create(["k/s/1"], 10)  # the same key written into a second location
    assert first == again
    b.delete([first])
    assert (tmp_path / "k" / "s" / "1").exists()
    b.delete([again])
    assert not (tmp_path / "k" / "s" / "1").exists()


def test_restore_rebuilds_live_counts_after_a_reopen(tmp_path: Path) -> None:
    config = nfs(tmp_path, 2)
    blocks = FileBackend(config).create(["k/s/1", "k/s/2"], 10)
    reopened = FileBackend(config)
    reopened.restore(blocks)
    assert reopened.usage().used_bytes == 20
    reopened.delete([blocks[0]])
    assert reopened.exist(blocks) == [True, True]  # the neighbour keeps the file
    reopened.delete([blocks[1]])
    assert os.listdir(tmp_path / "k" / "s") == []


def test_capacity_is_all_or_nothing(tmp_path: Path) -> None:
    b = FileBackend(nfs(tmp_path), capacity_bytes=25)
    b.create(["k/s/1", "k/s/2"], 10)
    with pytest.raises(StorageFullError, match="20 bytes requested, 5 of 25 free"):
        b.create(["k/s/3", "k/s/4"], 10)
    assert sorted(os.listdir(tmp_path / "k" / "s")) == ["1", "2"]
    assert b.usage_ratio() == 20 / 25


def test_a_failed_create_removes_the_files_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = FileBackend(nfs(tmp_path))
    (kept,) = b.create(["k/s/0"], 10)  # an existing file the failing call shares: it stays
    real_open = os.open

    def fail_third(path: str, flags: int, mode: int = 0o777) -> int:
        if path.endswith("/3"):
            raise OSError(28, "No space left on device", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", fail_third)
    with pytest.raises(BackendError) as err:
        b.create(["k/s/0", "k/s/1", "k/s/2", "k/s/3"], 10)
    assert str(err.value) == f"storage 'nfs_01': cannot create '{tmp_path}/k/s/3': No space left on device"
    assert os.listdir(tmp_path / "k" / "s") == ["0"]
    assert b.usage().used_bytes == 10 and b.exist([kept]) == [True]


def test_bad_roots_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="root_path must be absolute, got 'data/'"):
        FileBackend(StorageConfig("n", NfsStorageSpec("data/", 1)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        BackendError, match=rf"storage 'n': cannot create root '{blocker}/sub/': Not a directory"
    ):
        FileBackend(nfs(f"{blocker}/sub", name="n"))
    with pytest.raises(BackendError, match="the file backend needs an nfs spec, got pace"):
        FileBackend(StorageConfig("p", TairMemPoolStorageSpec("d")))


def test_keys_may_not_escape_the_root(tmp_path: Path) -> None:
    b = FileBackend(nfs(tmp_path / "root"))
    for key in ("../evil/tp0/1", "i/../../x", "/abs/key", "a//b"):
        with pytest.raises(BackendError, match="would escape the root"):
            b.create([key], 10)
    assert os.listdir(tmp_path) == ["root"] and os.listdir(tmp_path / "root") == []
    outside = tmp_path / "outside"
    outside.write_text("keep")
    b.delete([f"file://nfs_01{outside}?size=10"])  # never made by this storage: left alone
    assert outside.exists()


def test_a_failed_unlink_is_reported_and_can_be_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = FileBackend(nfs(tmp_path))
    blocks = b.create(["k/s/1", "k/s/2"], 10)
    real_unlink = os.unlink

    def refuse(path: str) -> None:
        if path.endswith("/1"):
            raise PermissionError(13, "Permission denied", path)
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(BackendError) as err:
        b.delete(blocks)
    assert err.value.failed == [blocks[0]]
    assert str(err.value) == (
        f"storage 'nfs_01': could not delete 1 block(s), first '{tmp_path}/k/s/1': Permission denied"
    )
    assert b.exist(blocks) == [True, False] and b.usage().used_bytes == 10
    monkeypatch.setattr(os, "unlink", real_unlink)
    b.delete(err.value.failed)
    assert os.listdir(tmp_path / "k" / "s") == []


def test_factories_by_mode_and_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mode 'fast' \\(known: real, simulated\\)"):
        make_backend_factory("fast")
    factory = make_backend_factory("real", capacities={"nfs_01": 99})
    backend = factory(nfs(tmp_path))
    assert isinstance(backend, FileBackend) and backend.capacity_bytes == 99
    with pytest.raises(BackendError) as err:
        real_backend_factory()(StorageConfig("pool", TairMemPoolStorageSpec("d")))
    assert str(err.value) == (
        "storage 'pool': no real backend for storage type 'pace' (known: file, hf3fs, mooncake); "
        "use the simulated backend"
    )
    assert isinstance(make_backend_factory("simulated")(nfs(tmp_path)), SimulatedBackend)


# ------------------------------------------------------------------------------------- through the manager


def file_manager(
    root: Path, clock: ManualClock, per_file: int = 8, store: MemoryStore | None = None
) -> CacheManager:
    """A manager whose only storage is a real file backend under ``root`` (group ``default``)."""
    mgr = make_manager(clock, store=store, backend_factory=real_backend_factory(), defaults=False)
    mgr.add_storage(nfs(root, per_file))
    mgr.create_instance_group(default_instance_group())
    return mgr


def test_manager_deletes_a_packed_file_only_with_its_last_block(tmp_path: Path, clock: ManualClock) -> None:
    mgr = file_manager(tmp_path, clock, per_file=4)
    register(mgr, specs=[("tp0", 100), ("tp1", 100)])
    res = write(mgr, [1, 2])
    # Same-size specs share one create call, spec-major: one file holds tp0 and tp1 of both keys.
    (file_uri,) = {u.split("?")[0] for loc in uris(res.locations) for u in loc}
    path = Path(file_uri.removeprefix("file://nfs_01"))
    assert path.stat().st_size == 400
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    assert mgr.poll().deleted_locations == 1
    assert path.exists()  # key 2's blocks still live in it
    assert mgr.backend("nfs_01").live_blocks(str(path)) == 2  # type: ignore[attr-defined]
    mgr.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2]))
    mgr.poll()
    assert not path.exists()


def test_failed_and_expired_writes_delete_their_files(tmp_path: Path, clock: ManualClock) -> None:
    mgr = file_manager(tmp_path, clock, per_file=1)
    register(mgr)
    res = start(mgr, [1, 2], timeout=5)
    paths = [Path(u[0].split("?")[0].removeprefix("file://nfs_01")) for u in uris(res.locations)]
    assert all(p.exists() for p in paths)
    finish(mgr, res.write_session_id, BlockMask(bool_masks=(True, False)))
    mgr.poll()
    assert [p.exists() for p in paths] == [True, False]
    start(mgr, [3], timeout=1)
    clock.advance(2)
    assert mgr.poll().deleted_keys == 1
    assert sorted(os.listdir(tmp_path / "i1" / "tp0")) == ["1"]


def test_restart_restores_live_counts_from_the_index(tmp_path: Path, clock: ManualClock) -> None:
    store = MemoryStore()
    first = file_manager(tmp_path, clock, per_file=4, store=store)
    register(first)
    res = write(first, [1, 2])
    path = Path(uris(res.locations)[0][0].split("?")[0].removeprefix("file://nfs_01"))
    second = make_manager(clock, store=store, backend_factory=real_backend_factory(), defaults=False)
    assert second.backend("nfs_01").live_blocks(str(path)) == 2  # type: ignore[attr-defined]
    second.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[1]))
    second.poll()
    assert path.exists()
    # update_storage reopens the backend: its counts are rebuilt from the index again.
    second.update_storage(second.list_storage()[0])
    assert second.backend("nfs_01").live_blocks(str(path)) == 1  # type: ignore[attr-defined]
    second.remove_cache(RemoveCacheRequest(instance_id="i1", block_keys=[2]))
    second.poll()
    assert not path.exists()


def test_add_storage_with_a_root_that_cannot_be_created(tmp_path: Path, clock: ManualClock) -> None:
    mgr = make_manager(clock, backend_factory=real_backend_factory(), defaults=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError) as err:
        mgr.add_storage(nfs(tmp_path / "f" / "r"))
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert err.value.message == (
        "storage 'nfs_01': failed to open: "
        f"storage 'nfs_01': cannot create root '{tmp_path}/f/r/': Not a directory"
    )
    assert mgr.list_storage() == ()
