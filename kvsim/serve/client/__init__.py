"""``kvsim.serve.client``: the one Python client of the KVCM service, with ``CacheManager``'s API.

    from kvsim.serve.client import CacheClient
    client = CacheClient.grpc("127.0.0.1")            # meta 6381, admin 6491 (or CacheClient.http: 6382/6492)
    client.register_instance(RegisterInstanceRequest(...))
    client.start_write_cache(StartWriteCacheRequest(...))

Every meta and admin operation of :class:`kvsim.cache.CacheManager` exists here with the same arguments,
results and errors: a non-OK ``header.status`` is raised as ``CacheError(code, message)``, so code written
against the in-process manager runs unchanged against a live server. The four calls both services offer
(``register_instance``, ``get_instance_info``, ``get_cache_meta``, ``remove_cache``) go to the meta
service, whose codes are the manager's; admin-only calls get the admin service's codes (which the
manager already uses for them). The counts of ``finish_write_cache``, ``remove_cache``, ``trim_cache``
and ``remove_instance`` come from kvsim's ``kvsim_counts`` extension field.

The string-key KV meta service (``kvsim serve --kv-rpc-port/--kv-http-port``) is reached through
:attr:`CacheClient.kv`, which has :class:`kvsim.cache.KvMetaManager`'s API; give the client the KV port
(``kv_rpc_port`` or ``kv_http_port``) to use it.

Not available remotely: ``poll`` and the introspection helpers (the server polls by itself),
``verify_account`` and ``apply_startup_config`` (no RPC). The service's own RPCs (health, metrics,
leader elector, logger, fault injection) are extra methods returning the response message.

Unreachable servers raise :class:`ServiceUnavailable` (a ``CacheError`` with code SERVICE_NOT_READY)
after the transport's retries; see :mod:`kvsim.serve.client.transport` for what is retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from kvsim.cache import (
    Account,
    AccountRole,
    CacheError,
    ErrorCode,
    FinishWriteCacheRequest,
    FinishWriteCacheResult,
    GetCacheLocationRequest,
    GetCacheLocationResult,
    GetCacheMetaRequest,
    GetCacheMetaResult,
    GetInstanceInfoRequest,
    GetInstanceInfoResult,
    InstanceGroup,
    InstanceInfo,
    RegisterInstanceRequest,
    RegisterInstanceResult,
    RemoveCacheRequest,
    RemoveCacheResult,
    StartWriteCacheRequest,
    StartWriteCacheResult,
    StorageConfig,
    TrimCacheRequest,
    TrimCacheResult,
)
from kvsim.serve.catalog import ServiceKind, rpc
from kvsim.serve.client.kv_meta import KvMetaClient
from kvsim.serve.client.transport import (
    GrpcTransport,
    HttpTransport,
    ServiceUnavailable,
    Transport,
    Unauthenticated,
)
from kvsim.serve.convert import fill_message, from_message

__all__ = [
    "CacheClient",
    "GrpcTransport",
    "HttpTransport",
    "KvMetaClient",
    "ServiceUnavailable",
    "Transport",
    "Unauthenticated",
]

R = TypeVar("R")
_DEBUG_HTTP_OFFSET = 3000


def _error_code(number: int) -> ErrorCode:
    try:
        return ErrorCode(number)
    except ValueError:
        return ErrorCode.UNKNOWN_ERROR


class CacheClient:
    """A client of one kvsim (or KVCM) server over a :class:`Transport`.

    Build one with :meth:`grpc` or :meth:`http`; close it (or use it as a context manager) when done.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        #: The string-key KV meta API (needs the KV port given to :meth:`grpc` or :meth:`http`).
        self.kv = KvMetaClient(lambda method, request: self.call("kv_meta", method, request))

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def grpc(
        cls,
        host: str = "127.0.0.1",
        rpc_port: int = 6381,
        admin_rpc_port: int | None = 6491,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        admin_token: str = "",
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        kv_rpc_port: int | None = None,
    ) -> CacheClient:
        """A gRPC client. ``admin_rpc_port`` None or 0 means the admin and debug services share the
        meta server's port (the reference's layout when the ports are equal). ``kv_rpc_port`` is the
        KV meta service's port (:attr:`kv` refuses calls with UNSUPPORTED without it).

        ``admin_token`` goes to the admin and debug services (``authorization: Bearer``). ``tls`` (or a
        ``root_certificates`` PEM, bytes or file, to trust instead of gRPC's default roots) connects
        over TLS."""
        address = f"[{host}]" if ":" in host else host
        admin = admin_rpc_port or rpc_port
        targets: dict[ServiceKind, str] = {
            "meta": f"{address}:{rpc_port}",
            "admin": f"{address}:{admin}",
            "debug": f"{address}:{admin}",
        }
        if kv_rpc_port is not None:
            targets["kv_meta"] = f"{address}:{kv_rpc_port}"
        credentials = None
        if tls or root_certificates is not None:
            from kvsim.serve.tls import grpc_channel_credentials

            credentials = grpc_channel_credentials(root_certificates)
        return cls(
            GrpcTransport(
                targets,
                timeout_s=timeout_s,
                retries=retries,
                channel_credentials=credentials,
                admin_token=admin_token,
            )
        )

    @classmethod
    def http(
        cls,
        host: str = "127.0.0.1",
        http_port: int = 6382,
        admin_http_port: int | None = 6492,
        debug_http_port: int | None = None,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        admin_token: str = "",
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        kv_http_port: int | None = None,
    ) -> CacheClient:
        """An HTTP client; the debug service is at ``http_port + 3000`` unless given, the KV meta
        service at ``kv_http_port`` (:attr:`kv` refuses calls with UNSUPPORTED without it).

        ``admin_token`` goes to the admin and debug services (``Authorization: Bearer``). ``tls`` (or a
        ``root_certificates`` PEM, bytes or file, to trust instead of the system's roots) uses HTTPS."""
        targets: dict[ServiceKind, tuple[str, int]] = {
            "meta": (host, http_port),
            "debug": (host, debug_http_port or http_port + _DEBUG_HTTP_OFFSET),
        }
        if admin_http_port:
            targets["admin"] = (host, admin_http_port)
        if kv_http_port is not None:
            targets["kv_meta"] = (host, kv_http_port)
        context = None
        if tls or root_certificates is not None:
            from kvsim.serve.tls import client_ssl_context

            context = client_ssl_context(root_certificates)
        return cls(
            HttpTransport(
                targets, timeout_s=timeout_s, retries=retries, ssl_context=context, admin_token=admin_token
            )
        )

    def close(self) -> None:
        """Close the transport's connections."""
        self.transport.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing

    def call(self, kind: ServiceKind, method: str, request: Message | None = None, **fields: Any) -> Message:
        """Send one RPC and return its response message, raising ``CacheError`` for a non-OK status.

        ``request`` may be given as a message, or built from keyword ``fields`` (scalars only).
        """
        info = rpc(kind, method)
        if request is None:
            request = info.request_type(**fields)
        response = self.transport.call(info, request)
        status = response.header.status  # type: ignore[attr-defined]
        if status.code != ErrorCode.OK:
            raise CacheError(_error_code(status.code), status.message)
        return response

    def _send(self, kind: ServiceKind, method: str, obj: object) -> Message:
        return self.call(kind, method, fill_message(obj, rpc(kind, method).request_type()))

    # ------------------------------------------------------------------------------ meta operations

    def register_instance(self, request: RegisterInstanceRequest) -> RegisterInstanceResult:
        """Register an instance (see :meth:`CacheManager.register_instance`)."""
        return from_message(self._send("meta", "RegisterInstance", request), RegisterInstanceResult)

    def get_instance_info(self, request: GetInstanceInfoRequest) -> GetInstanceInfoResult:
        """Look up an instance."""
        return from_message(self._send("meta", "GetInstanceInfo", request), GetInstanceInfoResult)

    def get_cache_location(self, request: GetCacheLocationRequest) -> GetCacheLocationResult:
        """Find cached blocks."""
        return from_message(self._send("meta", "GetCacheLocation", request), GetCacheLocationResult)

    def get_cache_meta(self, request: GetCacheMetaRequest) -> GetCacheMetaResult:
        """Inspect the stored state of keys."""
        return from_message(self._send("meta", "GetCacheMeta", request), GetCacheMetaResult)

    def start_write_cache(self, request: StartWriteCacheRequest) -> StartWriteCacheResult:
        """Phase 1 of a write."""
        return from_message(self._send("meta", "StartWriteCache", request), StartWriteCacheResult)

    def finish_write_cache(self, request: FinishWriteCacheRequest) -> FinishWriteCacheResult:
        """Phase 2 of a write."""
        response = self._send("meta", "FinishWriteCache", request)
        return from_message(response.kvsim_counts, FinishWriteCacheResult)  # type: ignore[attr-defined]

    def remove_cache(self, request: RemoveCacheRequest) -> RemoveCacheResult:
        """Delete keys."""
        response = self._send("meta", "RemoveCache", request)
        return from_message(response.kvsim_counts, RemoveCacheResult)  # type: ignore[attr-defined]

    def trim_cache(self, request: TrimCacheRequest) -> TrimCacheResult:
        """Remove cache of an instance by strategy."""
        response = self._send("meta", "TrimCache", request)
        return from_message(response.kvsim_counts, TrimCacheResult)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------ admin: storages

    def add_storage(self, config: StorageConfig) -> None:
        """Register and open a storage."""
        self.call("admin", "AddStorage", self._storage_request("AddStorage", config))

    def update_storage(self, config: StorageConfig) -> None:
        """Replace a storage's config."""
        self.call("admin", "UpdateStorage", self._storage_request("UpdateStorage", config))

    def _storage_request(self, method: str, config: StorageConfig | None) -> Message:
        request = rpc("admin", method).request_type()
        if config is not None:
            fill_message(config, request.storage)  # type: ignore[attr-defined]
        return request

    def enable_storage(self, storage_unique_name: str) -> None:
        """Make a storage available again."""
        self.call("admin", "EnableStorage", storage_unique_name=storage_unique_name)

    def disable_storage(self, storage_unique_name: str) -> None:
        """Take a storage out of service."""
        self.call("admin", "DisableStorage", storage_unique_name=storage_unique_name)

    def remove_storage(self, storage_unique_name: str) -> None:
        """Unregister a storage."""
        self.call("admin", "RemoveStorage", storage_unique_name=storage_unique_name)

    def list_storage(self) -> tuple[StorageConfig, ...]:
        """Every registered storage, sorted by name."""
        response = self.call("admin", "ListStorage")
        return tuple(from_message(s, StorageConfig) for s in response.storage)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------ admin: groups

    def create_instance_group(self, group: InstanceGroup) -> None:
        """Create an instance group."""
        self.call("admin", "CreateInstanceGroup", self._group_request("CreateInstanceGroup", group))

    def update_instance_group(self, group: InstanceGroup, current_version: int) -> None:
        """Replace an instance group (versions as :meth:`CacheManager.update_instance_group`)."""
        request = self._group_request("UpdateInstanceGroup", group)
        request.current_version = current_version  # type: ignore[attr-defined]
        self.call("admin", "UpdateInstanceGroup", request)

    def _group_request(self, method: str, group: InstanceGroup | None) -> Message:
        request = rpc("admin", method).request_type()
        if group is not None:
            fill_message(group, request.instance_group)  # type: ignore[attr-defined]
        return request

    def remove_instance_group(self, name: str) -> None:
        """Remove an instance group."""
        self.call("admin", "RemoveInstanceGroup", name=name)

    def get_instance_group(self, name: str) -> InstanceGroup:
        """The stored instance group."""
        response = self.call("admin", "GetInstanceGroup", name=name)
        return from_message(response.instance_group, InstanceGroup)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------ admin: instances

    def remove_instance(self, instance_id: str, instance_group: str = "") -> TrimCacheResult:
        """Unregister an instance and delete its cache."""
        response = self.call(
            "admin", "RemoveInstance", instance_id=instance_id, instance_group=instance_group
        )
        return from_message(response.kvsim_counts, TrimCacheResult)  # type: ignore[attr-defined]

    def list_instance_info(self, instance_group_name: str = "") -> tuple[InstanceInfo, ...]:
        """Instances of a group ("" for every instance), sorted by id."""
        response = self.call("admin", "ListInstanceInfo", instance_group_name=instance_group_name)
        return tuple(from_message(i, InstanceInfo) for i in response.instance_info)  # type: ignore[attr-defined]

    # --------------------------------------------------------------------------- admin: accounts, snapshots

    def add_account(
        self, user_name: str, password: str, role: AccountRole | int = AccountRole.ROLE_USER
    ) -> None:
        """Add an account."""
        self.call("admin", "AddAccount", user_name=user_name, password=password, role=int(role))

    def delete_account(self, user_name: str) -> None:
        """Remove an account."""
        self.call("admin", "DeleteAccount", user_name=user_name)

    def list_account(self) -> tuple[Account, ...]:
        """Every account (name and role), sorted by name."""
        response = self.call("admin", "ListAccount")
        return tuple(from_message(a, Account) for a in response.accounts)  # type: ignore[attr-defined]

    def gen_config_snapshot(self) -> str:
        """The whole registry as JSON."""
        return self.call("admin", "GenConfigSnapshot").config_snapshot  # type: ignore[attr-defined,no-any-return]

    def load_config_snapshot(self, config_snapshot: str) -> None:
        """Replace the registry by a snapshot, all or nothing."""
        self.call("admin", "LoadConfigSnapshot", config_snapshot=config_snapshot)

    # ------------------------------------------------------------------------------ the service's own RPCs

    def check_health(self) -> Message:
        """CheckHealth: ``is_leader``, ``is_health``, ``elector_last_loop_time_ms``."""
        return self.call("admin", "CheckHealth")

    def get_metrics(self) -> Message:
        """GetMetrics: per-API counters and latencies."""
        return self.call("admin", "GetMetrics")

    def get_manager_cluster_info(self) -> Message:
        """GetManagerClusterInfo: node and leader ids."""
        return self.call("admin", "GetManagerClusterInfo")

    def get_leader_elector_config(self) -> int:
        """The campaign delay in milliseconds."""
        return self.call("admin", "GetLeaderElectorConfig").campaign_delay_time_ms  # type: ignore[attr-defined,no-any-return]

    def update_leader_elector_config(self, campaign_delay_time_ms: int) -> None:
        """Set the campaign delay."""
        self.call("admin", "UpdateLeaderElectorConfig", campaign_delay_time_ms=campaign_delay_time_ms)

    def update_logger(self, log_level: str) -> None:
        """Set the server's log level: DEBUG, INFO, WARN or ERROR."""
        self.call("admin", "UpdateLogger", log_level=log_level)

    def inject_fault(self, api_name: str, *, once: bool = False, trigger_at_call: int = 0) -> None:
        """Make ``api_name`` fail with INTERNAL_ERROR: always, or (``once``) for trace ids ending with
        ``_<trigger_at_call>``."""
        self.call(
            "debug",
            "InjectFault",
            api_name=api_name,
            fault_trigger_strategy=int(once),
            trigger_at_call=trigger_at_call,
        )

    def remove_fault(self, api_name: str) -> None:
        """Drop the fault of ``api_name``."""
        self.call("debug", "RemoveFault", api_name=api_name)

    def clear_faults(self) -> None:
        """Drop every fault."""
        self.call("debug", "ClearFaults")


@contextmanager
def connect(transport: str, host: str, ports: dict[str, int], **kwargs: Any) -> Iterator[CacheClient]:
    """A client for ``transport`` ("grpc" or "http") from a ports dict such as ``ports.json`` holds (the
    KV meta service too when its port is there)."""
    if transport == "grpc":
        client = CacheClient.grpc(
            host,
            ports["rpc_port"],
            ports.get("admin_rpc_port"),
            kv_rpc_port=ports.get("kv_rpc_port"),
            **kwargs,
        )
    elif transport == "http":
        client = CacheClient.http(
            host,
            ports["http_port"],
            ports.get("admin_http_port"),
            ports.get("debug_http_port"),
            kv_http_port=ports.get("kv_http_port"),
            **kwargs,
        )
    else:
        raise ValueError(f"transport: expected grpc or http, got {transport!r}")
    try:
        yield client
    finally:
        client.close()
