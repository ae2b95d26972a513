"""The class vLLM's KV-connector factory instantiates: :class:`KvsimConnector`.

This module imports vLLM (``KVConnectorBase_V1`` and the metadata base classes), so only vLLM imports it;
everything else uses :mod:`kvsim.connectors.vllm_adapter`, which does not need vLLM. See that module for
the ``--kv-transfer-config`` to use and the extra-config keys.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from kvsim.connectors.vllm_adapter import KvsimConnectorMetadata, KvsimVllmConnector, KvsimWorkerMetadata


class KvsimMetadata(KvsimConnectorMetadata, KVConnectorMetadata):
    """:class:`KvsimConnectorMetadata` as vLLM's ``KVConnectorMetadata``."""


class KvsimWorkerMeta(KvsimWorkerMetadata, KVConnectorWorkerMetadata):
    """:class:`KvsimWorkerMetadata` as vLLM's ``KVConnectorWorkerMetadata``."""


def _tp_rank() -> int:
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

    return int(get_tensor_model_parallel_rank())


class KvsimConnector(KvsimVllmConnector, KVConnectorBase_V1):
    """vLLM's ``KVConnectorBase_V1`` implemented by :class:`KvsimVllmConnector` on a KVCM server."""

    metadata_cls = KvsimMetadata
    worker_metadata_cls = KvsimWorkerMeta

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        # The vLLM base keeps the config and role (its role property, _kv_transfer_config, ...).
        KVConnectorBase_V1.__init__(self, vllm_config, role, kv_cache_config)
        rank = 0 if role == KVConnectorRole.SCHEDULER else _tp_rank()
        KvsimVllmConnector.__init__(self, vllm_config, role, kv_cache_config, tp_rank=rank)


__all__ = ["KvsimConnector", "KvsimMetadata", "KvsimWorkerMeta"]
