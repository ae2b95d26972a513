"""The vLLM KV connector against a real ``kvsim serve``, driven through ``KVConnectorBase_V1``'s methods
with fakes of vLLM's scheduler and worker objects: a second request loads the first one's KV blocks into
other paged-cache blocks; chunked prefill; TP ranks whose results are ANDed; failed loads reported for
recomputation; larger manager blocks; an unreachable server; vLLM's factory loading the class."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from kvsim.connectors import ConnectorError, KvcmScheduler, LocalServe, TransferClient
from kvsim.connectors.vllm_adapter import KvsimVllmConnector, KvsimWorkerMetadata
from tests.connectors.fakes import (
    FakeCacheConfig,
    FakeCachedRequestData,
    FakeKVCacheBlocks,
    FakeKVCacheConfig,
    FakeKVConnectorOutput,
    FakeKVTransferConfig,
    FakeNewRequestData,
    FakeParallelConfig,
    FakeRequest,
    FakeSchedulerOutput,
    FakeVllmConfig,
    install_fake_vllm,
)
from tests.connectors.test_lifecycle import free_port
from tests.connectors.test_sglang import FlakyTransfer

BLOCK = 4
NUM_BLOCKS = 32
PREFIX = list(range(100, 120))  # five full blocks shared by the requests


def vllm_config(address: str, instance_id: str, tp: int = 1, **extra: Any) -> FakeVllmConfig:
    """A vLLM config with the kvsim connector pointed at ``address``."""
    return FakeVllmConfig(
        kv_transfer_config=FakeKVTransferConfig(
            {"manager_address": address, "instance_id": instance_id, "rpc_retries": 0, **extra}
        ),
        cache_config=FakeCacheConfig(block_size=BLOCK),
        parallel_config=FakeParallelConfig(tensor_parallel_size=tp),
    )


def kv_caches(seed: int | None, heads: int = 2) -> dict[str, torch.Tensor]:
    """FlashAttention-layout paged KV of two layers: ``(2, num_blocks, block_size, heads, head_size)``."""
    gen = torch.Generator().manual_seed(seed or 0)
    caches = {}
    for layer in (1, 0):  # out of order on purpose: the connector sorts layers by name
        shape = (2, NUM_BLOCKS, BLOCK, heads, 8)
        data = torch.randn(shape, generator=gen) if seed is not None else torch.zeros(shape)
        caches[f"model.layers.{layer}.self_attn.attn"] = data.to(torch.bfloat16)
    return caches


def block(caches: dict[str, torch.Tensor], block_id: int) -> list[torch.Tensor]:
    """One vLLM block of every layer."""
    return [caches[name][:, block_id].clone() for name in sorted(caches)]


class Engine:
    """One vLLM engine: a scheduler-side connector and one worker-side connector per TP rank."""

    def __init__(
        self,
        config: FakeVllmConfig,
        seeds: list[int | None],
        transfer_factories: dict[int, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kv_config = FakeKVCacheConfig(NUM_BLOCKS)
        self.scheduler = KvsimVllmConnector(config, "SCHEDULER", kv_config, **kwargs)
        self.workers = []
        self.caches = []
        heads = 2 // len(seeds)  # the model's two KV heads are split over the TP ranks
        for rank, seed in enumerate(seeds):
            factory = (transfer_factories or {}).get(rank)
            extra = {"transfer_factory": factory} if factory else {}
            worker = KvsimVllmConnector(config, "WORKER", kv_config, tp_rank=rank, **kwargs, **extra)
            caches = kv_caches(seed, heads)
            worker.register_kv_caches(caches)
            self.workers.append(worker)
            self.caches.append(caches)

    def step(self, output: FakeSchedulerOutput) -> Any:
        """One engine step: build metadata, load, (forward), save, report back."""
        meta = self.scheduler.build_connector_meta(output)
        worker_meta: KvsimWorkerMetadata | None = None
        for worker in self.workers:
            worker.bind_connector_metadata(meta)
            worker.start_load_kv(forward_context=None)
            worker.wait_for_save()
            mine = worker.build_connector_worker_meta()
            worker.clear_connector_metadata()
            if mine is not None:
                worker_meta = mine if worker_meta is None else worker_meta.aggregate(mine)
        self.scheduler.update_connector_output(FakeKVConnectorOutput(worker_meta))
        return meta

    def admit(self, req_id: str, prompt: list[int], block_ids: list[int]) -> tuple[int, Any]:
        """Schedule a new request in one step: lookup, allocation, then the step itself."""
        request = FakeRequest(req_id, prompt)
        external, is_async = self.scheduler.get_num_new_matched_tokens(request, 0)
        assert is_async is False
        self.scheduler.update_state_after_alloc(request, FakeKVCacheBlocks(block_ids), external)
        new = FakeNewRequestData(req_id, prompt, (block_ids,), external)
        meta = self.step(FakeSchedulerOutput([new], num_scheduled_tokens={req_id: len(prompt) - external}))
        return external, meta

    def close(self) -> None:
        for connector in [self.scheduler, *self.workers]:
            connector.shutdown()


def test_a_second_request_loads_the_first_ones_blocks(server: LocalServe, instance_id: str) -> None:
    config = vllm_config(server.http_address, instance_id)
    engine = Engine(config, seeds=[1])
    prompt_a = [*PREFIX, 1, 2]  # 5 full blocks and 2 tokens
    external, meta = engine.admit("A", prompt_a, [3, 4, 5, 6, 7, 8])
    assert external == 0 and meta.loads == [] and len(meta.saves) == 1
    assert meta.saves[0].block_ids == (3, 4, 5, 6, 7)
    assert engine.scheduler.stats["blocks_stored"] == 5
    assert engine.scheduler.request_finished(FakeRequest("A", prompt_a), [3, 4, 5, 6, 7, 8]) == (False, None)

    reader = Engine(config, seeds=[None])  # another engine with an empty cache
    prompt_b = [*PREFIX, 9, 9, 9, 9, 5, 5]
    external, meta = reader.admit("B", prompt_b, [10, 11, 12, 13, 14, 15, 16])
    assert external == 5 * BLOCK
    assert [(load.block_ids, len(load.locations)) for load in meta.loads] == [((10, 11, 12, 13, 14), 5)]
    for src, dst in zip([3, 4, 5, 6, 7], [10, 11, 12, 13, 14], strict=True):
        assert all(
            torch.equal(a, b)
            for a, b in zip(block(reader.caches[0], dst), block(engine.caches[0], src), strict=True)
        )
    # B's sixth block (computed in this step) was saved; the five loaded ones were not offered again.
    assert [save.block_ids for save in meta.saves] == [(15,)]
    hit = KvcmScheduler(reader.scheduler.connection).match(token_ids=prompt_b)
    assert hit.num_blocks == 6
    assert reader.workers[0].get_block_ids_with_load_errors() == set()
    engine.close()
    reader.close()


def test_the_last_prompt_token_is_never_loaded(server: LocalServe, instance_id: str) -> None:
    engine = Engine(vllm_config(server.http_address, instance_id), seeds=[2])
    engine.admit("A", PREFIX, list(range(5)))  # exactly 5 blocks: all are saved
    assert engine.scheduler.stats["blocks_stored"] == 5
    external, _ = engine.scheduler.get_num_new_matched_tokens(FakeRequest("B", PREFIX), 0)
    assert external == 4 * BLOCK  # vLLM must compute at least one token: the fifth block is recomputed
    assert engine.scheduler.get_num_new_matched_tokens(FakeRequest("C", PREFIX), 4 * BLOCK) == (0, False)
    assert engine.scheduler.get_num_new_matched_tokens(FakeRequest("D", PREFIX), 6) == (0, False)  # unaligned
    engine.close()


def test_chunked_prefill_saves_blocks_as_they_fill(server: LocalServe, instance_id: str) -> None:
    engine = Engine(vllm_config(server.http_address, instance_id), seeds=[3])
    prompt = list(range(500, 530))  # 7 full blocks and 2 tokens
    blocks = list(range(8))
    engine.scheduler.get_num_new_matched_tokens(FakeRequest("A", prompt), 0)
    engine.scheduler.update_state_after_alloc(FakeRequest("A", prompt), FakeKVCacheBlocks(blocks[:3]), 0)
    first = engine.step(
        FakeSchedulerOutput(
            [FakeNewRequestData("A", prompt, (blocks[:3],), 0)], num_scheduled_tokens={"A": 10}
        )
    )
    assert [s.block_ids for s in first.saves] == [(0, 1)]  # 10 tokens: two full blocks
    cached = FakeCachedRequestData(["A"], [(blocks[3:],)], [10])
    second = engine.step(FakeSchedulerOutput(scheduled_cached_reqs=cached, num_scheduled_tokens={"A": 20}))
    assert [s.block_ids for s in second.saves] == [(2, 3, 4, 5, 6)]
    assert KvcmScheduler(engine.scheduler.connection).match(token_ids=prompt).num_blocks == 7
    engine.close()


def test_tp_ranks_are_anded_before_finishing(server: LocalServe, instance_id: str) -> None:
    def flaky(configs: str) -> TransferClient:
        client = FlakyTransfer(configs)
        client.fail_index = 3  # rank 1 cannot write the fourth block
        return client

    config = vllm_config(server.http_address, instance_id, tp=2)
    engine = Engine(config, seeds=[4, 5], transfer_factories={1: flaky})
    assert engine.scheduler.spec_size == 256  # heads are split over the two ranks
    engine.admit("A", [*PREFIX, 1], list(range(6)))
    assert engine.scheduler.stats["blocks_stored"] == 4
    assert [w.stats["blocks_saved"] for w in engine.workers] == [5, 4]
    reader = Engine(config, seeds=[None, None])
    external, _ = reader.admit("B", [*PREFIX, 1], list(range(10, 16)))
    assert external == 3 * BLOCK  # the prefix stops before the block rank 1 failed
    for rank in (0, 1):  # each rank loaded its own shard
        assert torch.equal(
            reader.caches[rank]["model.layers.0.self_attn.attn"][:, 12],
            engine.caches[rank]["model.layers.0.self_attn.attn"][:, 2],
        )
    engine.close()
    reader.close()


def test_blocks_that_fail_to_load_are_reported_for_recomputation(
    server: LocalServe, instance_id: str
) -> None:
    config = vllm_config(server.http_address, instance_id)
    engine = Engine(config, seeds=[6])
    engine.admit("A", [*PREFIX, 1], list(range(6)))
    request = FakeRequest("B", [*PREFIX, 1])
    external, _ = engine.scheduler.get_num_new_matched_tokens(request, 0)
    assert external == 5 * BLOCK
    location = engine.scheduler._pending_loads["B"][1][3]  # the fourth block's file goes missing
    path = location.location_specs[0].uri.split("nfs_01", 1)[1].split("?")[0]
    os.unlink(path)
    engine.scheduler.update_state_after_alloc(request, FakeKVCacheBlocks(list(range(20, 26))), external)
    engine.step(
        FakeSchedulerOutput(
            [FakeNewRequestData("B", request.prompt_token_ids, (list(range(20, 26)),), external)]
        )
    )
    # The packed file held all five blocks: every one of them failed and vLLM recomputes them.
    assert engine.workers[0].get_block_ids_with_load_errors() == {20, 21, 22, 23, 24}
    assert engine.workers[0].get_block_ids_with_load_errors() == set()
    engine.close()


def test_manager_blocks_may_span_several_vllm_blocks(server: LocalServe, instance_id: str) -> None:
    config = vllm_config(server.http_address, instance_id, manager_block_size=2 * BLOCK)
    engine = Engine(config, seeds=[7])
    assert (engine.scheduler.per_block, engine.scheduler.spec_size) == (2, 1024)
    meta = engine.admit("A", [*PREFIX, 1, 2, 3], [9, 8, 7, 6, 5, 4])[1]
    assert [s.block_ids for s in meta.saves] == [(9, 8, 7, 6)]  # two manager blocks of two vLLM blocks
    reader = Engine(config, seeds=[None])
    external, meta = reader.admit("B", [*PREFIX, 1, 2, 3], [0, 1, 2, 3, 4, 5])
    assert external == 4 * BLOCK and meta.loads[0].block_ids == (0, 1, 2, 3)
    assert torch.equal(
        reader.caches[0]["model.layers.1.self_attn.attn"][:, 1],
        engine.caches[0]["model.layers.1.self_attn.attn"][:, 8],
    )
    assert reader.scheduler.get_num_new_matched_tokens(FakeRequest("C", PREFIX), BLOCK) == (0, False)
    with pytest.raises(ConnectorError, match="manager_block_size 6 must be a positive multiple"):
        KvsimVllmConnector(vllm_config(server.http_address, instance_id, manager_block_size=6), "SCHEDULER")
    engine.close()
    reader.close()


def test_an_unreachable_server_means_no_hits_and_no_saves(instance_id: str) -> None:
    engine = Engine(vllm_config(f"http://127.0.0.1:{free_port()}", instance_id), seeds=[8])
    external, meta = engine.admit("A", [*PREFIX, 1], list(range(6)))
    assert external == 0 and meta.saves == [] and meta.loads == []
    assert engine.scheduler.stats["errors"] == 2  # the lookup and the start of the write
    engine.close()


def test_writes_no_rank_reports_are_dropped_after_their_deadline(
    server: LocalServe, instance_id: str
) -> None:
    now = [0.0]
    config = vllm_config(server.http_address, instance_id, write_timeout_seconds=5)
    scheduler = KvsimVllmConnector(config, "SCHEDULER", FakeKVCacheConfig(NUM_BLOCKS), clock=lambda: now[0])
    scheduler.build_connector_meta(
        FakeSchedulerOutput(
            [FakeNewRequestData("A", PREFIX, (list(range(5)),), 0)], num_scheduled_tokens={"A": 20}
        )
    )
    assert len(scheduler._sessions) == 1
    now[0] = 6.0
    scheduler.build_connector_meta(FakeSchedulerOutput())
    assert scheduler._sessions == {}
    scheduler.shutdown()


def test_a_kv_cache_of_another_size_than_registered_is_refused(server: LocalServe, instance_id: str) -> None:
    worker = KvsimVllmConnector(
        vllm_config(server.http_address, instance_id), "WORKER", FakeKVCacheConfig(NUM_BLOCKS)
    )
    caches = {f"l{i}": torch.zeros((2, NUM_BLOCKS, BLOCK, 4, 8), dtype=torch.bfloat16) for i in range(2)}
    with pytest.raises(
        ConnectorError,
        match="a manager block of this worker's KV cache is 1024 bytes but 512 were registered",
    ):
        worker.register_kv_caches(caches)  # twice the heads the model config announced
    with pytest.raises(ConnectorError, match="role: expected SCHEDULER or WORKER"):
        KvsimVllmConnector(vllm_config(server.http_address, instance_id), "OBSERVER")
    worker.shutdown()


def test_vllms_factory_can_load_the_connector(
    monkeypatch: pytest.MonkeyPatch, server: LocalServe, instance_id: str
) -> None:
    bases = install_fake_vllm(monkeypatch, tp_rank=0)
    module = importlib.import_module("kvsim.connectors.vllm_connector")  # kv_connector_module_path
    cls = module.KvsimConnector  # kv_connector
    role = bases["KVConnectorRole"]
    config = vllm_config(server.http_address, instance_id)
    scheduler = cls(config, role.SCHEDULER, FakeKVCacheConfig(NUM_BLOCKS))
    worker = cls(config, role.WORKER, FakeKVCacheConfig(NUM_BLOCKS))
    assert isinstance(scheduler, bases["KVConnectorBase_V1"]) and scheduler.role is role.SCHEDULER
    assert scheduler._kv_transfer_config is config.kv_transfer_config
    worker.register_kv_caches(kv_caches(9))
    meta = scheduler.build_connector_meta(
        FakeSchedulerOutput(
            [FakeNewRequestData("A", PREFIX, (list(range(5)),), 0)], num_scheduled_tokens={"A": 20}
        )
    )
    assert isinstance(meta, bases["KVConnectorMetadata"])
    worker.bind_connector_metadata(meta)
    worker.wait_for_save()
    report = worker.build_connector_worker_meta()
    assert isinstance(report, bases["KVConnectorWorkerMetadata"])
    scheduler.update_connector_output(FakeKVConnectorOutput(report))
    assert scheduler.stats["blocks_stored"] == 5
    scheduler.shutdown()
    worker.shutdown()


def test_with_the_real_vllm_package(tmp_path: Path) -> None:
    pytest.importorskip(
        "vllm.distributed.kv_transfer.kv_connector.v1.base",
        reason="vLLM is not installed: the connector is tested above through fakes of its interface",
    )
    module = importlib.import_module("kvsim.connectors.vllm_connector")  # pragma: no cover - needs vLLM
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1  # pragma: no cover

    assert issubclass(module.KvsimConnector, KVConnectorBase_V1)  # pragma: no cover
