"""The simulated backend: reference URI shapes, capacity bookkeeping, URI grammar."""

from __future__ import annotations

import hashlib

import pytest

from kvsim.cache import (
    MooncakeStorageSpec,
    NfsStorageSpec,
    SimulatedBackend,
    StorageConfig,
    TairMemPoolStorageSpec,
    ThreeFSStorageSpec,
    simulated_backend_factory,
)
from kvsim.cache.backends import BackendError, StorageFullError, format_uri, parse_uri
from kvsim.cache.types import LocalStorageSpec


def test_uri_grammar() -> None:
    assert format_uri("file", "nfs_01", "/a/b", {"size": 4, "blkid": 0}) == "file://nfs_01/a/b?blkid=0&size=4"
    assert parse_uri("file://nfs_01/a/b?blkid=0&size=4") == (
        "file",
        "nfs_01",
        "/a/b",
        {"blkid": "0", "size": "4"},
    )
    assert parse_uri("mooncake://mc/?key=a/b&size=1") == ("mooncake", "mc", "/", {"key": "a/b", "size": "1"})
    assert parse_uri("pace://p") == ("pace", "p", "", {})
    with pytest.raises(ValueError, match="not a URI"):
        parse_uri("nfs_01/a")


def test_nfs_one_block_per_file() -> None:
    b = SimulatedBackend(StorageConfig("nfs_01", NfsStorageSpec("/tmp/nfs/", 1)))
    assert b.create(["inst/tp0/7b", "inst/tp0/7c"], 1024) == [
        "file://nfs_01/tmp/nfs/inst/tp0/7b?size=1024",
        "file://nfs_01/tmp/nfs/inst/tp0/7c?size=1024",
    ]


def test_nfs_several_blocks_per_file() -> None:
    b = SimulatedBackend(StorageConfig("nfs_01", NfsStorageSpec("/data/", 2)))
    uris = b.create(["key1", "key2", "key3", "key4", "key5"], 128)
    # The file name carries a 64-bit hash of the joined storage keys.
    h12 = hashlib.blake2b(b"key1|key2", digest_size=8).hexdigest()
    h34 = hashlib.blake2b(b"key3|key4", digest_size=8).hexdigest()
    assert uris == [
        f"file://nfs_01/data/key1_{h12}?blkid=0&size=128",
        f"file://nfs_01/data/key1_{h12}?blkid=1&size=128",
        f"file://nfs_01/data/key3_{h34}?blkid=0&size=128",
        f"file://nfs_01/data/key3_{h34}?blkid=1&size=128",
        "file://nfs_01/data/key5?blkid=0&size=128",
    ]


def test_hf3fs_mooncake_pace_shapes() -> None:
    three = SimulatedBackend(StorageConfig("3fs_a", ThreeFSStorageSpec("", "/3fs/stage/", "kv_manager/", 1)))
    assert three.create(["i/tp0/1"], 64) == ["hf3fs://3fs_a/3fs/stage/kv_manager/i/tp0/1?size=64"]
    mc = SimulatedBackend(StorageConfig("mc", MooncakeStorageSpec("h", "c", "tcp", "", "m")))
    assert mc.create(["i/tp0/1"], 64) == ["mooncake://mc/?key=i/tp0/1&size=64"]
    pace = SimulatedBackend(StorageConfig("pool", TairMemPoolStorageSpec("d")))
    assert pace.create(["a", "b"], 64) == [
        "pace://pool/0?media_type=mem&node_id=0&range_id=0&size=64",
        "pace://pool/64?media_type=mem&node_id=0&range_id=0&size=64",
    ]


def test_capacity_is_all_or_nothing_and_delete_frees() -> None:
    b = SimulatedBackend(StorageConfig("n", NfsStorageSpec("/r/", 1)), capacity_bytes=300)
    first = b.create(["a", "b"], 100)
    assert (b.used_bytes, b.usage_ratio()) == (200, 200 / 300)
    with pytest.raises(StorageFullError, match="200 bytes requested, 100 of 300 free"):
        b.create(["c", "d"], 100)
    assert b.used_bytes == 200
    assert b.exist([*first, "file://n/r/zz?size=100"]) == [True, True, False]
    b.delete([first[0], "file://n/r/unknown?size=1"])
    assert b.used_bytes == 100 and b.exist(first) == [False, True]


def test_same_storage_key_twice_shares_a_uri() -> None:
    b = SimulatedBackend(StorageConfig("n", NfsStorageSpec("/r/", 1)))
    (u1,) = b.create(["k"], 10)
    (u2,) = b.create(["k"], 10)
    assert u1 == u2 and b.used_bytes == 20
    b.delete([u1])
    assert b.exist([u1]) == [True] and b.used_bytes == 10
    b.delete([u2])
    assert b.exist([u1]) == [False] and b.used_bytes == 0


def test_unsupported_and_closed() -> None:
    with pytest.raises(BackendError, match="unsupported storage type unknown"):
        SimulatedBackend(StorageConfig("x", LocalStorageSpec()))
    b = SimulatedBackend(StorageConfig("n", NfsStorageSpec("/r/", 1)))
    b.close()
    assert not b.available()
    with pytest.raises(BackendError, match="closed"):
        b.create(["a"], 1)


def test_factory_capacities() -> None:
    factory = simulated_backend_factory({"small": 10}, default_capacity=99)
    assert factory(StorageConfig("small", NfsStorageSpec("/r/"))).capacity_bytes == 10
    assert factory(StorageConfig("other", NfsStorageSpec("/r/"))).capacity_bytes == 99
