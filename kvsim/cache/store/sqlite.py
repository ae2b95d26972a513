"""The ``sqlite`` store: the registry and the meta index in one SQLite file (the service's default).

One file (``<data_dir>/kvsim-meta.db`` unless a path is given) in WAL mode. Every store call is one
SQLite statement or one transaction, and a :class:`~kvsim.cache.manager.CacheManager` operation makes
one read and at most one write per instance, so an operation costs one transaction however many keys it
touches. A write is acknowledged only after ``COMMIT`` returns; in WAL mode the commit has then reached
the operating system, so a ``kill -9`` of the process loses nothing acknowledged. ``synchronous=full``
also syncs the log to the disk on every commit, which protects against power loss at the price of one
``fsync`` per write.

Reads use ``key IN (...)`` with the key count rounded up to a power of two (padded with a repeated key),
so a handful of prepared statements serve every batch size. Decoded locations are memoised by their text
(:class:`~kvsim.cache.store.records.LocationCodec`).

The schema is versioned (:mod:`kvsim.cache.store.sqlite_schema`); opening migrates an older file and
refuses a newer one. The store is not thread-safe: the caller serialises calls (the manager is
synchronous); it may be called from a thread other than the one that opened it.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kvsim.cache.store import sqlite_schema
from kvsim.cache.store.base import (
    REGISTRY_KINDS,
    CacheStore,
    KeyRecord,
    StoreError,
    StoreOpenError,
    sample_sorted,
)
from kvsim.cache.store.records import DEFAULT_DECODE_CACHE, LocationCodec

DEFAULT_FILE_NAME = "kvsim-meta.db"
SYNCHRONOUS = ("normal", "full")
# Largest key list bound in one statement; longer reads are split (in one read transaction).
_MAX_IN = 512
_MIN_INT64 = -(2**63)

_F = TypeVar("_F", bound=Callable[..., Any])


def _wrapped(fn: _F) -> _F:
    """Report SQLite failures (and keys that do not fit int64) as :class:`StoreError`."""

    @functools.wraps(fn)
    def wrapper(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from None
        except OverflowError as exc:
            raise StoreError(f"sqlite store {self.path}: a key does not fit int64: {exc}") from None

    return wrapper  # type: ignore[return-value]


def _check_disjoint(upserts: Mapping[Any, object], deletes: Collection[Any]) -> None:
    if deletes and not set(deletes).isdisjoint(upserts):
        raise StoreError("a name or key cannot be both upserted and deleted in one batch")


class SqliteStore(CacheStore):
    """Registry and meta index in one SQLite file.

    Args:
        path: the database file; its directory must exist. When None, ``data_dir/kvsim-meta.db``.
        data_dir: the service's data directory (created if missing); used when ``path`` is None.
        synchronous: ``"normal"`` (durable across a process crash) or ``"full"`` (also across power loss).
        busy_timeout_ms: how long a write waits for another connection's write lock.
        decode_cache: decoded location arrays memoised (0 disables).

    Raises:
        StoreOpenError: neither path nor data_dir given, the file cannot be opened or created, it is not
            a kvsim store, or its schema is newer than this kvsim's.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        data_dir: str | Path | None = None,
        synchronous: str = "normal",
        busy_timeout_ms: int = 5_000,
        decode_cache: int = DEFAULT_DECODE_CACHE,
    ) -> None:
        if path is None:
            if data_dir is None:
                raise StoreOpenError("sqlite store: give a file path or a data directory")
            try:
                Path(data_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreOpenError(f"sqlite store: cannot create data dir {data_dir}: {exc}") from None
            path = Path(data_dir) / DEFAULT_FILE_NAME
        self.path = Path(path)
        if synchronous.lower() not in SYNCHRONOUS:
            raise StoreOpenError(f"sqlite store {self.path}: synchronous must be one of {SYNCHRONOUS}")
        if busy_timeout_ms < 0 or decode_cache < 0:
            raise StoreOpenError(f"sqlite store {self.path}: busy_timeout_ms and decode_cache must be >= 0")
        self._codec = LocationCodec(decode_cache)
        self._ids: dict[str, int] = {}  # instance id -> row id (rows are never deleted, so never stale)
        self._select_sql: dict[int, str] = {}
        self._con: sqlite3.Connection | None = None
        try:
            # Autocommit mode: transactions are opened explicitly, one per batch.
            con = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_ms / 1000.0,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreOpenError(f"sqlite store {self.path}: cannot open: {exc}") from None
        try:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreOpenError(f"sqlite store {self.path}: WAL mode unavailable (journal_mode={mode})")
            con.execute(f"PRAGMA synchronous={synchronous.upper()}")
            con.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache (the default is 2 MiB)
            self._migrate(con)
        except sqlite3.Error as exc:
            con.close()
            raise StoreOpenError(f"sqlite store {self.path}: cannot open: {exc}") from None
        except StoreOpenError:
            con.close()
            raise
        self._con = con

    # ------------------------------------------------------------------------------- plumbing

    def _migrate(self, con: sqlite3.Connection) -> None:
        """Bring the file to :data:`~kvsim.cache.store.sqlite_schema.SCHEMA_VERSION` (one transaction)."""
        con.execute("BEGIN IMMEDIATE")
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                version = 0
            elif "schema_version" in tables:
                rows = con.execute("SELECT version FROM schema_version").fetchall()
                if len(rows) != 1:
                    raise StoreOpenError(f"sqlite store {self.path}: schema_version holds {len(rows)} rows")
                version = int(rows[0][0])
            else:
                raise StoreOpenError(
                    f"sqlite store {self.path}: not a kvsim metadata file (tables {sorted(tables)})"
                )
            latest = sqlite_schema.SCHEMA_VERSION
            if version > latest:
                raise StoreOpenError(
                    f"sqlite store {self.path}: schema version {version} is newer than this kvsim's "
                    f"({latest}); open it with a newer kvsim"
                )
            for step in range(version, latest):
                for statement in sqlite_schema.MIGRATIONS[step]:
                    con.execute(statement)
                con.execute("UPDATE schema_version SET version = ?", (step + 1,))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        """The file's schema version (after migration: the current one)."""
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    @property
    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreError(f"sqlite store {self.path}: used after close()")
        return self._con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block finishes, rolled back otherwise."""
        con = self._db
        con.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on a later upgrade
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _instance(self, instance_id: str) -> int | None:
        """Row id of an instance, or None if it never had keys."""
        inst = self._ids.get(instance_id)
        if inst is None:
            row = self._db.execute("SELECT id FROM instances WHERE name = ?", (instance_id,)).fetchone()
            if row is not None:
                inst = self._ids[instance_id] = int(row[0])
        return inst

    def _instance_for_write(self, con: sqlite3.Connection, instance_id: str) -> int:
        """Row id of an instance, created if needed (inside the caller's transaction; not cached until
        it commits, so a rolled-back id is never remembered)."""
        inst = self._ids.get(instance_id)
        if inst is not None:
            return inst
        con.execute("INSERT OR IGNORE INTO instances (name) VALUES (?)", (instance_id,))
        return int(con.execute("SELECT id FROM instances WHERE name = ?", (instance_id,)).fetchone()[0])

    def _select(self, n: int) -> str:
        sql = self._select_sql.get(n)
        if sql is None:
            marks = ",".join("?" * n)
            sql = self._select_sql[n] = (
                "SELECT key, locations, created, last_access, access_count FROM meta"
                f" WHERE inst = ? AND key IN ({marks})"
            )
        return sql

    # ------------------------------------------------------------------------------- registry

    @_wrapped
    def registry_load(self) -> dict[str, dict[str, str]]:
        """Every document, by kind."""
        out: dict[str, dict[str, str]] = {kind: {} for kind in REGISTRY_KINDS}
        for kind, name, doc in self._db.execute("SELECT kind, name, doc FROM registry"):
            if kind in out:
                out[kind][name] = doc
        return out

    @_wrapped
    def registry_write(self, kind: str, upserts: Mapping[str, str], deletes: Collection[str] = ()) -> None:
        """Upsert and delete documents of one kind in one transaction."""
        if kind not in REGISTRY_KINDS:
            raise StoreError(f"kind: unknown registry kind {kind!r}")
        _check_disjoint(upserts, deletes)
        rows = [(kind, name, doc) for name, doc in upserts.items()]
        if any(not isinstance(name, str) or not isinstance(doc, str) for _, name, doc in rows):
            raise StoreError("registry documents are str -> str")
        if not rows and not deletes:
            return
        with self._transaction() as con:
            con.executemany("DELETE FROM registry WHERE kind = ? AND name = ?", [(kind, n) for n in deletes])
            con.executemany("INSERT OR REPLACE INTO registry (kind, name, doc) VALUES (?, ?, ?)", rows)

    @_wrapped
    def registry_replace(self, documents: Mapping[str, Mapping[str, str]]) -> None:
        """Replace every document in one transaction."""
        unknown = set(documents) - set(REGISTRY_KINDS)
        if unknown:
            raise StoreError(f"kind: unknown registry kind(s) {sorted(unknown)}")
        rows = [(kind, name, doc) for kind, docs in documents.items() for name, doc in docs.items()]
        if any(not isinstance(name, str) or not isinstance(doc, str) for _, name, doc in rows):
            raise StoreError("registry documents are str -> str")
        with self._transaction() as con:
            con.execute("DELETE FROM registry")
            con.executemany("INSERT INTO registry (kind, name, doc) VALUES (?, ?, ?)", rows)

    # ------------------------------------------------------------------------------- meta

    @_wrapped
    def meta_get(self, instance_id: str, keys: Sequence[int]) -> list[KeyRecord | None]:
        """One ``SELECT`` (one read transaction when there are more than 512 keys)."""
        n = len(keys)
        if not n:
            return []
        inst = self._instance(instance_id)
        if inst is None:
            return [None] * n
        con = self._db
        if n <= _MAX_IN:
            size = 1 << (n - 1).bit_length()  # round up to a power of two: few distinct statements
            rows = con.execute(self._select(size), (inst, *keys, *([keys[0]] * (size - n)))).fetchall()
        else:
            rows = []
            con.execute("BEGIN")  # one snapshot for every chunk
            try:
                for start in range(0, n, _MAX_IN):
                    chunk = keys[start : start + _MAX_IN]
                    pad = [chunk[0]] * (_MAX_IN - len(chunk))
                    rows.extend(con.execute(self._select(_MAX_IN), (inst, *chunk, *pad)).fetchall())
            finally:
                con.execute("COMMIT")
        decode = self._codec.decode
        found = {key: KeyRecord(decode(locs), created, last, hits) for key, locs, created, last, hits in rows}
        get = found.get
        return [get(k) for k in keys]

    @_wrapped
    def meta_write(
        self,
        instance_id: str,
        upserts: Mapping[int, KeyRecord],
        deletes: Collection[int] = (),
    ) -> None:
        """Replace and delete records in one transaction."""
        _check_disjoint(upserts, deletes)
        encode = self._codec.encode
        rows: list[tuple[int, str, float, float, int]] = []
        for key, rec in upserts.items():
            if not rec.locations:
                raise StoreError("meta_write: a stored record needs at least one location")
            try:
                text = encode(tuple(rec.locations))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"meta_write: key {key}: record does not encode: {exc}") from None
            rows.append((key, text, float(rec.created), float(rec.last_access), int(rec.access_count)))
        if not rows and not deletes:
            return
        if not rows and self._instance(instance_id) is None:
            return  # nothing stored for the instance: nothing to delete
        with self._transaction() as con:
            inst = self._instance_for_write(con, instance_id)
            if deletes:
                con.executemany("DELETE FROM meta WHERE inst = ? AND key = ?", [(inst, k) for k in deletes])
            con.executemany(
                "INSERT OR REPLACE INTO meta (inst, key, locations, created, last_access, access_count)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(inst, *row) for row in rows],
            )
        self._ids[instance_id] = inst

    @_wrapped
    def meta_touch(self, instance_id: str, access: Mapping[int, tuple[float, int]]) -> None:
        """Merge access statistics with one ``UPDATE`` per key, in one transaction."""
        if not access:
            return
        inst = self._instance(instance_id)
        if inst is None:
            return
        rows = [(float(when), int(hits), inst, key) for key, (when, hits) in access.items()]
        with self._transaction() as con:
            con.executemany(
                "UPDATE meta SET last_access = max(last_access, ?), access_count = access_count + ?"
                " WHERE inst = ? AND key = ?",
                rows,
            )

    @_wrapped
    def meta_scan(self, instance_id: str, cursor: str, limit: int) -> tuple[list[int], str]:
        """Keys in ascending order; the cursor is the last key returned (stable under writes)."""
        if limit <= 0:
            raise StoreError(f"limit: must be > 0, got {limit}")
        try:
            after = int(cursor) if cursor else None
        except ValueError:
            raise StoreError(f"cursor: malformed cursor {cursor!r}") from None
        inst = self._instance(instance_id)
        if inst is None:
            return [], ""
        if after is None:
            sql = "SELECT key FROM meta WHERE inst = ? ORDER BY key LIMIT ?"
            args: tuple[int, ...] = (inst, limit + 1)
        else:
            sql = "SELECT key FROM meta WHERE inst = ? AND key > ? ORDER BY key LIMIT ?"
            args = (inst, after, limit + 1)
        keys = [row[0] for row in self._db.execute(sql, args)]
        if len(keys) > limit:  # one extra row fetched: there is more after this page
            return keys[:limit], str(keys[limit - 1])
        return keys, ""

    @_wrapped
    def meta_key_count(self, instance_id: str) -> int:
        """``count(*)`` of the instance's rows."""
        inst = self._instance(instance_id)
        if inst is None:
            return 0
        return int(self._db.execute("SELECT count(*) FROM meta WHERE inst = ?", (inst,)).fetchone()[0])

    @_wrapped
    def meta_drop(self, instance_id: str) -> None:
        """Delete the instance's rows (one transaction)."""
        inst = self._instance(instance_id)
        if inst is None:
            return
        with self._transaction() as con:
            con.execute("DELETE FROM meta WHERE inst = ?", (inst,))

    @_wrapped
    def meta_instances(self) -> list[str]:
        """Instances with at least one row."""
        rows = self._db.execute(
            "SELECT name FROM instances AS i WHERE EXISTS (SELECT 1 FROM meta AS m WHERE m.inst = i.id)"
        )
        return sorted(row[0] for row in rows)

    @_wrapped
    def meta_sample(self, instance_id: str, count: int, rng: np.random.Generator) -> list[int]:
        """The keys in primary-key order (already sorted), then the common draw."""
        if count <= 0:
            return []
        inst = self._instance(instance_id)
        if inst is None:
            return []
        rows = self._db.execute("SELECT key FROM meta WHERE inst = ? ORDER BY key", (inst,))
        keys = [row[0] for row in rows]
        return sample_sorted(keys, count, rng)

    def close(self) -> None:
        """Close the connection (idempotent); the WAL is checkpointed by SQLite on the last close."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
