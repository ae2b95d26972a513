"""The ``mooncake`` backend: the reference's URIs, removes through the client (a fake one here), and
a clear "unavailable" state when the Mooncake package is missing."""

from __future__ import annotations

import dataclasses

import pytest

from kvsim.cache import (
    CacheError,
    CachePreferStrategy,
    ErrorCode,
    MooncakeStorageSpec,
    StorageConfig,
    StorageType,
    default_instance_group,
)
from kvsim.cache.backends import BackendError, MooncakeBackend, real_backend_factory
from kvsim.cache.backends import mooncake as mooncake_module
from kvsim.core import ManualClock

from .conftest import make_manager, register, start, uris

SPEC = MooncakeStorageSpec("host", "http://meta:8080/metadata", "tcp", "", "master:50051")


class FakeClient:
    """In-memory stand-in for ``MooncakeDistributedStore``: a set of object keys; keys in ``refuse``
    fail their remove."""

    def __init__(self, spec: MooncakeStorageSpec, objects: set[str] | None = None) -> None:
        self.spec = spec
        self.objects: set[str] = set() if objects is None else objects
        self.removed: list[str] = []
        self.refuse: set[str] = set()
        self.closed = False

    def remove(self, key: str) -> int:
        if key in self.refuse:
            return -1
        self.removed.append(key)
        self.objects.discard(key)
        return 0

    def is_exist(self, key: str) -> int:
        return 1 if key in self.objects else 0

    def close(self) -> int:
        self.closed = True
        return 0


def backend(**kwargs: object) -> tuple[MooncakeBackend, FakeClient]:
    made: list[FakeClient] = []

    def factory(spec: MooncakeStorageSpec) -> FakeClient:
        made.append(FakeClient(spec))
        return made[-1]

    b = MooncakeBackend(StorageConfig("mc", SPEC, **kwargs), client_factory=factory)  # type: ignore[arg-type]
    return b, made[0]


def test_uris_are_the_references() -> None:
    b, client = backend()
    assert client.spec == SPEC
    assert b.create(["i/tp0/1", "i/tp1/1"], 64) == [
        "mooncake://mc/?key=i/tp0/1&size=64",
        "mooncake://mc/?key=i/tp1/1&size=64",
    ]
    assert b.usage().used_bytes == 128


def test_delete_removes_the_object_once_no_location_holds_it() -> None:
    b, client = backend()
    (uri,) = b.create(["i/tp0/1"], 64)
    b.create(["i/tp0/1"], 64)  # the key written into a second location shares the object
    client.objects.add("i/tp0/1")  # the client's put
    b.delete([uri])
    assert client.removed == [] and b.exist([uri]) == [True]
    b.delete([uri])
    assert client.removed == ["i/tp0/1"] and b.exist([uri]) == [False]
    assert b.usage().used_bytes == 0


def test_a_failed_remove_is_reported_and_retryable() -> None:
    b, client = backend()
    uri_a, uri_b = b.create(["a", "b"], 8)
    client.objects |= {"a", "b"}
    client.refuse.add("a")
    with pytest.raises(BackendError) as err:
        b.delete([uri_a, uri_b])
    assert err.value.failed == [uri_a]
    assert str(err.value) == "storage 'mc': could not delete 1 object(s), first 'a': remove returned -1"
    client.refuse.clear()
    b.delete(err.value.failed)
    assert client.removed == ["b", "a"]


def test_a_remove_of_an_object_already_gone_succeeds() -> None:
    b, client = backend()
    (uri,) = b.create(["gone"], 8)
    client.refuse.add("gone")  # remove fails, but the object no longer exists
    b.delete([uri])
    assert b.exist([uri]) == [False]


def test_restore_and_close() -> None:
    b, client = backend()
    b.restore(["mooncake://mc/?key=k&size=8", "mooncake://mc/?key=k&size=8"])
    assert b.usage().used_bytes == 16
    client.objects.add("k")
    b.delete(["mooncake://mc/?key=k&size=8"])
    assert client.removed == []
    b.close()
    assert client.closed and not b.available()


def missing() -> object:
    """The client module's import on a machine without the Mooncake package."""
    raise ImportError("No module named 'mooncake'")


def test_without_the_package_the_storage_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mooncake_module, "load_client_module", missing)
    b = MooncakeBackend(StorageConfig("mc", SPEC))
    assert not b.available()
    assert b.unavailable_reason == (
        "storage 'mc': the Mooncake client is not installed (pip install mooncake-transfer-engine)"
    )
    with pytest.raises(BackendError, match="the Mooncake client is not installed"):
        b.create(["k"], 8)
    with pytest.raises(BackendError, match="the Mooncake client is not installed"):
        MooncakeBackend(StorageConfig("mc", SPEC, check_storage_available_when_open=True))


def test_setup_failure_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    class Store:
        def setup(self, *args: object) -> int:
            Store.args = args  # type: ignore[attr-defined]
            return -1

    class Module:
        MooncakeDistributedStore = Store

    monkeypatch.setattr(mooncake_module, "load_client_module", lambda: Module)
    b = MooncakeBackend(StorageConfig("mc", SPEC))
    assert b.unavailable_reason == "storage 'mc': Mooncake setup failed with code -1 (master 'master:50051')"
    assert Store.args == (  # type: ignore[attr-defined]
        "host",
        "http://meta:8080/metadata",
        0,
        16 << 20,
        "tcp",
        "",
        "master:50051",
    )


def test_manager_skips_an_unavailable_mooncake_and_refuses_always(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mooncake_module, "load_client_module", missing)
    mgr = make_manager(clock, backend_factory=real_backend_factory(), defaults=False)
    mgr.add_storage(StorageConfig("mc", SPEC))
    group = default_instance_group()
    assert group.cache_config is not None
    cc = dataclasses.replace(
        group.cache_config, data_storage_strategy=CachePreferStrategy.CPS_ALWAYS_MOONCAKE
    )
    mgr.create_instance_group(dataclasses.replace(group, storage_candidates=("mc",), cache_config=cc))
    register(mgr)
    with pytest.raises(CacheError) as err:
        start(mgr, [1])
    assert (err.value.code, err.value.message) == (
        ErrorCode.INTERNAL_ERROR,
        "all storages of instance group 'default' are unavailable",
    )


def test_manager_writes_and_deletes_through_the_client(clock: ManualClock) -> None:
    clients: list[FakeClient] = []

    def factory(spec: MooncakeStorageSpec) -> FakeClient:
        clients.append(FakeClient(spec))
        return clients[-1]

    mgr = make_manager(clock, backend_factory=real_backend_factory(client_factory=factory), defaults=False)
    mgr.add_storage(StorageConfig("mc", SPEC))
    group = default_instance_group()
    assert group.cache_config is not None
    cc = dataclasses.replace(
        group.cache_config, data_storage_strategy=CachePreferStrategy.CPS_PREFER_MOONCAKE
    )
    mgr.create_instance_group(dataclasses.replace(group, storage_candidates=("mc",), cache_config=cc))
    register(mgr)
    res = start(mgr, [7])
    assert res.locations[0].type == StorageType.ST_MOONCAKE
    assert uris(res.locations) == [["mooncake://mc/?key=i1/tp0/7&size=1024"]]
    clients[-1].objects.add("i1/tp0/7")
    clock.advance(31)
    mgr.poll()  # the session expired: its object is removed
    assert clients[-1].removed == ["i1/tp0/7"]
