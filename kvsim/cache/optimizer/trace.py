"""A cache trace ready for replay: accesses sorted by time, block keys interned to dense ids.

:func:`load_trace` reads any supported format through the streaming readers of ``kvsim.workloads`` and
builds a :class:`Trace`. Two things happen on the way, both for speed of every later replay:

- **Sorting.** Accesses are put in timestamp order with a *stable* sort, so ties keep file order (the
  Mooncake conversation trace has only 1,180 distinct timestamps for 12,031 requests). A trace that
  was out of order gets a note (the CLI prints it as a warning).
- **Interning.** Every ``(instance, key)`` pair becomes a dense int id ``0..n_ids-1``, so replay
  structures index Python lists instead of hashing 64-bit keys, and instances never share a block.
  On first use the trace also derives each id's *parent* (the id before it in the first access that
  held it) and *depth* (its position there): with prefix-chained keys these are the block's radix-tree
  parent and depth, which ``leaf_aware_lru`` and ``opt`` need.

Reads whose ``query_type`` is not ``prefix_match`` are dropped with a note, as KVCM's optimizer does.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kvsim.core import UserInputError
from kvsim.workloads.bailian import BAILIAN_BLOCK_SIZE, iter_bailian
from kvsim.workloads.cache_trace import DEFAULT_INSTANCE, BlockMask, CacheAccess
from kvsim.workloads.hisim import HISIM_BLOCK_SIZE, iter_hisim_collection
from kvsim.workloads.mooncake import MOONCAKE_BLOCK_SIZE, read_mooncake_records
from kvsim.workloads.optimizer_schema import SCHEMA_BLOCK_SIZE, iter_optimizer_schema
from kvsim.workloads.publisher_log import PUBLISHER_BLOCK_SIZE, iter_publisher_events, publisher_accesses

#: Trace format -> default tokens per block.
FORMATS: dict[str, int] = {
    "mooncake": MOONCAKE_BLOCK_SIZE,
    "qwen_bailian": BAILIAN_BLOCK_SIZE,
    "publisher_log": PUBLISHER_BLOCK_SIZE,
    "optimizer_schema": SCHEMA_BLOCK_SIZE,
    "hisim_collection": HISIM_BLOCK_SIZE,
}


@dataclass(eq=False)
class Trace:
    """Accesses in replay order with dense block ids (see the module docstring).

    Per request ``r`` (``0 <= r < n_requests``): ``times[r]`` (seconds), ``lengths[r]`` (prompt tokens of
    the read, 0 without a read), ``reads[r]`` (ids looked up; empty for a pure write), ``writes[r]`` (ids
    stored; empty for a pure read; the *same list object* as ``reads[r]`` for a whole turn) and
    ``inst[r]`` (index into ``instances``). ``masks`` holds the block masks of the reads that have one.
    """

    name: str
    format: str
    block_size: int
    times: list[float]
    lengths: list[int]
    reads: list[list[int]]
    writes: list[list[int]]
    inst: list[int]
    instances: tuple[str, ...]
    keys: list[int]
    masks: dict[int, BlockMask] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: True when some request reads without writing (a KVCM get): the LRU stack shortcut does not apply.
    read_only: bool = False
    #: True when some request holds the same block twice.
    duplicates: bool = False
    #: Derived data computed once per trace and shared by replays (e.g. ``opt``'s next references).
    derived: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def n_requests(self) -> int:
        """Number of accesses."""
        return len(self.times)

    @property
    def n_ids(self) -> int:
        """Number of distinct blocks (``(instance, key)`` pairs)."""
        return len(self.keys)

    @property
    def n_reads(self) -> int:
        """Number of accesses with a read."""
        return sum(1 for rb in self.reads if rb)

    @property
    def parent(self) -> list[int]:
        """Per block id, the id before it in the first access that held it (-1 for a first block)."""
        return self._tree()[0]

    @property
    def depth(self) -> list[int]:
        """Per block id, its position in the first access that held it."""
        return self._tree()[1]

    def _tree(self) -> tuple[list[int], list[int]]:
        # Computed on first use (only leaf_aware_lru and opt need it) and kept with the trace.
        cached = self.derived.get("tree")
        if cached is None:
            parent = [-2] * self.n_ids
            depth = [0] * self.n_ids
            for r, rb in enumerate(self.reads):
                for seq in (rb, self.writes[r]) if self.writes[r] is not rb else (rb,):
                    prev = -1
                    for j, b in enumerate(seq):
                        if parent[b] == -2:
                            parent[b] = prev
                            depth[b] = j
                        prev = b
            cached = self.derived["tree"] = (parent, depth)
        return cached  # type: ignore[return-value]


def iter_accesses(
    path: str | os.PathLike[str], fmt: str, block_size: int | None = None
) -> tuple[Iterable[CacheAccess], list[str]]:
    """Return the accesses of a trace file (a stream where the reader streams) and the reader's notes.

    Raises:
        UserInputError: Unknown format (the message lists the choices) or a bad file or line.
    """
    if fmt not in FORMATS:
        raise UserInputError(f"unknown trace format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    bs = FORMATS[fmt] if block_size is None else block_size
    if fmt == "mooncake":
        # The project's Mooncake reader (shared with `kvsim sim`) parses the whole file and checks
        # len(hash_ids) against input_length; timestamps are milliseconds.
        records = read_mooncake_records(path, None, bs)
        accesses = (
            CacheAccess(ts / 1000.0, DEFAULT_INSTANCE, length, ids, ids, line=i + 1)
            for i, (ts, length, _out, ids) in enumerate(records)
        )
        return accesses, []
    if fmt == "qwen_bailian":
        return iter_bailian(path, bs), []
    if fmt == "hisim_collection":
        return iter_hisim_collection(path, bs), []
    if fmt == "optimizer_schema":
        return iter_optimizer_schema(path, bs), []
    accesses_list, notes = publisher_accesses(iter_publisher_events(path, bs), bs)
    return accesses_list, notes


def build_trace(
    accesses: Iterable[CacheAccess],
    *,
    name: str,
    fmt: str,
    block_size: int,
    instances: Collection[str] | None = None,
    notes: list[str] | None = None,
) -> Trace:
    """Sort, filter and intern accesses into a :class:`Trace`.

    Args:
        accesses: Accesses in file order.
        name: Shown in outputs (usually the file name).
        fmt: The trace format.
        block_size: Tokens per block.
        instances: Keep only accesses of these instances (KVCM drops instances its config does not
            name); ``None`` keeps all.
        notes: Notes gathered so far (e.g. by the reader); more are appended.

    Raises:
        UserInputError: Nothing usable is left.
    """
    notes = list(notes or [])
    kept: list[CacheAccess] = []
    other_query = 0
    foreign: dict[str, int] = {}
    for a in accesses:
        if instances is not None and a.instance not in instances:
            foreign[a.instance] = foreign.get(a.instance, 0) + 1
            continue
        if a.read_keys and a.query_type != "prefix_match":
            other_query += 1
            if not a.write_keys:
                continue
            a = a._replace(read_keys=(), input_length=0)
        if a.read_keys or a.write_keys:
            kept.append(a)
    if other_query:
        notes.append(f"{other_query} read(s) with a query type other than prefix_match were not replayed")
    if foreign:
        names = ", ".join(f"{k} x{v}" for k, v in sorted(foreign.items()))
        notes.append(f"accesses of instances the config does not name were dropped: {names}")
    if not kept:
        raise UserInputError(f"{fmt} trace {name} holds no usable access")
    first_bad = next((i for i in range(1, len(kept)) if kept[i].timestamp_s < kept[i - 1].timestamp_s), None)
    if first_bad is not None:
        notes.append(
            f"timestamps out of order (first at line {kept[first_bad].line}); accesses sorted stably by time"
        )
        kept.sort(key=lambda a: a.timestamp_s)  # list.sort is stable: ties keep file order
    return _intern(kept, name=name, fmt=fmt, block_size=block_size, notes=notes)


def _intern(kept: list[CacheAccess], *, name: str, fmt: str, block_size: int, notes: list[str]) -> Trace:
    inst_index: dict[str, int] = {}
    ids: dict[int | tuple[int, int], int] = {}
    setdefault = ids.setdefault
    times: list[float] = []
    lengths: list[int] = []
    reads: list[list[int]] = []
    writes: list[list[int]] = []
    inst: list[int] = []
    masks: dict[int, BlockMask] = {}
    read_only = duplicates = False
    for r, a in enumerate(kept):
        ii = inst_index.setdefault(a.instance, len(inst_index))
        # len(ids) is evaluated before setdefault inserts, so a new key gets the next dense id. The first
        # instance keeps raw ints as dict keys (the common single-instance case stays fast).
        if ii == 0:
            rb = [setdefault(k, len(ids)) for k in a.read_keys]
        else:
            rb = [setdefault((ii, k), len(ids)) for k in a.read_keys]
        if a.write_keys is a.read_keys:
            wb = rb
        elif ii == 0:
            wb = [setdefault(k, len(ids)) for k in a.write_keys]
        else:
            wb = [setdefault((ii, k), len(ids)) for k in a.write_keys]
        if rb and not wb:
            read_only = True
        if not duplicates and (len(set(wb)) != len(wb) or (rb is not wb and len(set(rb)) != len(rb))):
            duplicates = True
        if a.mask is not None and rb:
            masks[r] = a.mask
        times.append(a.timestamp_s)
        lengths.append(a.input_length if rb else 0)
        reads.append(rb)
        writes.append(wb)
        inst.append(ii)
    keys = [k if isinstance(k, int) else k[1] for k in ids]  # dict order is id order
    return Trace(
        name=name,
        format=fmt,
        block_size=block_size,
        times=times,
        lengths=lengths,
        reads=reads,
        writes=writes,
        inst=inst,
        instances=tuple(inst_index),
        keys=keys,
        masks=masks,
        notes=notes,
        read_only=read_only,
        duplicates=duplicates,
    )


def load_trace(
    path: str | os.PathLike[str],
    fmt: str,
    block_size: int | None = None,
    *,
    instances: Collection[str] | None = None,
) -> Trace:
    """Read a trace file of format ``fmt`` into a replayable :class:`Trace`.

    Args:
        path: The trace file.
        fmt: One of :data:`FORMATS`.
        block_size: Tokens per block; defaults to the format's (512 for Mooncake, 16 otherwise).
        instances: Keep only these instances (``None``: all).

    Raises:
        UserInputError: Unknown format, bad block size, unreadable file, malformed line (file and line
            named) or no usable access.
    """
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)):
        raise UserInputError(f"block size must be an integer, got {block_size!r}")
    if block_size is not None and block_size < 1:
        raise UserInputError(f"block size must be >= 1, got {block_size}")
    accesses, notes = iter_accesses(path, fmt, block_size)
    bs = FORMATS[fmt] if block_size is None else block_size
    return build_trace(
        accesses, name=Path(path).name, fmt=fmt, block_size=bs, instances=instances, notes=notes
    )
