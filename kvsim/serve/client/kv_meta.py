"""The client of the string-key KV meta service, with :class:`kvsim.cache.KvMetaManager`'s API.

    from kvsim.cache import KvPutStartRequest
    from kvsim.serve.client import CacheClient
    client = CacheClient.grpc("127.0.0.1", kv_rpc_port=6383)   # or CacheClient.http(..., kv_http_port=...)
    request = KvPutStartRequest(instance_id="kv1", keys=("a", "b"), write_timeout_seconds=30)
    started = client.kv.put_start(request)   # .key_mask, .locations, .write_session_id

Every method takes and returns what the in-process manager does, and raises the same ``CacheError`` for a
non-OK status, so code (and the contract tests) run unchanged against either. Two codes differ on the
wire: the service reports DUPLICATE_ENTITY as INVALID_ARGUMENT and SERVER_NOT_LEADER as SERVICE_NOT_READY,
since the kv_meta package has neither. The counts of ``put_finish``, ``remove`` and ``trim`` come from the
``kvsim_counts`` extension field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from kvsim.cache import (
    FinishWriteCacheResult,
    KvGetInstanceInfoRequest,
    KvGetInstanceInfoResult,
    KvGetRequest,
    KvGetResult,
    KvPutFinishRequest,
    KvPutStartRequest,
    KvPutStartResult,
    KvRegisterInstanceRequest,
    KvRemoveRequest,
    KvTrimRequest,
    RegisterInstanceResult,
    RemoveCacheResult,
    TrimCacheResult,
)
from kvsim.serve.catalog import rpc
from kvsim.serve.convert import fill_message, from_message

R = TypeVar("R")

#: Sends one RPC of the KV service and returns its response, raising ``CacheError`` for a non-OK status.
Call = Callable[[str, Message], Message]


class KvMetaClient:
    """The KV meta API over a :class:`~kvsim.serve.client.CacheClient`'s transport (its ``kv`` member).

    Args:
        call: ``(method, request message) -> response message`` (``CacheClient.call`` for kind
            ``kv_meta``).
    """

    def __init__(self, call: Call) -> None:
        self._call = call

    def _send(self, method: str, request: object) -> Message:
        return self._call(method, fill_message(request, rpc("kv_meta", method).request_type()))

    def _counts(self, method: str, request: object, result_type: type[R]) -> R:
        response: Any = self._send(method, request)
        return from_message(response.kvsim_counts, result_type)

    def register_instance(self, request: KvRegisterInstanceRequest) -> RegisterInstanceResult:
        """Register a KV instance (see :meth:`KvMetaManager.register_instance`)."""
        return from_message(self._send("RegisterInstance", request), RegisterInstanceResult)

    def get_instance_info(self, request: KvGetInstanceInfoRequest) -> KvGetInstanceInfoResult:
        """Look up an instance."""
        return from_message(self._send("GetInstanceInfo", request), KvGetInstanceInfoResult)

    def get(self, request: KvGetRequest) -> KvGetResult:
        """Locate values, one location per key."""
        return from_message(self._send("Get", request), KvGetResult)

    def put_start(self, request: KvPutStartRequest) -> KvPutStartResult:
        """Phase 1 of a write."""
        return from_message(self._send("PutStart", request), KvPutStartResult)

    def put_finish(self, request: KvPutFinishRequest) -> FinishWriteCacheResult:
        """Phase 2 of a write."""
        return self._counts("PutFinish", request, FinishWriteCacheResult)

    def remove(self, request: KvRemoveRequest) -> RemoveCacheResult:
        """Delete keys."""
        return self._counts("Remove", request, RemoveCacheResult)

    def trim(self, request: KvTrimRequest) -> TrimCacheResult:
        """Remove an instance's values by strategy."""
        return self._counts("Trim", request, TrimCacheResult)
