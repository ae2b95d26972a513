"""The store contract: behaviour every :class:`~kvsim.cache.store.CacheStore` must have.

Reusable: a test module for a store subclasses :class:`StoreContract` (or, for a store that keeps its
data across processes, :class:`PersistentStoreContract`) and provides a ``make_store`` fixture returning a
factory. The factory is called once per test; a persistent store's factory is called again to reopen::

    class TestSqliteStore(PersistentStoreContract):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda: SqliteStore(tmp_path / "kv.db")
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvsim.cache.store import REGISTRY_KINDS, CacheStore, KeyRecord, StoredLocation, StoreError, sample_sorted
from kvsim.cache.types import CacheLocation, LocationSpec, LocationStatus, StorageType
from kvsim.core import make_rng

StoreFactory = Callable[[], CacheStore]


def loc(
    location_id: str, status: LocationStatus = LocationStatus.CLS_SERVING, uri: str = ""
) -> StoredLocation:
    """A one-spec NFS location."""
    specs = (LocationSpec("tp0", uri or f"file://nfs_01/data/{location_id}?size=64"),)
    return StoredLocation(location_id, status, CacheLocation(StorageType.ST_NFS, 1, specs), "nfs_01", 64)


def rec(*locations: StoredLocation, created: float = 1.0, last: float = 2.0, hits: int = 0) -> KeyRecord:
    """A record holding ``locations``."""
    return KeyRecord(tuple(locations), created, last, hits)


class StoreContract:
    """Tests every store must pass; subclass it and provide ``make_store``."""

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> CacheStore:
        store = make_store()
        yield store
        store.close()

    # ----------------------------------------------------------------------------- registry

    def test_registry_starts_empty_with_every_kind(self, store: CacheStore) -> None:
        assert store.registry_load() == {kind: {} for kind in REGISTRY_KINDS}

    def test_registry_write_upserts_and_deletes(self, store: CacheStore) -> None:
        store.registry_write("storage", {"a": '{"x":1}', "b": '{"x":2}'})
        store.registry_write("storage", {"a": '{"x":3}'}, ["b", "missing"])
        store.registry_write("account", {"u": "{}"})
        docs = store.registry_load()
        assert docs["storage"] == {"a": '{"x":3}'}
        assert docs["account"] == {"u": "{}"}
        assert docs["instance"] == {} and docs["instance_group"] == {}

    def test_registry_load_returns_a_copy(self, store: CacheStore) -> None:
        store.registry_write("storage", {"a": "1"})
        docs = store.registry_load()
        docs["storage"]["b"] = "2"
        assert store.registry_load()["storage"] == {"a": "1"}

    def test_registry_rejects_bad_batches_without_applying(self, store: CacheStore) -> None:
        store.registry_write("storage", {"a": "1"})
        with pytest.raises(StoreError):
            store.registry_write("nope", {"a": "1"})
        with pytest.raises(StoreError):
            store.registry_write("storage", {"a": "2", "b": "2"}, ["a"])
        assert store.registry_load()["storage"] == {"a": "1"}

    def test_registry_replace(self, store: CacheStore) -> None:
        store.registry_write("storage", {"a": "1"})
        store.registry_write("account", {"u": "1"})
        store.registry_replace({"storage": {"b": "2"}, "instance": {"i": "3"}})
        assert store.registry_load() == {
            "storage": {"b": "2"},
            "instance_group": {},
            "instance": {"i": "3"},
            "account": {},
        }
        with pytest.raises(StoreError):
            store.registry_replace({"bogus": {}})
        assert store.registry_load()["storage"] == {"b": "2"}

    # ----------------------------------------------------------------------------- meta

    def test_meta_get_missing(self, store: CacheStore) -> None:
        assert store.meta_get("i1", [1, 2]) == [None, None]
        assert store.meta_get("i1", []) == []
        assert store.meta_key_count("i1") == 0

    def test_meta_round_trip_keeps_every_field(self, store: CacheStore) -> None:
        big, small = 2**63 - 1, -(2**63)
        r1 = rec(loc("aaaaaaaa"), loc("bbbbbbbb", LocationStatus.CLS_WRITING), created=1.5, last=2.25, hits=7)
        r2 = rec(loc("cccccccc", LocationStatus.CLS_DELETING, uri="mooncake://mc/?key=i/tp0/ff&size=64"))
        store.meta_write("i1", {big: r1, small: r2, 0: r1})
        assert store.meta_get("i1", [small, 5, big, 0]) == [r2, None, r1, r1]
        assert store.meta_key_count("i1") == 3

    def test_meta_instances_are_isolated(self, store: CacheStore) -> None:
        store.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
        store.meta_write("i2", {1: rec(loc("bbbbbbbb"))})
        assert store.meta_get("i1", [1])[0] == rec(loc("aaaaaaaa"))
        assert store.meta_get("i2", [1])[0] == rec(loc("bbbbbbbb"))
        assert store.meta_instances() == ["i1", "i2"]
        store.meta_drop("i1")
        assert store.meta_get("i1", [1]) == [None]
        assert store.meta_key_count("i2") == 1
        assert store.meta_instances() == ["i2"]

    def test_meta_write_replaces_and_deletes_in_one_batch(self, store: CacheStore) -> None:
        store.meta_write("i1", {1: rec(loc("aaaaaaaa")), 2: rec(loc("bbbbbbbb"))})
        store.meta_write("i1", {1: rec(loc("cccccccc")), 3: rec(loc("dddddddd"))}, [2, 99])
        assert store.meta_get("i1", [1, 2, 3]) == [rec(loc("cccccccc")), None, rec(loc("dddddddd"))]
        assert store.meta_key_count("i1") == 2

    def test_meta_write_is_all_or_nothing(self, store: CacheStore) -> None:
        store.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
        with pytest.raises(StoreError):
            store.meta_write("i1", {2: rec(loc("bbbbbbbb")), 1: rec(loc("cccccccc"))}, [1])
        with pytest.raises(StoreError):
            store.meta_write("i1", {2: rec(loc("bbbbbbbb")), 3: KeyRecord((), 0.0, 0.0)})
        assert store.meta_get("i1", [1, 2, 3]) == [rec(loc("aaaaaaaa")), None, None]

    def test_meta_empty_batches_are_no_ops(self, store: CacheStore) -> None:
        store.meta_write("i1", {}, [])
        store.meta_touch("i1", {})
        assert store.meta_instances() == []

    def test_meta_touch_merges_access(self, store: CacheStore) -> None:
        store.meta_write("i1", {1: rec(loc("aaaaaaaa"), last=5.0, hits=2)})
        store.meta_touch("i1", {1: (7.0, 3), 2: (9.0, 1)})
        store.meta_touch("i1", {1: (6.0, 1)})  # an older time does not move last_access back
        got = store.meta_get("i1", [1, 2])
        assert got == [rec(loc("aaaaaaaa"), last=7.0, hits=6), None]

    def test_meta_scan_pages_through_every_key_once(self, store: CacheStore) -> None:
        keys = list(range(-5, 20))
        store.meta_write("i1", {k: rec(loc("aaaaaaaa")) for k in keys})
        store.meta_write("i2", {100: rec(loc("aaaaaaaa"))})
        seen: list[int] = []
        cursor = ""
        pages = 0
        while True:
            page, cursor = store.meta_scan("i1", cursor, 7)
            assert len(page) <= 7
            seen.extend(page)
            pages += 1
            if not cursor:
                break
        assert sorted(seen) == keys and pages >= 4
        assert store.meta_scan("nobody", "", 10) == ([], "")
        with pytest.raises(StoreError):
            store.meta_scan("i1", "", 0)

    def test_meta_sample_draws_from_the_sorted_keys(self, store: CacheStore) -> None:
        """Every store picks the same keys: ``sample_sorted`` over the instance's keys in key order."""
        keys = [(k * 7919) % 1000 - 500 for k in range(60)]  # written out of key order
        store.meta_write("i1", {k: rec(loc("aaaaaaaa")) for k in keys})
        assert store.meta_sample("nobody", 5, make_rng(0)) == []
        assert store.meta_sample("i1", 0, make_rng(0)) == []
        assert store.meta_sample("i1", 60, make_rng(0)) == sorted(keys)
        sample = store.meta_sample("i1", 9, make_rng(3))
        assert sample == sample_sorted(sorted(keys), 9, make_rng(3))
        assert len(set(sample)) == 9 and sample == sorted(sample) and set(sample) <= set(keys)


class PersistentStoreContract(StoreContract):
    """The contract plus: a second factory call sees what the first one wrote."""

    def test_reopen_sees_the_data(self, make_store: StoreFactory) -> None:
        first = make_store()
        first.registry_write("storage", {"a": "1"})
        first.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
        first.close()
        second = make_store()
        assert second.registry_load()["storage"] == {"a": "1"}
        assert second.meta_get("i1", [1]) == [rec(loc("aaaaaaaa"))]
        second.close()
