"""The sqlite store: the store contract, its file format (WAL, schema version, migrations), the errors
it gives at start, and a manager restarted over the same file (recovery, rebuilt usage counters)."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from kvsim.cache import BlockMask, CacheError, ErrorCode, GetCacheLocationRequest, QueryType
from kvsim.cache.store import SqliteStore, StoreError, StoreOpenError, open_store, sqlite_schema
from kvsim.cache.store.records import decode_locations, encode_locations
from kvsim.cache.types import LocationStatus
from kvsim.core import ManualClock
from kvsim.core.errors import ConfigError

from .conftest import T0, finish, make_manager, prefix, register, start, write
from .store_contract import PersistentStoreContract, StoreFactory, loc, rec


class TestSqliteStore(PersistentStoreContract):
    """The contract against :class:`SqliteStore` (reopened from the same file)."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "kv.db")


class TestSqliteStoreNoMemo(TestSqliteStore):
    """The contract again with the decode memo off: every read parses the stored text."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "kv.db", decode_cache=0)


# ----------------------------------------------------------------------------------- file format


def test_file_is_wal_with_the_current_schema(tmp_path: Path) -> None:
    store = SqliteStore(data_dir=tmp_path / "data")  # the data dir is created
    assert store.path == tmp_path / "data" / "kvsim-meta.db"
    assert store.schema_version == sqlite_schema.SCHEMA_VERSION == 1
    store.close()
    con = sqlite3.connect(tmp_path / "data" / "kvsim-meta.db")
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    con.close()


def test_records_are_readable_json_beside_their_statistics(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kv.db")
    record = rec(loc("aaaaaaaa"), created=1.5, last=2.5, hits=4)
    store.meta_write("i1", {-7: record})
    store.close()
    con = sqlite3.connect(tmp_path / "kv.db")
    row = con.execute(
        "SELECT i.name, m.key, m.locations, m.created, m.last_access, m.access_count"
        " FROM meta AS m JOIN instances AS i ON i.id = m.inst"
    ).fetchone()
    con.close()
    assert row == (
        "i1",
        -7,
        '[["aaaaaaaa",3,4,1,"nfs_01",64,[["tp0","file://nfs_01/data/aaaaaaaa?size=64"]]]]',
        1.5,
        2.5,
        4,
    )
    assert decode_locations(row[2]) == record.locations
    assert encode_locations(record.locations) == row[2]


def test_migrations_run_in_order_from_an_older_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kv.db"
    store = SqliteStore(path)
    store.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
    store.close()
    # A kvsim with a version-2 schema opens the version-1 file: the data survives the migration.
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(
        sqlite_schema,
        "MIGRATIONS",
        [*sqlite_schema.MIGRATIONS, ["CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (42)"]],
    )
    store = SqliteStore(path)
    assert store.schema_version == 2
    assert store.meta_get("i1", [1]) == [rec(loc("aaaaaaaa"))]
    store.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT x FROM extra").fetchall() == [(42,)]
    con.close()


def test_a_failing_migration_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kv.db"
    SqliteStore(path).close()
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(
        sqlite_schema, "MIGRATIONS", [*sqlite_schema.MIGRATIONS, ["CREATE TABLE extra (x)", "NOT SQL"]]
    )
    with pytest.raises(StoreOpenError, match="cannot open"):
        SqliteStore(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []
    con.close()


# ----------------------------------------------------------------------------------- errors at start


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    SqliteStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = 7")
    con.commit()
    con.close()
    with pytest.raises(StoreOpenError, match=r"schema version 7 is newer than this kvsim's \(1\)"):
        SqliteStore(path)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreOpenError, match="cannot open: file is not a database"):
        SqliteStore(garbage)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(StoreOpenError, match=r"not a kvsim metadata file \(tables \['users'\]\)"):
        SqliteStore(other)


def test_a_path_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="cannot open: unable to open database file"):
        SqliteStore(tmp_path / "missing-dir" / "kv.db")
    with pytest.raises(StoreOpenError, match="cannot open"):
        SqliteStore(tmp_path)  # a directory
    with pytest.raises(StoreOpenError, match="give a file path or a data directory"):
        SqliteStore()
    with pytest.raises(StoreOpenError, match="synchronous must be one of"):
        SqliteStore(tmp_path / "kv.db", synchronous="off")
    with pytest.raises(StoreOpenError, match="busy_timeout_ms and decode_cache must be >= 0"):
        SqliteStore(tmp_path / "kv.db", decode_cache=-1)
    # A user-input error: the CLI prints it as one line.
    assert issubclass(StoreOpenError, ConfigError) and issubclass(StoreOpenError, StoreError)


def test_open_store_uris(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/a.db?synchronous=full&busy_timeout_ms=100")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "a.db"
    store.close()
    store = open_store("sqlite", data_dir=tmp_path / "d")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "d" / "kvsim-meta.db"
    store.close()
    assert open_store("memory").name == "memory"
    with pytest.raises(StoreOpenError, match="unknown option 'sync'"):
        open_store(f"sqlite://{tmp_path}/a.db?sync=full")
    with pytest.raises(StoreOpenError, match="option busy_timeout_ms='x' is not a int"):
        open_store(f"sqlite://{tmp_path}/a.db?busy_timeout_ms=x")
    with pytest.raises(StoreOpenError, match="give a file path or a data directory"):
        open_store("sqlite")
    with pytest.raises(StoreOpenError, match="unknown kind"):
        open_store("postgres://x")


# ----------------------------------------------------------------------------------- behaviour


def test_reads_of_more_keys_than_one_statement_binds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kv.db")
    keys = list(range(-600, 700, 2))  # 650 keys: two statements in one read transaction
    store.meta_write("i1", {k: rec(loc("aaaaaaaa"), hits=k & 7) for k in keys})
    wanted = [*range(-601, 700), keys[0]]  # every key, misses between them, a repeat
    got = store.meta_get("i1", wanted)
    assert got == [rec(loc("aaaaaaaa"), hits=k & 7) if k % 2 == 0 else None for k in wanted]
    assert store.meta_key_count("i1") == 650
    store.close()


def test_a_failed_statement_rolls_the_batch_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kv.db")
    store.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
    with pytest.raises(StoreError, match="does not fit int64"):
        store.meta_write("i1", {2: rec(loc("bbbbbbbb")), 2**64: rec(loc("cccccccc"))})
    assert store.meta_get("i1", [1, 2]) == [rec(loc("aaaaaaaa")), None]
    with pytest.raises(StoreError, match="used after close"):
        store.close() or store.meta_get("i1", [1])


def test_two_connections_see_each_others_commits(tmp_path: Path) -> None:
    first, second = SqliteStore(tmp_path / "kv.db"), SqliteStore(tmp_path / "kv.db")
    first.meta_write("i1", {1: rec(loc("aaaaaaaa"))})
    first.registry_write("storage", {"s": "{}"})
    assert second.meta_get("i1", [1]) == [rec(loc("aaaaaaaa"))]
    assert second.registry_load()["storage"] == {"s": "{}"}
    second.meta_write("i1", {1: rec(loc("aaaaaaaa", LocationStatus.CLS_DELETING))})
    assert first.meta_get("i1", [1]) == [rec(loc("aaaaaaaa", LocationStatus.CLS_DELETING))]
    first.close()
    second.close()


def test_a_restarted_manager_keeps_writes_and_rebuilds_usage(tmp_path: Path) -> None:
    """Acknowledged writes survive; open sessions' WRITING locations are deleted; the key count is
    recounted from the file, so an instance at its ``max_key_count`` stays full after the restart."""
    path = tmp_path / "kv.db"
    mgr = make_manager(ManualClock(T0), store=SqliteStore(path))
    group = mgr.get_instance_group("default")
    assert group.cache_config is not None
    indexer = dataclasses.replace(group.cache_config.meta_indexer_config, max_key_count=4)
    cache_config = dataclasses.replace(group.cache_config, meta_indexer_config=indexer)
    mgr.update_instance_group(
        dataclasses.replace(group, cache_config=cache_config, version=group.version + 1), group.version
    )
    register(mgr)
    write(mgr, [1, 2, 3])
    open_session = start(mgr, [4])
    assert len(open_session.locations) == 1
    # No close(): the process "dies" with the session open and nothing flushed.
    del mgr

    mgr = make_manager(ManualClock(T0 + 5), store=SqliteStore(path))
    assert len(prefix(mgr, [1, 2, 3, 4])) == 3
    with pytest.raises(CacheError) as err:
        finish(mgr, open_session.write_session_id, BlockMask(offset=1))
    assert err.value.code == ErrorCode.INTERNAL_ERROR  # the session died with the process
    meta = mgr.store.meta_get("i1", [4])[0]
    assert meta is not None and [x.status for x in meta.locations] == [LocationStatus.CLS_DELETING]
    # Recounted from the file: 3 SERVING keys + 1 DELETING key fill max_key_count until poll deletes it.
    with pytest.raises(CacheError, match="4 keys \\+ 1 new exceed max_key_count 4"):
        start(mgr, [5])
    mgr.poll(T0 + 100)
    assert mgr.store.meta_get("i1", [4]) == [None]
    assert len(start(mgr, [5]).locations) == 1
    mgr.close()


def test_reads_are_not_store_writes_until_poll(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    clock = ManualClock(T0)
    mgr = make_manager(clock, store=SqliteStore(path))
    register(mgr)
    write(mgr, [1, 2])
    clock.advance(10)
    before = path.with_suffix(".db-wal").stat().st_size
    for _ in range(5):
        mgr.get_cache_location(_prefix_request([1, 2, 3]))
    assert path.with_suffix(".db-wal").stat().st_size == before  # five matches, no write
    other = SqliteStore(path)
    assert [r.access_count for r in other.meta_get("i1", [1, 2])] == [0, 0]
    mgr.poll()
    assert [(r.last_access, r.access_count) for r in other.meta_get("i1", [1, 2])] == [
        (T0 + 10, 5),
        (T0 + 10, 5),
    ]
    other.close()
    mgr.close()


def _prefix_request(keys: list[int]) -> GetCacheLocationRequest:
    return GetCacheLocationRequest(instance_id="i1", query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys)
