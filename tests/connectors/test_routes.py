"""URI routing: the client decodes exactly the URIs the server's backends make, routes them by storage
name through ``storage_configs``, and refuses anything else with one clear error."""

from __future__ import annotations

import json

import pytest

from kvsim.cache import MooncakeStorageSpec, NfsStorageSpec, StorageConfig, ThreeFSStorageSpec
from kvsim.cache.backends.layout import block_uris, file_path, packed_files
from kvsim.connectors import TransferError, parse_storage_configs, resolve_uri
from kvsim.connectors.routes import split_uri

NFS = StorageConfig("nfs_01", NfsStorageSpec(root_path="/data/kv/", key_count_per_file=8))
NFS1 = StorageConfig("nfs_1", NfsStorageSpec(root_path="/data/one/", key_count_per_file=1))
FS3 = StorageConfig("3fs_a", ThreeFSStorageSpec(mountpoint="/mnt/3fs", root_dir="kv", key_count_per_file=4))
MC = StorageConfig("mc", MooncakeStorageSpec("h", "http://m", "tcp", "", "127.0.0.1:50051"))


def configs(*storages: StorageConfig) -> str:
    """The ``storage_configs`` JSON a server returns for these storages."""
    return json.dumps([s.to_model_dict() for s in storages])


ROUTES = parse_storage_configs(configs(NFS, NFS1, FS3, MC))


def test_storage_configs_are_parsed_per_type() -> None:
    assert sorted(ROUTES) == ["3fs_a", "mc", "nfs_01", "nfs_1"]
    assert (ROUTES["nfs_01"].type, ROUTES["nfs_01"].root, ROUTES["nfs_01"].key_count_per_file) == (
        "file",
        "/data/kv/",
        8,
    )
    assert (ROUTES["3fs_a"].type, ROUTES["3fs_a"].root, ROUTES["3fs_a"].key_count_per_file) == (
        "hf3fs",
        "/mnt/3fs/kv/",
        4,
    )
    assert ROUTES["mc"].spec["master_server_entry"] == "127.0.0.1:50051"
    assert ROUTES["mc"].file_like is False


def test_the_servers_packed_file_uris_decode_to_path_and_offset() -> None:
    keys = [f"inst/tp0/{i:x}" for i in range(10)]
    (name, batch), (name2, batch2) = packed_files(keys, 8)
    uris = block_uris("file", "nfs_01", file_path(NFS.spec, name), len(batch), 4096, True)  # type: ignore[arg-type]
    refs = [resolve_uri(u, ROUTES) for u in uris]
    assert [r.blkid for r in refs] == list(range(8))
    assert [r.offset for r in refs] == [i * 4096 for i in range(8)]
    assert {r.path for r in refs} == {"/data/kv/" + name}
    assert all(r.packed and r.size == 4096 and r.scheme == "file" for r in refs)
    last = block_uris("file", "nfs_01", file_path(NFS.spec, name2), len(batch2), 4096, True)  # type: ignore[arg-type]
    assert [resolve_uri(u, ROUTES).blkid for u in last] == [0, 1]


def test_single_key_files_are_not_packed() -> None:
    (name, _), *_ = packed_files(["inst/tp0/7b"], 1)
    (uri,) = block_uris("file", "nfs_1", file_path(NFS1.spec, name), 1, 100, False)  # type: ignore[arg-type]
    assert uri == "file://nfs_1/data/one/inst/tp0/7b?size=100"
    ref = resolve_uri(uri, ROUTES)
    assert (ref.path, ref.blkid, ref.offset, ref.packed) == ("/data/one/inst/tp0/7b", 0, 0, False)


def test_hf3fs_uris_use_the_mount_path() -> None:
    (name, _), *_ = packed_files(["i/tp_0/1", "i/tp_0/2"], 4)
    uris = block_uris("hf3fs", "3fs_a", file_path(FS3.spec, name), 2, 64, True)  # type: ignore[arg-type]
    ref = resolve_uri(uris[1], ROUTES)
    assert ref.path == f"/mnt/3fs/kv/{name}" and ref.offset == 64 and ref.scheme == "hf3fs"


def test_mooncake_uris_carry_the_object_key() -> None:
    ref = resolve_uri("mooncake://mc/?key=i/tp0/7b&size=512", ROUTES)
    assert (ref.key, ref.size, ref.path) == ("i/tp0/7b", 512, "")


def test_mounts_remap_a_storage_root_to_a_local_directory() -> None:
    routes = parse_storage_configs(configs(NFS, FS3), mounts={"3fs_a": "/local/3fs", "nfs_01": "/x/y"})
    assert resolve_uri("hf3fs://3fs_a/mnt/3fs/kv/f?size=1", routes).path == "/local/3fs/f"
    assert resolve_uri("file://nfs_01/data/kv/a/b?size=1", routes).path == "/x/y/a/b"
    with pytest.raises(TransferError, match=r"mounts: unknown storage\(s\) \['nope'\]"):
        parse_storage_configs(configs(NFS), mounts={"nope": "/z"})


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pace://nfs_01/x?size=1", "unknown URI scheme 'pace' (known: file, hf3fs, mooncake)"),
        ("s3://b/k?size=1", "unknown URI scheme 's3'"),
        ("file://other/data/kv/x?size=1", "storage 'other' is not in the instance's storage_configs"),
        ("hf3fs://nfs_01/data/kv/x?size=1", "scheme 'hf3fs' does not fit storage 'nfs_01' of type 'file'"),
        ("file://nfs_01/etc/passwd?size=1", "is not inside storage 'nfs_01'"),
        ("file://nfs_01/data/kv/../../etc/passwd?size=1", "is not inside storage 'nfs_01'"),
        ("file://nfs_01/data/kv/?size=1", "is not inside storage 'nfs_01'"),
        ("file://nfs_01/data/kv/x", "the size parameter is missing"),
        ("file://nfs_01/data/kv/x?size=0", "size must be > 0"),
        ("file://nfs_01/data/kv/x?size=ten", "size='ten' is not an integer"),
        ("file://nfs_01/data/kv/x?blkid=-1&size=4", "blkid=-1 is negative"),
        ("mooncake://mc/?size=4", "the key parameter is missing"),
        ("nfs_01/data/kv/x", "not a URI"),
        ("", "not a URI"),
    ],
)
def test_bad_uris_are_refused_with_one_clear_error(uri: str, message: str) -> None:
    with pytest.raises(TransferError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_uri(uri, ROUTES)


def test_split_uri_follows_the_reference_grammar() -> None:
    assert split_uri("file://n/a/b?blkid=1&size=2&x") == (
        "file",
        "n",
        "/a/b",
        {"blkid": "1", "size": "2", "x": ""},
    )
    assert split_uri("mooncake://mc?key=a=b") == ("mooncake", "mc", "", {"key": "a=b"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "storage_configs: not valid JSON"),
        ('{"a": 1}', "expected a JSON array"),
        ('[{"type": "file"}]', r"storage_configs\[0\]: expected an object with a global_unique_name"),
        (
            '[{"global_unique_name": "n", "type": "file", "storage_spec": {"key_count_per_file": "x"}}]',
            "not an integer",
        ),
    ],
)
def test_malformed_storage_configs_are_refused(text: str, message: str) -> None:
    with pytest.raises(TransferError, match=message):
        parse_storage_configs(text)


def test_an_empty_storage_configs_routes_nothing() -> None:
    assert parse_storage_configs("") == {}
    with pytest.raises(TransferError, match=r"\(known: none\)"):
        resolve_uri("file://nfs_01/data/kv/x?size=1", {})
