"""Admin operations (§1.5, §7 admin cases): storages, instance groups, accounts, config snapshots."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvsim.cache import (
    Account,
    AccountRole,
    CacheConfig,
    CacheError,
    CacheManager,
    CachePreferStrategy,
    CacheReclaimStrategy,
    ErrorCode,
    InstanceGroup,
    MetaCachePolicyConfig,
    MetaIndexerConfig,
    MetaStorageBackendConfig,
    MooncakeStorageSpec,
    NfsStorageSpec,
    StorageConfig,
    ThreeFSStorageSpec,
    VcnsThreeFSStorageSpec,
    default_instance_group,
    default_storage_config,
)
from kvsim.cache.backends import BackendError
from kvsim.cache.types import LocalStorageSpec, TairMemPoolStorageSpec
from kvsim.core import ManualClock, make_rng

from .conftest import make_manager, prefix, register, start, write


def err_of(fn: object, *args: object) -> tuple[ErrorCode, str]:
    with pytest.raises(CacheError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value.code, err.value.message


def test_add_and_list_storage(clock: ManualClock) -> None:
    """§7 admin test_add_and_list_storage."""
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("test_storage_01", NfsStorageSpec("/tmp/1")))
    assert [s.global_unique_name for s in mgr.list_storage()] == ["nfs_01", "test_storage_01"]
    assert mgr.list_storage()[1] == StorageConfig("test_storage_01", NfsStorageSpec("/tmp/1", 1))


def test_add_storage_duplicate_keeps_the_stored_config(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    code, message = err_of(mgr.add_storage, StorageConfig("nfs_01", NfsStorageSpec("/other/")))
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "storage: 'nfs_01' already exists")
    assert mgr.list_storage() == (default_storage_config(),)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "storage: is required"),
        (StorageConfig("", NfsStorageSpec("/r/")), "storage.global_unique_name: is required"),
        (StorageConfig("x"), "storage.spec: must be one of"),
        (StorageConfig("x", LocalStorageSpec()), "storage.spec: must be one of"),
        (StorageConfig("x", NfsStorageSpec("")), "storage.nfs.root_path: is required"),
        (StorageConfig("x", ThreeFSStorageSpec(mountpoint="/m")), "storage.threefs.root_dir: is required"),
        (
            StorageConfig("x", VcnsThreeFSStorageSpec(mountpoint="/m", root_dir="r", remote_host="h")),
            "storage.vcnsthreefs.remote_port: must be >= 1, got 0",
        ),
        (StorageConfig("x", MooncakeStorageSpec("h", "c", "")), "storage.mooncake.protocol: is required"),
        (
            StorageConfig("x", MooncakeStorageSpec("h", "c", "rdma")),
            "storage.mooncake.rdma_device: is required",
        ),
        (StorageConfig("x", TairMemPoolStorageSpec()), "storage.tair_mem_pool.domain: is required"),
    ],
)
def test_add_storage_validation(clock: ManualClock, config: object, message: str) -> None:
    mgr = make_manager(clock)
    code, got = err_of(mgr.add_storage, config)
    assert code == ErrorCode.INVALID_ARGUMENT and got.startswith(message)
    assert len(mgr.list_storage()) == 1


def test_backend_open_failure_registers_nothing(clock: ManualClock) -> None:
    def factory(config: StorageConfig):  # type: ignore[no-untyped-def]
        raise BackendError("no master")

    mgr = make_manager(clock, backend_factory=factory, defaults=False)
    code, message = err_of(mgr.add_storage, default_storage_config())
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "storage 'nfs_01': failed to open: no master")
    assert mgr.list_storage() == ()


def test_enable_disable_remove_update_storage(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.disable_storage("nfs_01")
    assert mgr.list_storage()[0].is_available is False
    assert not mgr.backend("nfs_01").available()
    mgr.enable_storage("nfs_01")
    assert mgr.list_storage()[0].is_available is True
    code, message = err_of(mgr.enable_storage, "nope")
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "storage_unique_name: storage 'nope' does not exist")
    assert err_of(mgr.disable_storage, "")[0] == ErrorCode.INVALID_ARGUMENT

    old = mgr.backend("nfs_01")
    mgr.update_storage(StorageConfig("nfs_01", NfsStorageSpec("/new/", 2)))
    assert mgr.list_storage()[0].spec == NfsStorageSpec("/new/", 2)
    assert not old.available() and mgr.backend("nfs_01") is not old
    assert (
        err_of(mgr.update_storage, StorageConfig("nope", NfsStorageSpec("/r/")))[0]
        == ErrorCode.INTERNAL_ERROR
    )

    mgr.remove_storage("nfs_01")
    assert mgr.list_storage() == ()
    assert err_of(mgr.remove_storage, "nfs_01")[0] == ErrorCode.INTERNAL_ERROR


def test_create_update_get_remove_instance_group(clock: ManualClock) -> None:
    """§7 admin test_create_update_get_remove_instance_group."""
    mgr = make_manager(clock)
    group = dataclasses.replace(default_instance_group(), name="g", version=1)
    mgr.create_instance_group(group)
    assert mgr.get_instance_group("g") == group
    updated = dataclasses.replace(group, user_data="hello", version=2)
    mgr.update_instance_group(updated, current_version=1)
    assert mgr.get_instance_group("g").user_data == "hello"
    mgr.remove_instance_group("g")
    code, message = err_of(mgr.get_instance_group, "g")
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "name: group 'g' does not exist")


def test_group_update_needs_matching_versions(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    group = mgr.get_instance_group("default")
    assert group.version == 0
    code, message = err_of(mgr.update_instance_group, dataclasses.replace(group, version=2), 1)
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "current_version: 1 is not the stored version 0")
    code, message = err_of(mgr.update_instance_group, dataclasses.replace(group, version=0), 0)
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "instance_group.version: 0 must be greater than 0")
    code, _ = err_of(mgr.create_instance_group, group)
    assert code == ErrorCode.INTERNAL_ERROR
    code, _ = err_of(mgr.update_instance_group, dataclasses.replace(group, name="nope", version=1), 0)
    assert code == ErrorCode.INTERNAL_ERROR
    assert mgr.get_instance_group("default") == group


def valid_group() -> InstanceGroup:
    return InstanceGroup(
        name="g",
        storage_candidates=("nfs_01",),
        global_quota_group_name="q",
        cache_config=CacheConfig(
            reclaim_strategy=CacheReclaimStrategy(storage_unique_name="nfs_01"),
            data_storage_strategy=CachePreferStrategy.CPS_PREFER_3FS,
        ),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "instance_group.name: is required"),
        ({"storage_candidates": ()}, "instance_group.storage_candidates: needs at least one storage name"),
        ({"storage_candidates": ("",)}, "instance_group.storage_candidates[0]: is required"),
        ({"global_quota_group_name": ""}, "instance_group.global_quota_group_name: is required"),
        ({"cache_config": None}, "instance_group.cache_config: is required"),
        ({"cache_config": CacheConfig()}, "instance_group.cache_config.data_storage_strategy: must not be"),
        (
            {"cache_config": CacheConfig(data_storage_strategy=CachePreferStrategy.CPS_ALWAYS_3FS)},
            "instance_group.cache_config.reclaim_strategy.storage_unique_name: is required",
        ),
        (
            {
                "cache_config": CacheConfig(
                    reclaim_strategy=CacheReclaimStrategy(storage_unique_name="n"),
                    data_storage_strategy=CachePreferStrategy.CPS_ALWAYS_3FS,
                    meta_indexer_config=MetaIndexerConfig(
                        meta_storage_backend_config=MetaStorageBackendConfig(storage_type="")
                    ),
                )
            },
            "instance_group.cache_config.meta_indexer_config.meta_storage_backend_config.storage_type: "
            "is required",
        ),
        (
            {
                "cache_config": CacheConfig(
                    reclaim_strategy=CacheReclaimStrategy(storage_unique_name="n"),
                    data_storage_strategy=CachePreferStrategy.CPS_ALWAYS_3FS,
                    meta_indexer_config=MetaIndexerConfig(
                        meta_cache_policy_config=MetaCachePolicyConfig(type="")
                    ),
                )
            },
            "instance_group.cache_config.meta_indexer_config.meta_cache_policy_config.type: is required",
        ),
    ],
)
def test_group_validation(clock: ManualClock, change: dict, message: str) -> None:
    mgr = make_manager(clock)
    mgr.create_instance_group(valid_group())
    code, got = err_of(
        mgr.create_instance_group, dataclasses.replace(valid_group(), **{"name": "g2", **change})
    )
    assert code == ErrorCode.INVALID_ARGUMENT and got.startswith(message)
    assert [mgr.get_instance_group("g")] == [valid_group()]


def test_removed_group_breaks_writes_of_its_instances(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.create_instance_group(valid_group())
    register(mgr, "i9", group="g")
    mgr.remove_instance_group("g")
    with pytest.raises(CacheError) as err:
        write(mgr, [1], instance_id="i9")
    # As the reference's storage selector (EC_INSTANCE_NOT_EXIST).
    assert (err.value.code, err.value.message) == (
        ErrorCode.INSTANCE_NOT_EXIST,
        "instance group 'g' does not exist",
    )


def test_add_delete_list_account(clock: ManualClock) -> None:
    """§7 admin test_add_delete_list_account."""
    mgr = make_manager(clock)
    mgr.add_account("new_user", "secret", AccountRole.ROLE_USER)
    mgr.add_account("boss", "pw", 1)
    mgr.add_account("odd", "pw", 7)  # unknown role -> ROLE_USER, as the reference
    assert mgr.list_account() == (
        Account("boss", AccountRole.ROLE_ADMIN),
        Account("new_user", AccountRole.ROLE_USER),
        Account("odd", AccountRole.ROLE_USER),
    )
    assert err_of(mgr.add_account, "new_user", "x") == (
        ErrorCode.INTERNAL_ERROR,
        "user_name: account 'new_user' already exists",
    )
    assert err_of(mgr.add_account, "", "x") == (ErrorCode.INVALID_ARGUMENT, "user_name: is required")
    assert err_of(mgr.add_account, "u", "") == (ErrorCode.INVALID_ARGUMENT, "password: is required")
    mgr.delete_account("new_user")
    assert [a.user_name for a in mgr.list_account()] == ["boss", "odd"]
    assert err_of(mgr.delete_account, "new_user")[0] == ErrorCode.INTERNAL_ERROR
    assert mgr.verify_account("boss", "pw") == AccountRole.ROLE_ADMIN
    assert mgr.verify_account("boss", "PW") is None
    assert mgr.verify_account("ghost", "pw") is None


def test_config_snapshot_round_trip(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("mc", MooncakeStorageSpec("h", "c", "tcp", "", "m"), is_available=True))
    mgr.disable_storage("mc")
    register(mgr, "i1")
    mgr.add_account("admin", "pw", AccountRole.ROLE_ADMIN)
    snapshot = mgr.gen_config_snapshot()
    doc = json.loads(snapshot)
    assert (doc["format"], doc["version"]) == ("kvsim-config-snapshot", 1)
    assert [s["global_unique_name"] for s in doc["storages"]] == ["mc", "nfs_01"]
    assert doc["accounts"][0]["password_hash"].startswith("pbkdf2_sha256$1000$")
    assert "pw" not in json.dumps(doc["accounts"])

    other = make_manager(ManualClock(0.0), seed=9, defaults=False)
    other.load_config_snapshot(snapshot)
    assert other.gen_config_snapshot() == snapshot
    assert other.list_storage() == mgr.list_storage()
    assert other.list_instance_info() == mgr.list_instance_info()
    assert other.verify_account("admin", "pw") == AccountRole.ROLE_ADMIN
    assert not other.backend("mc").available()
    write(other, [1])
    assert len(prefix(other, [1])) == 1


def test_loading_a_snapshot_keeps_unchanged_backends_and_cache(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    register(mgr)
    write(mgr, [1, 2])
    backend = mgr.backend("nfs_01")
    mgr.load_config_snapshot(mgr.gen_config_snapshot())
    assert mgr.backend("nfs_01") is backend
    assert len(prefix(mgr, [1, 2])) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "config_snapshot: is not JSON"),
        ("[]", "config_snapshot: is not a kvsim-config-snapshot document"),
        ('{"format":"kvsim-config-snapshot","version":2}', "config_snapshot.version: unsupported version 2"),
        ('{"format":"kvsim-config-snapshot","version":1,"x":1}', "config_snapshot: unknown field(s) ['x']"),
        (
            '{"format":"kvsim-config-snapshot","version":1,"storages":[{"global_unique_name":"a","spec":{"type":"file"}}]}',
            "storage.nfs.root_path: is required",
        ),
        (
            '{"format":"kvsim-config-snapshot","version":1,"accounts":[{"user_name":"u","role":"ROLE_USER","password_hash":"plain"}]}',
            "config_snapshot.accounts['u'].password_hash: is not a salted hash",
        ),
        (
            '{"format":"kvsim-config-snapshot","version":1,"storages":[{"global_unique_name":"a","spec":{"type":"file","root_path":"/"}},{"global_unique_name":"a","spec":{"type":"file","root_path":"/"}}]}',
            "config_snapshot.storages[1]: duplicate name 'a'",
        ),
        (
            '{"format":"kvsim-config-snapshot","version":1,"instance_groups":[{"name":7}]}',
            "config_snapshot.instance_groups[0]: config_snapshot.instance_groups[0].name: expected a string",
        ),
    ],
)
def test_bad_snapshots_change_nothing(clock: ManualClock, text: str, message: str) -> None:
    mgr = make_manager(clock)
    before = mgr.gen_config_snapshot()
    code, got = err_of(mgr.load_config_snapshot, text)
    assert code == ErrorCode.INVALID_ARGUMENT and got.startswith(message), got
    assert mgr.gen_config_snapshot() == before


def test_snapshot_with_a_failing_backend_changes_nothing(clock: ManualClock) -> None:
    opened: list[str] = []

    def factory(config: StorageConfig):  # type: ignore[no-untyped-def]
        from kvsim.cache import SimulatedBackend

        if config.global_unique_name == "bad":
            raise BackendError("cannot open")
        opened.append(config.global_unique_name)
        return SimulatedBackend(config)

    source = make_manager(clock)
    source.add_storage(StorageConfig("bad", NfsStorageSpec("/b/")))  # opens fine with the default factory
    source.add_storage(StorageConfig("new", NfsStorageSpec("/n/")))
    snapshot = source.gen_config_snapshot()
    mgr = make_manager(ManualClock(0.0), backend_factory=factory)
    before = mgr.gen_config_snapshot()
    code, message = err_of(mgr.load_config_snapshot, snapshot)
    assert (code, message) == (ErrorCode.INTERNAL_ERROR, "storage 'bad': failed to open: cannot open")
    assert mgr.gen_config_snapshot() == before
    assert mgr.backend("nfs_01").available()


def test_manager_over_an_existing_store_recovers(clock: ManualClock) -> None:
    """A restart over a kept store: registry reloaded, WRITING locations of lost sessions deleted."""
    first = make_manager(clock)
    register(first)
    write(first, [1])
    start(first, [2])
    second = CacheManager(clock, make_rng(1), store=first.store)  # the same data, a new process
    assert second.list_instance_info() == first.list_instance_info()
    assert second.list_storage() == first.list_storage()
    assert second.num_pending_deletions() == 1
    assert second.num_open_sessions() == 0
    assert second.poll().deleted_keys == 1
    assert len(prefix(second, [1, 2])) == 1


def test_apply_startup_config_is_idempotent(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.apply_startup_config(default_storage_config(), default_instance_group())
    assert len(mgr.list_storage()) == 1
    assert mgr.get_instance_group("default") == default_instance_group()


def test_vcns_storage_can_be_added(clock: ManualClock) -> None:
    mgr = make_manager(clock)
    mgr.add_storage(StorageConfig("v", VcnsThreeFSStorageSpec("", "/m", "r", 1, False, "host", 80, "uri")))
    assert [s.global_unique_name for s in mgr.list_storage()] == ["nfs_01", "v"]
