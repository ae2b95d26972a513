"""The transfer library on real files: every URI scheme available here round-trips real bytes (file in both
layouts, 3FS paths on a local "mount", Mooncake through a fake client), with checksums; bad input raises
one clear error before any I/O; failed or timed-out blocks are reported, never presented as complete."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kvsim.cache import MooncakeStorageSpec, NfsStorageSpec, StorageConfig, ThreeFSStorageSpec
from kvsim.cache.backends.layout import block_uris, file_path, packed_files
from kvsim.connectors import TransferClient, TransferError
from kvsim.connectors.routes import StorageRoute
from kvsim.connectors.transfer import SUM_SUFFIX

SIZE = 4096


def configs(*storages: StorageConfig) -> str:
    """The ``storage_configs`` JSON a server returns for these storages."""
    return json.dumps([s.to_model_dict() for s in storages])


def server_uris(storage: StorageConfig, keys: list[str], size: int = SIZE) -> list[str]:
    """The URIs the server's file-like backends hand out for ``keys`` (same layout code)."""
    spec = storage.spec
    protocol = "file" if isinstance(spec, NfsStorageSpec) else "hf3fs"
    per_file = max(1, spec.key_count_per_file)  # type: ignore[union-attr]
    out: list[str] = []
    for name, batch in packed_files(keys, per_file):
        path = file_path(spec, name)  # type: ignore[arg-type]
        out += block_uris(protocol, storage.global_unique_name, path, len(batch), size, per_file > 1)
    return out


def blocks(n: int, seed: int, size: int = SIZE) -> list[np.ndarray]:
    """``n`` blocks of random bytes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def nfs(tmp_path: Path) -> StorageConfig:
    """A file storage packing 8 blocks per file under ``tmp_path/nfs/``."""
    return StorageConfig("nfs_01", NfsStorageSpec(root_path=f"{tmp_path}/nfs/", key_count_per_file=8))


@pytest.fixture
def nfs1(tmp_path: Path) -> StorageConfig:
    """A file storage with one block per file."""
    return StorageConfig("nfs_1", NfsStorageSpec(root_path=f"{tmp_path}/one/", key_count_per_file=1))


@pytest.fixture
def client(nfs: StorageConfig, nfs1: StorageConfig) -> Iterator[TransferClient]:
    """A transfer client of both file storages."""
    with TransferClient(configs(nfs, nfs1), threads=4) as c:
        yield c


KEYS = [f"inst/tp0/{i:x}" for i in range(1, 11)]


def test_packed_files_round_trip_and_keep_their_neighbours(
    client: TransferClient, nfs: StorageConfig
) -> None:
    uris = server_uris(nfs, KEYS)
    data = blocks(10, seed=1)
    saved = client.save(uris, data)
    assert saved.ok == (True,) * 10 and saved.nbytes == 10 * SIZE and saved.errors == ("",) * 10
    out = [np.zeros(SIZE, np.uint8) for _ in uris]
    loaded = client.load(uris, out)
    assert loaded.all_ok and loaded.num_ok == 10
    assert all(np.array_equal(a, b) for a, b in zip(out, data, strict=True))
    files = [p for p in Path(nfs.spec.root_path).rglob("*") if p.is_file()]  # type: ignore[union-attr]
    assert sorted(p.stat().st_size for p in files) == [2 * SIZE, 8 * SIZE]  # 8 blocks + 2 blocks
    # Rewriting block 3 in place leaves blocks 2 and 4 of the same file alone.
    new = blocks(1, seed=2)
    assert client.save([uris[3]], new).all_ok
    again = [np.zeros(SIZE, np.uint8) for _ in range(3)]
    assert client.load(uris[2:5], again).all_ok
    assert (
        np.array_equal(again[0], data[2])
        and np.array_equal(again[1], new[0])
        and np.array_equal(again[2], data[4])
    )


def test_single_key_files_are_renamed_into_place(client: TransferClient, nfs1: StorageConfig) -> None:
    uris = server_uris(nfs1, KEYS[:3])
    assert all("blkid" not in u for u in uris)
    data = blocks(3, seed=3)
    assert client.save(uris, data).all_ok
    root = Path(nfs1.spec.root_path)  # type: ignore[union-attr]
    names = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert names == ["1", "2", "3"]  # no temporary file is left behind
    assert (root / "inst/tp0/2").read_bytes() == data[1].tobytes()


def test_3fs_paths_round_trip_on_the_mount(tmp_path: Path) -> None:
    mount = tmp_path / "3fs"
    mount.mkdir()
    fs3 = StorageConfig(
        "3fs_a", ThreeFSStorageSpec(mountpoint=str(mount), root_dir="kv", key_count_per_file=4)
    )
    uris = server_uris(fs3, KEYS[:6])
    assert uris[0].startswith(f"hf3fs://3fs_a{mount}/kv/inst/tp0/1_")
    data = blocks(6, seed=4)
    with TransferClient(configs(fs3)) as c:
        assert c.save(uris, data).all_ok
        out = [np.zeros(SIZE, np.uint8) for _ in uris]
        assert c.load(uris, out).all_ok
    assert all(np.array_equal(a, b) for a, b in zip(out, data, strict=True))
    assert len(list((mount / "kv/inst/tp0").iterdir())) == 2


@pytest.mark.parametrize("policy", ["data", "full"])
def test_fsync_policies_still_round_trip(
    tmp_path: Path, nfs: StorageConfig, nfs1: StorageConfig, policy: str
) -> None:
    with TransferClient(configs(nfs, nfs1), fsync=policy) as c:  # type: ignore[arg-type]
        for storage in (nfs, nfs1):
            uris = server_uris(storage, KEYS[:2])
            data = blocks(2, seed=5)
            assert c.save(uris, data).all_ok
            out = [np.zeros(SIZE, np.uint8) for _ in uris]
            assert c.load(uris, out).all_ok and np.array_equal(out[1], data[1])


def test_buffers_may_be_tensors_strided_arrays_and_iovec_lists(
    client: TransferClient, nfs: StorageConfig
) -> None:
    uris = server_uris(nfs, KEYS[:4])
    bf16 = torch.randn(SIZE // 2, dtype=torch.float32).to(torch.bfloat16)  # 2 bytes per element
    strided = np.arange(SIZE * 2, dtype=np.uint8).reshape(2, SIZE)[:, ::2].copy(order="F")  # not C-contiguous
    assert not strided.flags.c_contiguous
    pieces = [np.full(1000, 7, np.uint8), torch.full((SIZE - 1000,), 9, dtype=torch.uint8)]
    raw = bytearray(os.urandom(SIZE))
    assert client.save(uris, [bf16, strided, pieces, raw]).all_ok

    bf16_out = torch.zeros(SIZE // 2, dtype=torch.bfloat16)
    strided_out = np.zeros((SIZE // 2, 2), np.uint8, order="C").T  # a transposed (strided) view
    pieces_out = [np.zeros(3000, np.uint8), torch.zeros(SIZE - 3000, dtype=torch.uint8)]
    raw_out = bytearray(SIZE)
    assert client.load(uris, [bf16_out, strided_out, pieces_out, raw_out]).all_ok
    assert torch.equal(bf16_out, bf16)
    assert np.array_equal(strided_out, strided)
    joined = np.concatenate([pieces_out[0], pieces_out[1].numpy()])
    assert np.array_equal(joined, np.r_[np.full(1000, 7), np.full(SIZE - 1000, 9)].astype(np.uint8))
    assert raw_out == raw


def test_checksums_catch_a_corrupted_block(tmp_path: Path, nfs: StorageConfig) -> None:
    uris = server_uris(nfs, KEYS[:3])
    data = blocks(3, seed=6)
    with TransferClient(configs(nfs), checksums=True) as c:
        assert c.save(uris, data).all_ok
        path = Path(uris[0].split("nfs_01", 1)[1].split("?")[0])
        assert Path(str(path) + SUM_SUFFIX).stat().st_size == 3 * 16
        with open(path, "r+b") as f:  # flip one byte of block 1
            f.seek(SIZE + 100)
            byte = f.read(1)
            f.seek(SIZE + 100)
            f.write(bytes([byte[0] ^ 0xFF]))
        out = [np.zeros(SIZE, np.uint8) for _ in uris]
        result = c.load(uris, out)
        assert result.ok == (True, False, True)
        assert result.errors[1] == f"{path}: checksum mismatch in block 1"
        assert np.array_equal(out[0], data[0]) and np.array_equal(out[2], data[2])
        os.unlink(str(path) + SUM_SUFFIX)
        missing = c.load(uris[:1], [np.zeros(SIZE, np.uint8)])
        assert missing.ok == (False,) and missing.errors[0] == f"{path}: no checksum for block 0"


def test_missing_and_short_files_fail_their_blocks_only(client: TransferClient, nfs1: StorageConfig) -> None:
    uris = server_uris(nfs1, KEYS[:3])
    assert client.save(uris[:1], blocks(1, seed=7)).all_ok
    short = Path(nfs1.spec.root_path) / "inst/tp0/2"  # type: ignore[union-attr]
    short.write_bytes(b"x" * 100)
    result = client.load(uris, [np.zeros(SIZE, np.uint8) for _ in uris])
    assert result.ok == (True, False, False) and result.nbytes == SIZE
    assert result.errors[1] == f"{short}: short read (100 of {SIZE} bytes at offset 0)"
    assert result.errors[2].endswith("/inst/tp0/3: No such file or directory")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_bad_input_raises_before_any_io(client: TransferClient, nfs: StorageConfig, tmp_path: Path) -> None:
    uris = server_uris(nfs, KEYS[:2])
    good = blocks(2, seed=8)
    cases: list[tuple[list[str], list[Any], str]] = [
        (
            uris,
            [good[0], np.zeros(SIZE - 1, np.uint8)],
            f"buffer 1: {SIZE - 1} bytes for a block of {SIZE} bytes",
        ),
        (uris, good[:1], "2 URIs but 1 buffers"),
        ([uris[0], "pace://nfs_01/x?size=4096"], good, "unknown URI scheme 'pace'"),
        (
            [uris[0], "file://nope/x?size=4096"],
            good,
            "storage 'nope' is not in the instance's storage_configs",
        ),
        (uris, [good[0], np.zeros(SIZE, dtype=object)], "buffer 1: object arrays hold no raw bytes"),
        (
            uris,
            [good[0], "text"],
            "buffer 1: expected a numpy array, a torch tensor or a list of them, got str",
        ),
        (uris, [good[0], []], "buffer 1: an empty list of pieces"),
    ]
    for case_uris, buffers, message in cases:
        with pytest.raises(TransferError, match=message.replace("(", r"\(")):
            client.save(case_uris, buffers)
    assert _tree(tmp_path / "nfs") == []  # nothing was written by any refused call
    frozen = np.zeros(SIZE, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(
        TransferError, match="buffer 0: the array is read-only; a load needs a writable buffer"
    ):
        client.load(uris[:1], [frozen])
    with pytest.raises(TransferError, match="buffer 0: the buffer is read-only"):
        client.load(uris[:1], [bytes(SIZE)])


def test_bad_options_are_refused(nfs: StorageConfig) -> None:
    with pytest.raises(TransferError, match="threads: must be >= 1, got 0"):
        TransferClient(configs(nfs), threads=0)
    with pytest.raises(TransferError, match="fsync: expected one of none, data, full, got 'sometimes'"):
        TransferClient(configs(nfs), fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TransferError, match="get_timeout_s and put_timeout_s must be > 0"):
        TransferClient(configs(nfs), get_timeout_s=0)
    c = TransferClient(configs(nfs))
    c.close()
    with pytest.raises(TransferError, match="the transfer client is closed"):
        c.load([], [])


def test_a_load_that_hangs_times_out_and_fails_its_blocks(tmp_path: Path, nfs1: StorageConfig) -> None:
    uris = server_uris(nfs1, KEYS[:2])
    fifo = Path(nfs1.spec.root_path) / "inst/tp0/2"  # type: ignore[union-attr]
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a storage that hangs
    c = TransferClient(configs(nfs1), get_timeout_s=0.3)
    try:
        assert c.save(uris[:1], blocks(1, seed=9)).all_ok
        out = [np.zeros(SIZE, np.uint8), np.full(SIZE, 5, np.uint8)]
        start = time.monotonic()
        result = c.load(uris, out)
        assert time.monotonic() - start < 2.0
        assert result.ok == (True, False) and result.errors[1] == "timed out after 0.3 s"
    finally:
        # Release the hung reader (a writer appears and goes: end of file), then stop the pool.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        c.close()
    assert np.array_equal(out[1], np.full(SIZE, 5, np.uint8))  # the late task wrote nothing


def test_a_save_that_times_out_is_never_renamed_into_place(
    monkeypatch: pytest.MonkeyPatch, nfs1: StorageConfig
) -> None:
    release = threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        release.wait(5)  # the disk is slow: the call's deadline passes while data is being flushed
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    uris = server_uris(nfs1, KEYS[:1])
    c = TransferClient(configs(nfs1), put_timeout_s=0.2, fsync="data")
    try:
        result = c.save(uris, blocks(1, seed=10))
        assert result.ok == (False,) and result.errors == ("timed out after 0.2 s",)
    finally:
        release.set()
        c.close()  # waits for the late task, which must give up rather than publish
    root = Path(nfs1.spec.root_path)  # type: ignore[union-attr]
    assert _tree(root) == ["inst", "inst/tp0"]  # neither the block nor a temporary file


class FakeMooncake:
    """A Mooncake Store client in memory (``put``/``get`` as ``MooncakeDistributedStore``)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_puts: set[str] = set()
        self.closed = False

    def put(self, key: str, value: bytes) -> int:
        if key in self.fail_puts:
            return -1
        self.objects[key] = bytes(value)
        return 0

    def get(self, key: str) -> bytes:
        return self.objects.get(key, b"")

    def close(self) -> None:
        self.closed = True


MC = StorageConfig("mc", MooncakeStorageSpec("h", "http://meta", "tcp", "", "127.0.0.1:50051"))


def test_mooncake_objects_round_trip_through_the_client() -> None:
    store = FakeMooncake()
    made: list[tuple[str, Mapping[str, Any]]] = []

    def factory(route: StorageRoute, options: Mapping[str, Any]) -> FakeMooncake:
        made.append((route.spec["master_server_entry"], options))
        return store

    uris = [f"mooncake://mc/?key=inst/tp0/{i:x}&size={SIZE}" for i in range(3)]
    data = blocks(3, seed=11)
    store.fail_puts.add("inst/tp0/2")
    c = TransferClient(configs(MC), mooncake_factory=factory, mooncake_options={"global_segment_size": 1})
    saved = c.save(uris, data)
    assert saved.ok == (True, True, False) and saved.errors[2] == "mooncake put 'inst/tp0/2': returned -1"
    out = [np.zeros(SIZE, np.uint8) for _ in uris]
    loaded = c.load(uris, out)
    assert loaded.ok == (True, True, False)
    assert loaded.errors[2] == f"mooncake get 'inst/tp0/2': 0 bytes, expected {SIZE}"
    assert np.array_equal(out[1], data[1])
    c.close()
    assert made == [("127.0.0.1:50051", {"global_segment_size": 1})] and store.closed


def test_mooncake_without_its_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mooncake", None)  # importing it now raises ImportError
    monkeypatch.setitem(sys.modules, "mooncake.store", None)
    with (
        TransferClient(configs(MC)) as c,
        pytest.raises(
            TransferError,
            match=r"storage 'mc': the Mooncake transfer engine is not installed "
            r"\(pip install mooncake-transfer-engine\)",
        ),
    ):
        c.save([f"mooncake://mc/?key=k&size={SIZE}"], blocks(1, seed=12))


def test_many_blocks_move_in_parallel(client: TransferClient, nfs: StorageConfig) -> None:
    keys = [f"inst/tp1/{i:x}" for i in range(1, 201)]
    uris = server_uris(nfs, keys, size=1024)
    data = blocks(200, seed=13, size=1024)
    assert client.save(uris, data).num_ok == 200
    out = [np.zeros(1024, np.uint8) for _ in uris]
    assert client.load(uris, out).num_ok == 200
    assert all(np.array_equal(a, b) for a, b in zip(out, data, strict=True))
