"""SGLang HiCache storage backend (L3) on a KVCM server: the logic, without importing SGLang.

SGLang loads the backend through its dynamic storage-backend option; the class it loads is
:class:`kvsim.connectors.sglang_backend.KvsimHiCacheStorage`, which adds SGLang's ``HiCacheStorage`` base
class to :class:`KvsimHiCache` (this module). Start SGLang with::

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvsim", "interface_v1": 1,
        "module_path": "kvsim.connectors.sglang_backend", "class_name": "KvsimHiCacheStorage",
        "manager_address": "http://127.0.0.1:6382"}'

``interface_v1`` makes SGLang call :meth:`KvsimHiCache.batch_get_v1` / :meth:`KvsimHiCache.batch_set_v1`
with host-pool indices; without it SGLang uses the older ``batch_get``/``batch_set`` with page tensors.

How pages map onto KVCM:

* **Keys.** A page hash (SGLang's chained SHA-256 hex string) becomes the block key
  :func:`~kvsim.connectors.config.page_key`: the first 8 bytes of SHA-256 of the string, signed, as the
  reference connector does. One page is one block; ``block_size`` is the page size.
* **Specs.** One spec per TP rank (``tp_<rank>``) of ``bytes per page`` of that rank's host pool.
  MLA models (the KV is the same on every rank) register one spec ``tp_0``: rank 0 writes, every rank reads.
* **TP modes** (``tp_mode`` in the extra config, for TP > 1 without MLA):

  - ``per_rank`` (default): every rank registers its own instance ``<id>-tp<rank>of<size>`` with its own
    spec and runs its own lifecycle. No collectives are needed: SGLang already takes the minimum of the
    ranks' hit counts for prefetches, and each rank's writes stand alone.
  - ``shared``: one instance with specs ``tp_0 .. tp_<n-1>`` (the reference's layout; packed files hold
    every rank's shard). Rank 0 starts the write, the plan is broadcast, every rank saves its shard, the
    results are ANDed across ranks and rank 0 finishes the write, so a page counts only when every rank
    saved it. The collectives go through a :class:`TpCoordinator` (default: torch.distributed).

* **Exists / get.** ``batch_exists`` is a prefix match of the keys; the locations it found are kept for
  ``exist_cache_ttl_s`` (default 2 s) so that the ``batch_get_v1`` that follows needs no second query.
* **Set.** StartWriteCache for the keys; pages the server already has count as stored; the others are
  saved and reported in FinishWriteCache. A page is reported stored only when the server made it SERVING.

Failures never raise into SGLang's threads (its prefetch and backup threads are not restarted): an
unreachable or refusing server, or a failed transfer, comes back as ``False`` for the pages concerned,
0 hits from ``batch_exists``, and a warning in the log.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from kvsim.cache import CacheLocation, ModelDeployment
from kvsim.connectors.config import ConnectorConfig, page_key
from kvsim.connectors.errors import ConnectorError, TransferError
from kvsim.connectors.lifecycle import (
    KvcmScheduler,
    ManagerConnection,
    WritePlan,
    make_registration,
    spec_uris,
)
from kvsim.connectors.transfer import TransferClient

logger = logging.getLogger(__name__)

TP_MODES = ("per_rank", "shared")


class TpCoordinator(Protocol):
    """The collectives of the ``shared`` TP mode; every rank calls them in the same order."""

    rank: int
    size: int

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        ...

    def all_and(self, values: Sequence[bool]) -> list[bool]:
        """The element-wise AND of every rank's ``values`` (same length on every rank)."""
        ...


class TorchCoordinator:
    """:class:`TpCoordinator` over ``torch.distributed`` (imported when first used).

    Args:
        rank: this rank within ``group``.
        size: ranks in ``group``.
        group: the process group of the TP ranks (None: the default group).
    """

    def __init__(self, rank: int, size: int, group: Any = None) -> None:
        self.rank = rank
        self.size = size
        self.group = group

    def _src(self) -> int:
        import torch.distributed as dist

        return 0 if self.group is None else int(dist.get_global_rank(self.group, 0))

    def broadcast(self, obj: Any) -> Any:
        """``broadcast_object_list`` from group rank 0."""
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=self._src(), group=self.group)
        return box[0]

    def all_and(self, values: Sequence[bool]) -> list[bool]:
        """``all_reduce(MIN)`` of a uint8 tensor."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1 if v else 0 for v in values], dtype=torch.uint8)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.group)
        return [bool(v) for v in tensor.tolist()]


def _safe_id(text: str) -> str:
    # Instance ids name directories on the storage: keep them to a portable character set.
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def _pointer_view(ptr: int, size: int) -> np.ndarray:
    """A writable numpy view of ``size`` bytes at address ``ptr`` (host memory of the pool)."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(ptr))


class KvsimHiCache:
    """The HiCache storage backend on KVCM (see the module docstring).

    Args:
        storage_config: SGLang's ``HiCacheStorageConfig`` (``tp_rank``, ``tp_size``, ``is_mla_model``,
            ``model_name``, ``extra_config``).
        kwargs: what SGLang's dynamic loader passes as the second argument (unused).
        coordinator: the collectives of ``tp_mode=shared`` (default: :class:`TorchCoordinator`).
        client_factory: passed to :class:`ManagerConnection` (tests).
        transfer_factory: ``storage_configs -> TransferClient`` (tests inject Mooncake fakes).

    Raises:
        ConnectorError: a bad extra config.
    """

    def __init__(
        self,
        storage_config: Any,
        kwargs: Mapping[str, Any] | None = None,
        *,
        coordinator: TpCoordinator | None = None,
        client_factory: Callable[..., Any] | None = None,
        transfer_factory: Callable[[str], TransferClient] | None = None,
    ) -> None:
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        self.config = ConnectorConfig.from_extra(extra)
        self.tp_rank = int(getattr(storage_config, "tp_rank", 0))
        self.tp_size = int(getattr(storage_config, "tp_size", 1))
        self.is_mla = bool(getattr(storage_config, "is_mla_model", False))
        self.model_name = str(getattr(storage_config, "model_name", None) or "")
        tp_mode = str(extra.get("tp_mode", "per_rank"))
        if tp_mode not in TP_MODES:
            known = ", ".join(TP_MODES)
            raise ConnectorError(f"extra config 'tp_mode': expected one of {known}, got {tp_mode!r}")
        self.zero_copy = bool(extra.get("zero_copy", False))
        self.exist_cache_ttl_s = float(extra.get("exist_cache_ttl_s", 2.0))
        base = self.config.instance_id or f"sglang-{_safe_id(self.model_name)}"
        self.spec_names: tuple[str, ...]
        if self.is_mla or self.tp_size == 1:
            self.mode = "single"
            self.instance_id, self.spec_name, self.spec_names = base, "tp_0", ("tp_0",)
        elif tp_mode == "per_rank":
            self.mode = "per_rank"
            self.instance_id = f"{base}-tp{self.tp_rank}of{self.tp_size}"
            self.spec_name = f"tp_{self.tp_rank}"
            self.spec_names = (self.spec_name,)
        else:
            self.mode = "shared"
            self.instance_id, self.spec_name = base, f"tp_{self.tp_rank}"
            self.spec_names = tuple(f"tp_{r}" for r in range(self.tp_size))
        self.coordinator: TpCoordinator = coordinator or TorchCoordinator(self.tp_rank, self.tp_size)
        self._client_factory = client_factory
        self._transfer_factory = transfer_factory
        self.mem_pool_host: Any = None
        self.page_size = 0
        self.page_bytes = 0
        self.connection: ManagerConnection | None = None
        self.scheduler: KvcmScheduler | None = None
        self._transfer: TransferClient | None = None
        self._routes_from = ""
        self._recent: OrderedDict[str, tuple[float, CacheLocation]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {
            "exists_queries": 0,
            "pages_hit": 0,
            "pages_loaded": 0,
            "pages_load_failed": 0,
            "pages_stored": 0,
            "pages_already_stored": 0,
            "pages_store_failed": 0,
            "errors": 0,
        }

    # ------------------------------------------------------------------------------ setup

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Attach SGLang's host pool and register the instance (page size, bytes per page).

        A server that cannot be reached now is not fatal: registration is retried on the first call.
        """
        self.mem_pool_host = mem_pool_host
        self.page_size = int(mem_pool_host.page_size)
        dummy = mem_pool_host.get_dummy_flat_data_page()
        self.page_bytes = int(dummy.numel() * dummy.element_size())
        registration = make_registration(
            self.instance_id,
            self.page_size,
            [(name, self.page_bytes) for name in self.spec_names],
            instance_group=self.config.instance_group,
            model=ModelDeployment(
                model_name=self.model_name or self.instance_id,
                dtype=str(getattr(mem_pool_host, "dtype", "")),
                use_mla=self.is_mla,
                tp_size=self.tp_size,
            ),
        )
        kwargs = {"client_factory": self._client_factory} if self._client_factory else {}
        self.connection = self.config.connection(registration, **kwargs)
        self.scheduler = KvcmScheduler(self.connection, write_timeout_s=self.config.write_timeout_s)
        try:
            self.connection.register()
            self._transfer_client()
        except ConnectorError as exc:
            logger.warning("kvsim HiCache: registering %s failed, retrying later: %s", self.instance_id, exc)

    def _ready(self) -> KvcmScheduler:
        if self.scheduler is None:
            raise ConnectorError("register_mem_pool_host was not called")
        return self.scheduler

    def _transfer_client(self) -> TransferClient:
        assert self.connection is not None
        configs = self.connection.storage_configs
        if not configs:
            self.connection.register()
            configs = self.connection.storage_configs
        with self._lock:
            if self._transfer is None:
                factory = self._transfer_factory or self.config.transfer
                self._transfer = factory(configs)
                self._routes_from = configs
            elif configs != self._routes_from:  # re-registered elsewhere: storages may differ
                self._transfer.update_storage_configs(configs, self.config.mounts)
                self._routes_from = configs
            return self._transfer

    # ------------------------------------------------------------------------------ reads

    def _remember(self, keys: Sequence[str], locations: Sequence[CacheLocation]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, loc in zip(keys, locations, strict=False):
                self._recent[key] = (now, loc)
                self._recent.move_to_end(key)
            while len(self._recent) > 65536:
                self._recent.popitem(last=False)

    def _recalled(self, keys: Sequence[str]) -> list[CacheLocation] | None:
        now = time.monotonic()
        out: list[CacheLocation] = []
        with self._lock:
            for key in keys:
                hit = self._recent.get(key)
                if hit is None or now - hit[0] > self.exist_cache_ttl_s:
                    return None
                out.append(hit[1])
        return out

    def _match(self, keys: Sequence[str]) -> list[CacheLocation]:
        match = self._ready().match(block_keys=[page_key(k) for k in keys], spec_names=(self.spec_name,))
        self._remember(keys, match.locations)
        return list(match.locations)

    def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
        """How many of ``keys``, from the first, are stored (0 when the server cannot be asked)."""
        if not keys:
            return 0
        self._count("exists_queries", 1)
        try:
            n = len(self._match(keys))
        except ConnectorError as exc:
            self._warn("batch_exists", exc)
            return 0
        self._count("pages_hit", n)
        return n

    def exists(self, key: str) -> bool:
        """Whether one page is stored."""
        return self.batch_exists([key]) == 1

    def _load(self, keys: Sequence[str], buffers: Sequence[Any]) -> list[bool]:
        """Load the leading stored pages of ``keys`` into ``buffers``; per page whether it arrived."""
        try:
            locations = self._recalled(keys) or self._match(keys)
            uris = spec_uris(locations, self.spec_name)[: len(keys)]
            result = self._transfer_client().load(uris, list(buffers[: len(uris)]))
        except ConnectorError as exc:
            self._warn("load", exc)
            return [False] * len(keys)
        ok = list(result.ok) + [False] * (len(keys) - len(result.ok))
        if not result.all_ok:
            failed = len(uris) - result.num_ok
            logger.warning("kvsim HiCache: %d page(s) failed to load: %s", failed, result.first_error)
        self._count("pages_loaded", result.num_ok)
        self._count("pages_load_failed", len(keys) - result.num_ok)
        return ok

    def batch_get_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        """Load pages into the host pool at ``host_indices`` (``page_size`` indices per key)."""
        if not keys:
            return []
        host = self.mem_pool_host
        if host is None or len(host_indices) != len(keys) * self.page_size:
            logger.error("kvsim HiCache: batch_get_v1: %d indices for %d pages", len(host_indices), len(keys))
            return [False] * len(keys)
        views = self._pool_views(host_indices, len(keys)) if self.zero_copy else None
        if views is not None:
            return self._load(keys, views)
        pages = [host.get_dummy_flat_data_page() for _ in keys]
        ok = self._load(keys, pages)
        for i, good in enumerate(ok):
            if good:
                host.set_from_flat_data_page(int(host_indices[i * self.page_size]), pages[i])
        return ok

    def batch_get(
        self, keys: list[str], target_locations: Any = None, target_sizes: Any = None
    ) -> list[Any | None]:
        """Load each page into ``target_locations[i]``; the tensor, or None where it is not stored."""
        if not keys:
            return []
        if target_locations is None:
            target_locations = [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
        try:
            found = self._ready().lookup(block_keys=[page_key(k) for k in keys], spec_names=(self.spec_name,))
        except ConnectorError as exc:
            self._warn("batch_get", exc)
            return [None] * len(keys)
        present = [i for i, loc in enumerate(found) if loc is not None]
        out: list[Any | None] = [None] * len(keys)
        if not present:
            return out
        try:
            uris = spec_uris([found[i] for i in present], self.spec_name)  # type: ignore[misc]
            result = self._transfer_client().load(uris, [target_locations[i] for i in present])
        except ConnectorError as exc:
            self._warn("batch_get", exc)
            return out
        for i, good in zip(present, result.ok, strict=True):
            if good:
                out[i] = target_locations[i]
        self._count("pages_loaded", result.num_ok)
        return out

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any | None:
        """Load one page into ``target_location``; the tensor, or None."""
        return self.batch_get([key], None if target_location is None else [target_location])[0]

    # ------------------------------------------------------------------------------ writes

    def batch_set_v1(self, keys: list[str], host_indices: Any, extra_info: Any = None) -> list[bool]:
        """Store the pages at ``host_indices``; per key whether it is stored now."""
        if not keys:
            return []
        host = self.mem_pool_host
        if host is None or len(host_indices) != len(keys) * self.page_size:
            logger.error("kvsim HiCache: batch_set_v1: %d indices for %d pages", len(host_indices), len(keys))
            return [False] * len(keys)
        views = self._pool_views(host_indices, len(keys)) if self.zero_copy else None
        if views is not None:
            return self._write(keys, lambda i: views[i])
        size = self.page_size
        return self._write(keys, lambda i: host.get_data_page(int(host_indices[i * size]), flat=True))

    def batch_set(
        self, keys: list[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None
    ) -> bool:
        """Store each ``values[i]`` (a page tensor) under ``keys[i]``; True when all are stored."""
        if not keys:
            return True
        if values is None or len(values) != len(keys):
            logger.error("kvsim HiCache: batch_set needs one value per key")
            return False
        return all(self._write(keys, lambda i: values[i]))

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        """Store one page."""
        return self.batch_set([key], [value])

    def _write(self, keys: Sequence[str], page: Callable[[int], Any]) -> list[bool]:
        if self.mode == "shared":
            return self._write_shared(keys, page)
        scheduler = self._ready()
        try:
            plan = scheduler.start_write(block_keys=[page_key(k) for k in keys])
        except ConnectorError as exc:
            self._warn("set", exc)
            return [False] * len(keys)
        ok = self._save(plan, page)
        try:
            outcome = scheduler.finish_write(plan, ok)
        except ConnectorError as exc:
            self._warn("set", exc)
            stored = list(plan.cached)
        else:
            stored = list(outcome.stored)
        self._count_write(plan, stored)
        return stored

    def _save(self, plan: WritePlan, page: Callable[[int], Any]) -> list[bool]:
        if not plan.indices:
            return []
        try:
            result = self._transfer_client().save(plan.uris(self.spec_name), [page(i) for i in plan.indices])
        except ConnectorError as exc:
            self._warn("save", exc)
            return [False] * len(plan.indices)
        if not result.all_ok:
            failed = len(plan.indices) - result.num_ok
            logger.warning("kvsim HiCache: %d page(s) failed to save: %s", failed, result.first_error)
        return list(result.ok)

    def _write_shared(self, keys: Sequence[str], page: Callable[[int], Any]) -> list[bool]:
        # Every rank runs the same three collectives in the same order, whatever fails on the way.
        coordinator, rank0 = self.coordinator, self.tp_rank == 0
        plan: WritePlan | None = None
        if rank0:
            try:
                plan = self._ready().start_write(block_keys=[page_key(k) for k in keys])
            except ConnectorError as exc:
                self._warn("set", exc)
        plan = coordinator.broadcast(plan)
        if plan is None:
            return [False] * len(keys)
        ok = coordinator.all_and(self._save(plan, page))
        stored: list[bool] | None = None
        if rank0:
            try:
                stored = list(self._ready().finish_write(plan, ok).stored)
            except ConnectorError as exc:
                self._warn("set", exc)
                stored = list(plan.cached)
        stored = coordinator.broadcast(stored)
        assert stored is not None
        self._count_write(plan, stored)
        return stored

    def _count_write(self, plan: WritePlan, stored: Sequence[bool]) -> None:
        written = sum(1 for i in plan.indices if stored[i])
        self._count("pages_already_stored", sum(plan.cached))
        self._count("pages_stored", written)
        self._count("pages_store_failed", len(plan.indices) - written)

    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.stats[name] += n

    # ------------------------------------------------------------------------------ helpers

    def _pool_views(self, host_indices: Any, num_pages: int) -> list[list[np.ndarray]] | None:
        """Zero-copy views of each page's pieces in the host pool (``get_page_buffer_meta``), or None
        (logged) when the pool cannot give them: the caller then copies pages instead."""
        try:
            ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        except Exception as exc:  # some pools (FP4) raise NotImplementedError; copying still works
            self._warn("zero-copy", exc)
            return None
        if not ptrs or len(ptrs) % num_pages or len(sizes) != len(ptrs):
            self._warn("zero-copy", TransferError(f"{len(ptrs)} pointers for {num_pages} pages"))
            return None
        per = len(ptrs) // num_pages
        return [
            [_pointer_view(int(ptrs[p * per + j]), int(sizes[p * per + j])) for j in range(per)]
            for p in range(num_pages)
        ]

    def _warn(self, what: str, exc: Exception) -> None:
        self._count("errors", 1)
        logger.warning("kvsim HiCache %s (%s): %s", what, self.instance_id, exc)

    def clear(self) -> None:
        """Delete every page of this instance (in ``shared`` mode only rank 0 asks)."""
        if self.mode == "shared" and self.tp_rank != 0:
            return
        try:
            self._ready().clear()
        except ConnectorError as exc:
            self._warn("clear", exc)
        with self._lock:
            self._recent.clear()

    def get_stats(self) -> dict[str, int]:
        """Counters since the backend was made."""
        with self._lock:
            return dict(self.stats)

    def close(self) -> None:
        """Release the transfer threads and the connections."""
        if self._transfer is not None:
            self._transfer.close()
        if self.connection is not None:
            self.connection.close()


__all__ = ["TP_MODES", "KvsimHiCache", "TorchCoordinator", "TpCoordinator"]
