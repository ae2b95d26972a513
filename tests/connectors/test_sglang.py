"""The SGLang HiCache storage backend against a real ``kvsim serve``, through SGLang's interface with fakes
of its host pool: pages written by one engine are found and loaded by another (v1 zero-copy and copying
paths, and the older get/set API); TP ranks in both modes; a server that refuses or is gone never raises
into SGLang and never reports a page stored that is not; SGLang's dynamic loader can load the class."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kvsim.connectors import ConnectorError, LocalServe, TransferClient, TransferResult, page_key
from kvsim.connectors.sglang_adapter import KvsimHiCache, TorchCoordinator
from kvsim.serve.client import CacheClient
from tests.connectors.fakes import (
    FakeHiCacheStorageConfig,
    FakeHostPool,
    ThreadCoordinator,
    host_indices,
    install_fake_sglang,
    page_hashes,
)
from tests.connectors.test_lifecycle import free_port

PAGE = 4
TOKENS = list(range(7, 7 + 12 * PAGE))
KEYS = page_hashes(TOKENS, PAGE)  # 12 chained page hashes


def make_backend(
    address: str, instance_id: str, pool: FakeHostPool, *, cls: type = KvsimHiCache, **extra: Any
) -> Any:
    """A backend the way SGLang's dynamic loader makes one: ``cls(storage_config, kwargs)``, then the pool."""
    tp = extra.pop("tp", (0, 1))
    coordinator = extra.pop("coordinator", None)
    config = FakeHiCacheStorageConfig(
        tp_rank=tp[0],
        tp_size=tp[1],
        is_mla_model=extra.pop("mla", False),
        extra_config={"manager_address": address, "instance_id": instance_id, "rpc_retries": 0, **extra},
    )
    backend = cls(config, {}) if coordinator is None else cls(config, {}, coordinator=coordinator)
    backend.register_mem_pool_host(pool)
    return backend


@pytest.fixture
def pools() -> tuple[FakeHostPool, FakeHostPool]:
    """Two engines' host pools: the first full of KV, the second empty."""
    first, second = FakeHostPool(16, PAGE), FakeHostPool(16, PAGE)
    first.fill_random(seed=1)
    return first, second


@pytest.mark.parametrize("zero_copy", [False, True])
def test_pages_written_by_one_engine_are_loaded_by_another(
    server: LocalServe, instance_id: str, pools: tuple[FakeHostPool, FakeHostPool], zero_copy: bool
) -> None:
    writer_pool, reader_pool = pools
    writer = make_backend(server.http_address, instance_id, writer_pool, zero_copy=zero_copy)
    reader = make_backend(server.grpc_address, instance_id, reader_pool, zero_copy=zero_copy)
    assert writer.page_bytes == 2 * PAGE * 2 * 2 * 8 * 2  # K and V, page, layers, heads, head_dim, bf16
    assert writer.batch_set_v1(KEYS[:8], host_indices(0, 8, PAGE)) == [True] * 8
    assert writer.batch_set_v1(KEYS[:10], host_indices(0, 10, PAGE)) == [True] * 10  # 8 already stored
    assert reader.batch_exists(KEYS) == 10
    assert reader.batch_exists(KEYS[3:]) == 7  # chained hashes: any run of pages can be asked about
    assert reader.batch_get_v1(KEYS[:10], host_indices(5, 10, PAGE)) == [True] * 10
    for page in range(10):
        assert torch.equal(reader_pool.page((5 + page) * PAGE), writer_pool.page(page * PAGE))
    stats = writer.get_stats()
    assert (stats["pages_stored"], stats["pages_already_stored"], stats["pages_store_failed"]) == (10, 8, 0)
    assert reader.get_stats()["pages_loaded"] == 10
    writer.close()
    reader.close()


def test_the_older_get_set_interface(
    server: LocalServe, instance_id: str, pools: tuple[FakeHostPool, ...]
) -> None:
    writer_pool, reader_pool = pools
    backend = make_backend(server.http_address, instance_id, reader_pool)
    pages = [writer_pool.get_data_page(i * PAGE).clone() for i in range(3)]
    assert backend.set(KEYS[0], pages[0]) is True
    assert backend.batch_set(KEYS[1:3], pages[1:3]) is True
    assert backend.exists(KEYS[2]) and not backend.exists(KEYS[5])
    target = reader_pool.get_dummy_flat_data_page()
    assert torch.equal(backend.get(KEYS[1], target), pages[1])
    got = backend.batch_get(
        [KEYS[0], KEYS[7], KEYS[2]], [reader_pool.get_dummy_flat_data_page() for _ in range(3)]
    )
    assert got[1] is None and torch.equal(got[0], pages[0]) and torch.equal(got[2], pages[2])
    assert backend.batch_set(KEYS[3:5], pages[:1]) is False  # one value for two keys
    backend.clear()
    assert backend.batch_exists(KEYS) == 0
    backend.close()


def test_keys_are_the_references_page_hash_keys() -> None:
    assert page_key("abc") == int.from_bytes(bytes.fromhex("ba7816bf8f01cfea"), "big", signed=True)
    assert page_key("abc") == -5010229573455851542  # SHA-256("abc") starts ba7816bf8f01cfea


@pytest.mark.usefixtures("no_faults")
def test_a_refusing_server_never_reports_a_page_stored(
    server: LocalServe, admin: CacheClient, instance_id: str, pools: tuple[FakeHostPool, ...]
) -> None:
    backend = make_backend(server.http_address, instance_id, pools[0])
    admin.inject_fault("FinishWriteCache")
    assert backend.batch_set_v1(KEYS[:4], host_indices(0, 4, PAGE)) == [False] * 4
    admin.inject_fault("StartWriteCache")
    assert backend.batch_set_v1(KEYS[:4], host_indices(0, 4, PAGE)) == [False] * 4
    admin.inject_fault("GetCacheLocation")
    assert backend.batch_exists(KEYS) == 0
    assert backend.batch_get_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [False, False]
    admin.clear_faults()
    assert backend.batch_exists(KEYS) == 0  # nothing was stored by the refused writes
    assert backend.get_stats()["errors"] == 4  # two refused writes, a refused exists, a refused get
    backend.close()


def test_a_server_that_is_gone_degrades_to_misses(instance_id: str, pools: tuple[FakeHostPool, ...]) -> None:
    backend = make_backend(f"http://127.0.0.1:{free_port()}", instance_id, pools[0])  # not fatal at startup
    assert backend.batch_exists(KEYS) == 0
    assert backend.batch_set_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [False, False]
    assert backend.batch_get_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [False, False]
    assert backend.get(KEYS[0], pools[0].get_dummy_flat_data_page()) is None
    backend.close()


class FlakyTransfer(TransferClient):
    """A transfer client that reports the save of one URI index as failed (a disk error on one rank)."""

    fail_index = -1

    def save(self, uris: Any, buffers: Any) -> TransferResult:
        result = super().save(uris, buffers)
        ok = tuple(good and i != self.fail_index for i, good in enumerate(result.ok))
        return TransferResult(ok, result.errors, result.nbytes, result.seconds)


def run_ranks(size: int, body: Callable[[int], Any]) -> list[Any]:
    """``body(rank)`` in one thread per rank; their results in rank order (exceptions re-raised)."""
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = body(rank)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    return results


def test_shared_tp_mode_stores_a_page_only_when_every_rank_saved_it(
    server: LocalServe, instance_id: str
) -> None:
    group = ThreadCoordinator.Group(2)
    pools = [FakeHostPool(16, PAGE) for _ in range(2)]
    for rank, pool in enumerate(pools):
        pool.fill_random(seed=10 + rank)  # each rank holds its own heads

    def transfer_for(rank: int) -> Callable[[str], TransferClient]:
        def make(configs: str) -> TransferClient:
            client = FlakyTransfer(configs)
            client.fail_index = 2 if rank == 1 else -1
            return client

        return make

    backends = []
    for rank in range(2):
        config = FakeHiCacheStorageConfig(
            tp_rank=rank,
            tp_size=2,
            extra_config={
                "manager_address": server.http_address,
                "instance_id": instance_id,
                "tp_mode": "shared",
            },
        )
        backend = KvsimHiCache(
            config, {}, coordinator=ThreadCoordinator(group, rank), transfer_factory=transfer_for(rank)
        )
        backend.register_mem_pool_host(pools[rank])
        backends.append(backend)
    assert [b.instance_id for b in backends] == [instance_id, instance_id]
    assert [b.spec_names for b in backends] == [("tp_0", "tp_1")] * 2
    stored = run_ranks(2, lambda r: backends[r].batch_set_v1(KEYS[:4], host_indices(0, 4, PAGE)))
    assert stored == [[True, True, False, True]] * 2  # rank 1 failed page 2: no rank reports it stored
    assert [b.batch_exists(KEYS) for b in backends] == [2, 2]
    loaded_pools = [FakeHostPool(16, PAGE) for _ in range(2)]
    for rank in range(2):
        backends[rank].mem_pool_host = loaded_pools[rank]
        assert backends[rank].batch_get_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [True, True]
        assert torch.equal(
            loaded_pools[rank].page(PAGE), pools[rank].page(PAGE)
        )  # each rank got its own shard
    for b in backends:
        b.close()


def test_per_rank_tp_mode_runs_one_instance_per_rank(
    server: LocalServe, instance_id: str, pools: tuple[FakeHostPool, ...]
) -> None:
    ranks = [make_backend(server.http_address, instance_id, pools[r], tp=(r, 2)) for r in range(2)]
    assert [b.instance_id for b in ranks] == [f"{instance_id}-tp0of2", f"{instance_id}-tp1of2"]
    assert [b.spec_names for b in ranks] == [("tp_0",), ("tp_1",)]
    assert ranks[0].batch_set_v1(KEYS[:3], host_indices(0, 3, PAGE)) == [True] * 3
    assert [b.batch_exists(KEYS) for b in ranks] == [3, 0]  # SGLang takes the minimum over ranks
    mla = make_backend(server.http_address, instance_id + "-mla", pools[0], tp=(1, 2), mla=True)
    assert (mla.instance_id, mla.spec_names, mla.spec_name) == (instance_id + "-mla", ("tp_0",), "tp_0")
    for b in [*ranks, mla]:
        b.close()


def test_bad_extra_config_is_refused() -> None:
    with pytest.raises(ConnectorError, match="extra config: manager_address is required"):
        KvsimHiCache(FakeHiCacheStorageConfig(extra_config={}), {})
    with pytest.raises(ConnectorError, match="extra config 'tp_mode': expected one of per_rank, shared"):
        KvsimHiCache(
            FakeHiCacheStorageConfig(extra_config={"manager_address": "http://h:1", "tp_mode": "x"}), {}
        )
    with pytest.raises(ConnectorError, match="extra config 'write_timeout_seconds': expected a number"):
        KvsimHiCache(
            FakeHiCacheStorageConfig(
                extra_config={"manager_address": "h:1", "write_timeout_seconds": "soon"}
            ),
            {},
        )


def dynamic_extra(address: str, instance_id: str) -> dict[str, Any]:
    """The extra config of ``--hicache-storage-backend dynamic`` for this backend."""
    return {
        "backend_name": "kvsim",
        "module_path": "kvsim.connectors.sglang_backend",
        "class_name": "KvsimHiCacheStorage",
        "interface_v1": 1,
        "manager_address": address,
        "instance_id": instance_id,
    }


@pytest.fixture
def fake_sglang(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """SGLang's ``HiCacheStorage`` ABC, faked at its module path (SGLang is not installed here)."""
    yield install_fake_sglang(monkeypatch)


def test_sglangs_dynamic_loader_can_load_the_backend(
    fake_sglang: type, server: LocalServe, instance_id: str, pools: tuple[FakeHostPool, ...]
) -> None:
    extra = dynamic_extra(server.http_address, instance_id)
    # What StorageBackendFactory._create_dynamic_backend does with that extra config:
    module = importlib.import_module(extra["module_path"])
    cls = getattr(module, extra["class_name"])
    assert issubclass(cls, fake_sglang) and issubclass(cls, KvsimHiCache)
    backend = cls(FakeHiCacheStorageConfig(extra_config=extra), {})
    backend.register_mem_pool_host(pools[0])
    assert backend.batch_set_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [True, True]
    assert backend.batch_exists(KEYS) == 2 and backend.exists(KEYS[1])
    backend.close()


def test_with_the_real_sglang_package(
    server: LocalServe, instance_id: str, pools: tuple[FakeHostPool, ...]
) -> None:
    factory_module = pytest.importorskip(
        "sglang.srt.mem_cache.storage.backend_factory",
        reason="SGLang is not installed: the adapter is tested above through fakes of its interface",
    )
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig  # pragma: no cover - needs SGLang

    config = HiCacheStorageConfig(  # pragma: no cover - needs SGLang
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=False,
        enable_storage_metrics=False,
        is_page_first_layout=True,
        model_name="tiny",
        extra_config=dynamic_extra(server.http_address, instance_id),
    )
    backend = factory_module.StorageBackendFactory.create_backend(
        "dynamic", config, pools[0]
    )  # pragma: no cover
    backend.register_mem_pool_host(pools[0])  # pragma: no cover
    assert backend.batch_set_v1(KEYS[:2], host_indices(0, 2, PAGE)) == [True, True]  # pragma: no cover


def test_the_torch_distributed_coordinator(tmp_path: Path) -> None:
    """The default ``shared``-mode collectives on a one-rank gloo group (the calls are what matter)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        coordinator = TorchCoordinator(0, 1)
        assert coordinator.broadcast({"plan": [1, 2]}) == {"plan": [1, 2]}
        assert coordinator.all_and([True, False, True]) == [True, False, True]
    finally:
        dist.destroy_process_group()
