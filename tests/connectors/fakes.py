"""Small fakes shaped like the engines' objects, for testing the adapters without SGLang or vLLM.

Each fake has only what the adapters use, with the engines' names and semantics:

* SGLang: ``HiCacheStorageConfig`` and a page-first host KV pool (``MHATokenToKVPoolHost``'s page API:
  ``get_dummy_flat_data_page``, ``get_data_page``, ``set_from_flat_data_page``, ``get_page_buffer_meta``);
  :func:`install_fake_sglang` puts a ``HiCacheStorage`` ABC where SGLang has it.
* vLLM: the configs a connector reads, ``Request``, ``KVCacheBlocks``, ``SchedulerOutput`` with its new and
  cached request data, ``KVConnectorOutput``; :func:`install_fake_vllm` puts the v1 base classes where
  vLLM has them.
"""

from __future__ import annotations

import abc
import hashlib
import sys
import threading
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

# ---------------------------------------------------------------------------------------------- SGLang


@dataclass
class FakeHiCacheStorageConfig:
    """SGLang's ``HiCacheStorageConfig`` (the fields the adapter reads)."""

    tp_rank: int = 0
    tp_size: int = 1
    is_mla_model: bool = False
    model_name: str | None = "org/tiny-model"
    extra_config: dict[str, Any] | None = None
    pp_rank: int = 0
    pp_size: int = 1
    is_page_first_layout: bool = True


class FakeHostPool:
    """A page-first host KV pool, ``kv_buffer[2, size, layers, heads, head_dim]``, as SGLang's MHA pool."""

    def __init__(
        self, pages: int, page_size: int = 4, layers: int = 2, heads: int = 2, head_dim: int = 8
    ) -> None:
        self.page_size = page_size
        self.layer_num, self.head_num, self.head_dim = layers, heads, head_dim
        self.size = pages * page_size
        self.dtype = torch.bfloat16
        self.layout = "page_first"
        self.kv_buffer = torch.zeros((2, self.size, layers, heads, head_dim), dtype=self.dtype)

    def fill_random(self, seed: int) -> None:
        """Random KV in every slot."""
        gen = torch.Generator().manual_seed(seed)
        self.kv_buffer.copy_(torch.randn(self.kv_buffer.shape, generator=gen).to(self.dtype))

    def page(self, index: int) -> torch.Tensor:
        """The KV of the page starting at slot ``index`` (a copy)."""
        return self.kv_buffer[:, index : index + self.page_size].clone()

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(
            (2, self.page_size, self.layer_num, self.head_num, self.head_dim), dtype=self.dtype
        ).flatten()

    def get_data_page(self, index: int, flat: bool = True) -> torch.Tensor:
        data = self.kv_buffer[:, index : index + self.page_size]
        return data.flatten() if flat else data

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        self.kv_buffer[:, index : index + self.page_size] = data_page.reshape(
            2, self.page_size, self.layer_num, self.head_num, self.head_dim
        )

    def get_page_buffer_meta(self, indices: torch.Tensor) -> tuple[list[int], list[int]]:
        """Two pieces per page (its K run and its V run), as SGLang's page-first pool reports them."""
        item = self.kv_buffer.element_size()
        token_bytes = self.layer_num * self.head_num * self.head_dim * item
        v_offset = self.size * token_bytes
        base = self.kv_buffer.data_ptr()
        ptrs: list[int] = []
        for i in range(0, len(indices), self.page_size):
            k_ptr = base + int(indices[i]) * token_bytes
            ptrs += [k_ptr, k_ptr + v_offset]
        return ptrs, [self.page_size * token_bytes] * len(ptrs)


def page_hashes(tokens: Sequence[int], page_size: int) -> list[str]:
    """Chained page hashes like SGLang's ``get_hash_str`` (SHA-256 of the previous hash and the page)."""
    out: list[str] = []
    prev = ""
    for start in range(0, len(tokens) - page_size + 1, page_size):
        h = hashlib.sha256(prev.encode() + bytes(str(list(tokens[start : start + page_size])), "utf-8"))
        prev = h.hexdigest()
        out.append(prev)
    return out


def host_indices(first_page: int, pages: int, page_size: int) -> torch.Tensor:
    """Slot indices of ``pages`` consecutive pages starting at page ``first_page``."""
    return torch.arange(first_page * page_size, (first_page + pages) * page_size, dtype=torch.int64)


class ThreadCoordinator:
    """The ``shared`` TP mode's collectives between threads (one thread per rank), for tests."""

    class Group:
        """State shared by the ranks of one group."""

        def __init__(self, size: int) -> None:
            self.barrier = threading.Barrier(size, timeout=20)
            self.slot: Any = None
            self.values: list[Any] = [None] * size

    def __init__(self, group: ThreadCoordinator.Group, rank: int) -> None:
        self.group = group
        self.rank = rank
        self.size = len(group.values)

    def broadcast(self, obj: Any) -> Any:
        if self.rank == 0:
            self.group.slot = obj
        self.group.barrier.wait()
        out = self.group.slot
        self.group.barrier.wait()
        return out

    def all_and(self, values: Sequence[bool]) -> list[bool]:
        self.group.values[self.rank] = list(values)
        self.group.barrier.wait()
        out = [all(column) for column in zip(*self.group.values, strict=True)]
        self.group.barrier.wait()
        return out


def _module(monkeypatch: pytest.MonkeyPatch, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def install_fake_sglang(monkeypatch: pytest.MonkeyPatch) -> type:
    """Put a ``HiCacheStorage`` ABC (SGLang's abstract methods) at SGLang's module path; returns it."""

    class HiCacheStorage(abc.ABC):
        def register_mem_pool_host(self, mem_pool_host: Any) -> None:
            self.mem_pool_host = mem_pool_host

        @abc.abstractmethod
        def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any: ...

        @abc.abstractmethod
        def batch_get(
            self, keys: list[str], target_locations: Any = None, target_sizes: Any = None
        ) -> Any: ...

        @abc.abstractmethod
        def set(
            self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None
        ) -> bool: ...

        @abc.abstractmethod
        def batch_set(
            self, keys: list[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None
        ) -> bool: ...

        @abc.abstractmethod
        def exists(self, key: str) -> bool: ...

        def batch_exists(self, keys: list[str], extra_info: Any = None) -> int:
            raise AssertionError("the adapter must override batch_exists")

    for name in ("sglang", "sglang.srt", "sglang.srt.mem_cache"):
        _module(monkeypatch, name)
    _module(monkeypatch, "sglang.srt.mem_cache.hicache_storage").HiCacheStorage = HiCacheStorage  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "kvsim.connectors.sglang_backend", raising=False)
    return HiCacheStorage


# ---------------------------------------------------------------------------------------------- vLLM


@dataclass
class FakeKVTransferConfig:
    """vLLM's ``KVTransferConfig`` (the fields the connector reads)."""

    kv_connector_extra_config: dict[str, Any]
    kv_connector: str = "KvsimConnector"
    kv_role: str = "kv_both"
    is_kv_producer: bool = True

    def get_from_extra_config(self, key: str, default: Any) -> Any:
        return self.kv_connector_extra_config.get(key, default)


@dataclass
class FakeCacheConfig:
    block_size: int = 4
    cache_dtype: str = "auto"


@dataclass
class FakeParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1


@dataclass
class FakeModelConfig:
    """vLLM's ``ModelConfig`` sizing methods, for a model of ``layers`` layers."""

    layers: int = 2
    kv_heads: int = 2
    head_size: int = 8
    dtype: torch.dtype = torch.bfloat16
    use_mla: bool = False
    model: str = "org/tiny-model"
    served_model_name: str = "tiny"

    def get_num_layers(self, parallel: FakeParallelConfig) -> int:
        return self.layers

    def get_num_kv_heads(self, parallel: FakeParallelConfig) -> int:
        return self.kv_heads // parallel.tensor_parallel_size

    def get_head_size(self) -> int:
        return self.head_size


@dataclass
class FakeVllmConfig:
    kv_transfer_config: FakeKVTransferConfig
    cache_config: FakeCacheConfig = field(default_factory=FakeCacheConfig)
    parallel_config: FakeParallelConfig = field(default_factory=FakeParallelConfig)
    model_config: FakeModelConfig = field(default_factory=FakeModelConfig)


@dataclass
class FakeKVCacheConfig:
    num_blocks: int


@dataclass
class FakeRequest:
    request_id: str
    prompt_token_ids: list[int]


@dataclass
class FakeKVCacheBlocks:
    block_ids: list[int]

    def get_block_ids(self) -> tuple[list[int], ...]:
        return (self.block_ids,)


@dataclass
class FakeNewRequestData:
    req_id: str
    prompt_token_ids: list[int]
    block_ids: tuple[list[int], ...]
    num_computed_tokens: int


@dataclass
class FakeCachedRequestData:
    req_ids: list[str] = field(default_factory=list)
    new_block_ids: list[tuple[list[int], ...] | None] = field(default_factory=list)
    num_computed_tokens: list[int] = field(default_factory=list)
    resumed_req_ids: set[str] = field(default_factory=set)


@dataclass
class FakeSchedulerOutput:
    scheduled_new_reqs: list[FakeNewRequestData] = field(default_factory=list)
    scheduled_cached_reqs: FakeCachedRequestData = field(default_factory=FakeCachedRequestData)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class FakeKVConnectorOutput:
    kv_connector_worker_meta: Any = None
    finished_sending: set[str] | None = None
    finished_recving: set[str] | None = None


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch, tp_rank: int = 0) -> dict[str, Any]:
    """Put vLLM's v1 connector base classes (and ``get_tensor_model_parallel_rank``) at vLLM's paths."""
    import enum

    class KVConnectorRole(enum.Enum):
        SCHEDULER = 0
        WORKER = 1

    class KVConnectorMetadata(abc.ABC):  # noqa: B024 - abstract marker, as in vLLM
        pass

    class KVConnectorWorkerMetadata(abc.ABC):
        @abc.abstractmethod
        def aggregate(self, other: Any) -> Any: ...

    class KVConnectorBase_V1(abc.ABC):
        def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any) -> None:
            self._connector_metadata = None
            self._vllm_config = vllm_config
            self._kv_transfer_config = vllm_config.kv_transfer_config
            self._kv_cache_config = kv_cache_config
            self._role = role

        @property
        def role(self) -> Any:
            return self._role

        @abc.abstractmethod
        def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None: ...

        @abc.abstractmethod
        def wait_for_layer_load(self, layer_name: str) -> None: ...

        @abc.abstractmethod
        def save_kv_layer(
            self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any
        ) -> None: ...

        @abc.abstractmethod
        def wait_for_save(self) -> None: ...

        @abc.abstractmethod
        def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> Any: ...

        @abc.abstractmethod
        def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None: ...

        @abc.abstractmethod
        def build_connector_meta(self, scheduler_output: Any) -> Any: ...

    names = [
        "vllm",
        "vllm.distributed",
        "vllm.distributed.kv_transfer",
        "vllm.distributed.kv_transfer.kv_connector",
        "vllm.distributed.kv_transfer.kv_connector.v1",
    ]
    for name in names:
        _module(monkeypatch, name)
    base = _module(monkeypatch, "vllm.distributed.kv_transfer.kv_connector.v1.base")
    base.KVConnectorBase_V1 = KVConnectorBase_V1  # type: ignore[attr-defined]
    base.KVConnectorMetadata = KVConnectorMetadata  # type: ignore[attr-defined]
    base.KVConnectorRole = KVConnectorRole  # type: ignore[attr-defined]
    base.KVConnectorWorkerMetadata = KVConnectorWorkerMetadata  # type: ignore[attr-defined]
    state = _module(monkeypatch, "vllm.distributed.parallel_state")
    state.get_tensor_model_parallel_rank = lambda: tp_rank  # type: ignore[attr-defined]
    monkeypatch.delitem(sys.modules, "kvsim.connectors.vllm_connector", raising=False)
    return {
        "KVConnectorBase_V1": KVConnectorBase_V1,
        "KVConnectorMetadata": KVConnectorMetadata,
        "KVConnectorRole": KVConnectorRole,
        "KVConnectorWorkerMetadata": KVConnectorWorkerMetadata,
    }
