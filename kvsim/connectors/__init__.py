"""``kvsim.connectors``: the client side of a live deployment of ``kvsim serve`` (or any KVCM server).

Three layers, each usable alone:

* **Transfer** (:mod:`~kvsim.connectors.transfer`): :class:`TransferClient` loads and saves block bytes
  for the URIs a KVCM server hands out (``file://``, ``hf3fs://`` and ``mooncake://``), routed by the
  storage name in the URI's host through the ``storage_configs`` of RegisterInstance.
* **Lifecycle** (:mod:`~kvsim.connectors.lifecycle`): :class:`ManagerConnection` (several servers,
  failover, re-registration) and :class:`KvcmScheduler` (prefix match with the engine's own blocks
  masked out, StartWriteCache, FinishWriteCache with per-block masks ANDed over TP ranks by
  :class:`RankMasks`).
* **Engine adapters**: SGLang's HiCache storage backend
  (:class:`~kvsim.connectors.sglang_adapter.KvsimHiCache`, loaded by SGLang as
  ``kvsim.connectors.sglang_backend.KvsimHiCacheStorage``) and vLLM's KV connector
  (:class:`~kvsim.connectors.vllm_adapter.KvsimVllmConnector`, loaded by vLLM as
  ``kvsim.connectors.vllm_connector.KvsimConnector``). The modules that subclass the engines' base
  classes import the engines; nothing imported here does (nor torch).

:class:`LocalServe` runs a ``kvsim serve`` process on loopback for demos and tests. Only
``kvsim.serve.client`` of the service is used, as the layer table requires. See ``docs/connectors.md``.
"""

from __future__ import annotations

from kvsim.connectors.config import ConnectorConfig, page_key
from kvsim.connectors.errors import ConnectorError, ManagerError, TransferError, WriteAborted
from kvsim.connectors.lifecycle import (
    KvcmScheduler,
    ManagerConnection,
    MatchResult,
    RankMasks,
    WriteOutcome,
    WritePlan,
    make_registration,
    ok_mask,
    parse_address,
    spec_uris,
)
from kvsim.connectors.localserve import LocalServe
from kvsim.connectors.routes import BlockRef, StorageRoute, parse_storage_configs, resolve_uri
from kvsim.connectors.transfer import TransferClient, TransferResult

__all__ = [
    "BlockRef",
    "ConnectorConfig",
    "ConnectorError",
    "KvcmScheduler",
    "LocalServe",
    "ManagerConnection",
    "ManagerError",
    "MatchResult",
    "RankMasks",
    "StorageRoute",
    "TransferClient",
    "TransferError",
    "TransferResult",
    "WriteAborted",
    "WriteOutcome",
    "WritePlan",
    "make_registration",
    "ok_mask",
    "page_key",
    "parse_address",
    "parse_storage_configs",
    "resolve_uri",
    "spec_uris",
]
