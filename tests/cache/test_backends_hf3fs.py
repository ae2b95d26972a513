"""The ``hf3fs`` backend: the reference's path layout on a mountpoint, real files when the mountpoint
exists, URIs only when it does not."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kvsim.cache import SimulatedBackend, StorageConfig, ThreeFSStorageSpec, VcnsThreeFSStorageSpec
from kvsim.cache.backends import BackendError, Hf3fsBackend, real_backend_factory


def three(mount: Path | str, per_file: int = 1, touch: bool = True) -> StorageConfig:
    return StorageConfig("3fs_a", ThreeFSStorageSpec("", f"{mount}/", "kv_manager/", per_file, touch))


def test_uris_follow_the_reference_layout(tmp_path: Path) -> None:
    b = Hf3fsBackend(three(tmp_path, 2))
    keys = ["i/tp0/1", "i/tp0/2", "i/tp0/3"]
    digest = hashlib.blake2b(b"i/tp0/1|i/tp0/2", digest_size=8).hexdigest()
    assert b.create(keys, 64) == [
        f"hf3fs://3fs_a{tmp_path}/kv_manager/i/tp0/1_{digest}?blkid=0&size=64",
        f"hf3fs://3fs_a{tmp_path}/kv_manager/i/tp0/1_{digest}?blkid=1&size=64",
        f"hf3fs://3fs_a{tmp_path}/kv_manager/i/tp0/3?blkid=0&size=64",
    ]


def test_same_uris_as_the_simulated_backend(tmp_path: Path) -> None:
    keys = ["i/tp0/1", "i/tp0/2", "i/tp0/3"]
    assert Hf3fsBackend(three(tmp_path, 2)).create(keys, 64) == SimulatedBackend(three(tmp_path, 2)).create(
        keys, 64
    )


def test_mounted_touches_files_and_deletes_with_the_last_block(tmp_path: Path) -> None:
    b = Hf3fsBackend(three(tmp_path, 2))
    assert b.file_io and b.io_note == ""
    blocks = b.create(["i/tp0/1", "i/tp0/2"], 64)
    (name,) = [p.name for p in (tmp_path / "kv_manager" / "i" / "tp0").iterdir()]
    path = tmp_path / "kv_manager" / "i" / "tp0" / name
    assert path.stat().st_size == 0  # touched, as the reference; clients write through usrbio
    b.delete([blocks[0]])
    assert path.exists()
    b.delete([blocks[1]])
    assert not path.exists()


def test_without_touch_the_client_makes_the_file(tmp_path: Path) -> None:
    b = Hf3fsBackend(three(tmp_path, 1, touch=False))
    (uri,) = b.create(["i/tp0/1"], 64)
    path = tmp_path / "kv_manager" / "i" / "tp0" / "1"
    assert not path.exists()
    path.parent.mkdir(parents=True)  # the client's write makes its directories and the file
    path.write_bytes(b"x" * 64)
    b.delete([uri])
    assert not path.exists()


def test_missing_mountpoint_gives_uris_only(tmp_path: Path) -> None:
    b = Hf3fsBackend(three(tmp_path / "not_mounted"))
    assert not b.file_io
    assert (
        b.io_note
        == f"mountpoint '{tmp_path}/not_mounted/' does not exist here: URIs only, no files are touched"
    )
    assert b.available()
    (uri,) = b.create(["i/tp0/1"], 64)
    assert b.exist([uri]) == [True]
    b.delete([uri])
    assert b.exist([uri]) == [False]
    assert not (tmp_path / "not_mounted").exists()
    relative = Hf3fsBackend(StorageConfig("r", ThreeFSStorageSpec("", "3fs/", "kv/", 1)))
    assert relative.io_note == "mountpoint '3fs/' is not an absolute path: URIs only, no files are touched"


def test_vcns_has_no_real_backend(tmp_path: Path) -> None:
    config = StorageConfig("v", VcnsThreeFSStorageSpec("", str(tmp_path), "r", 1, False, "h", 80, "u"))
    with pytest.raises(BackendError, match="no real backend for storage type 'vcns_hf3fs'"):
        real_backend_factory()(config)
    with pytest.raises(BackendError, match="the hf3fs backend needs a threefs spec, got vcns_hf3fs"):
        Hf3fsBackend(config)
