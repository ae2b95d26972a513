"""The SQLite store's schema and its migrations.

``schema_version`` holds one row: the version of the file's schema. A new file is version 0 and every
open runs the migrations from the file's version up to :data:`SCHEMA_VERSION` in one transaction, so a
file is never left half-migrated. A file written by a newer kvsim is refused (never "repaired").

To change the schema, append a migration (a list of statements taking version ``i`` to ``i + 1``) to
:data:`MIGRATIONS`; never edit one that has shipped. ``tests/cache/test_sqlite_store.py`` opens a file of
every older version.

Tables (version 1):

``registry(kind, name, doc)``
    The registry documents (``kind`` is one of :data:`~kvsim.cache.store.base.REGISTRY_KINDS`).
``instances(id, name)``
    A small integer per instance id, so the meta table's primary key stays two integers.
``meta(inst, key, locations, created, last_access, access_count)``
    One row per block key; ``locations`` is the JSON array of :mod:`kvsim.cache.store.records`.
    ``WITHOUT ROWID``: the rows live in the primary-key B-tree, so a lookup is one B-tree descent.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

MIGRATIONS: list[list[str]] = [
    # 0 -> 1: the first schema.
    [
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (0)",
        "CREATE TABLE registry ("
        " kind TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL,"
        " PRIMARY KEY (kind, name)) WITHOUT ROWID",
        "CREATE TABLE instances (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        "CREATE TABLE meta ("
        " inst INTEGER NOT NULL, key INTEGER NOT NULL, locations TEXT NOT NULL,"
        " created REAL NOT NULL, last_access REAL NOT NULL, access_count INTEGER NOT NULL,"
        " PRIMARY KEY (inst, key)) WITHOUT ROWID",
    ],
]
