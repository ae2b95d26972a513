"""The catalog of KVCM RPCs, read from the compiled proto descriptors.

One :class:`RpcInfo` per method of MetaService (8), AdminService (28) and DebugService (3), the services
the reference serves, and of the string-key KV MetaService (7, kind ``kv_meta``) that kvsim serves on its
own ports: its request and response classes, its gRPC path
(``/kv_cache_manager.proto.meta.MetaService/RegisterInstance``) and HTTP path (``/api/registerInstance``).
The server attaches handlers to these entries and the client uses them to call; neither hard-codes a
method list, so the protos stay the single source of truth.
"""

from __future__ import annotations

import dataclasses
import functools
from types import ModuleType
from typing import Literal

from google.protobuf.message import Message

from kvsim.serve.proto import admin_service_pb2, debug_service_pb2, kv_meta_service_pb2, meta_service_pb2

ServiceKind = Literal["meta", "admin", "debug", "kv_meta"]
#: The reference's services, on the reference's ports.
SERVICE_KINDS: tuple[ServiceKind, ...] = ("meta", "admin", "debug")
#: Every service kvsim serves: the reference's and the string-key KV meta service (its own ports, off
#: unless configured).
ALL_SERVICE_KINDS: tuple[ServiceKind, ...] = (*SERVICE_KINDS, "kv_meta")

_MODULES: dict[ServiceKind, tuple[ModuleType, str]] = {
    "meta": (meta_service_pb2, "MetaService"),
    "admin": (admin_service_pb2, "AdminService"),
    "debug": (debug_service_pb2, "DebugService"),
    "kv_meta": (kv_meta_service_pb2, "MetaService"),
}

# RPCs a client may repeat after a timeout without changing the outcome (reads, and writes whose repeat is
# harmless). Everything else is retried only when the request surely never reached the server.
_IDEMPOTENT = frozenset(
    {
        "RegisterInstance",
        "RemoveCache",
        "EnableStorage",
        "DisableStorage",
        "LoadConfigSnapshot",
        "UpdateLeaderElectorConfig",
        "UpdateLogger",
        "InjectFault",
        "ClearFaults",
    }
)


# The KV service's reads and idempotent writes. PutStart, PutFinish and Trim are not: a repeat opens
# another session, finds the first one finished, or trims values written in between.
_KV_IDEMPOTENT = frozenset({"RegisterInstance", "GetInstanceInfo", "Get", "Remove"})


def lower_camel(name: str) -> str:
    """``RegisterInstance`` -> ``registerInstance`` (the reference's HTTP naming)."""
    return name[:1].lower() + name[1:]


@dataclasses.dataclass(frozen=True, slots=True)
class RpcInfo:
    """One RPC of one service."""

    kind: ServiceKind
    name: str
    request_type: type[Message]
    response_type: type[Message]
    full_service_name: str

    @property
    def grpc_path(self) -> str:
        """The gRPC method path, e.g. ``/kv_cache_manager.proto.meta.MetaService/RegisterInstance``."""
        return f"/{self.full_service_name}/{self.name}"

    @property
    def http_name(self) -> str:
        """The HTTP method name, e.g. ``registerInstance`` (served at ``POST /api/registerInstance``)."""
        return lower_camel(self.name)

    @property
    def idempotent(self) -> bool:
        """True when repeating the call is harmless (reads and idempotent writes)."""
        if self.kind == "kv_meta":
            return self.name in _KV_IDEMPOTENT
        return self.name.startswith(("Get", "List", "Check")) or self.name in _IDEMPOTENT

    @property
    def api_name(self) -> str:
        """The name the service's metrics count the RPC under: the method name, prefixed ``kv_meta.`` for
        the KV service so that its RegisterInstance and GetInstanceInfo are counted apart from the
        block-key ones."""
        return f"kv_meta.{self.name}" if self.kind == "kv_meta" else self.name


def full_service_name(kind: ServiceKind) -> str:
    """``kv_cache_manager.proto.<kind>.<Service>``."""
    module, service = _MODULES[kind]
    return module.DESCRIPTOR.services_by_name[service].full_name


def pb2_module(kind: ServiceKind) -> ModuleType:
    """The generated ``*_pb2`` module of a service kind."""
    return _MODULES[kind][0]


@functools.cache
def rpcs(kind: ServiceKind) -> dict[str, RpcInfo]:
    """Every RPC of service ``kind`` by method name, in declaration order."""
    module, service = _MODULES[kind]
    descriptor = module.DESCRIPTOR.services_by_name[service]
    out: dict[str, RpcInfo] = {}
    for method in descriptor.methods:
        out[method.name] = RpcInfo(
            kind=kind,
            name=method.name,
            request_type=getattr(module, method.input_type.name),
            response_type=getattr(module, method.output_type.name),
            full_service_name=descriptor.full_name,
        )
    return out


def rpc(kind: ServiceKind, name: str) -> RpcInfo:
    """One RPC by service kind and method name (KeyError if unknown)."""
    return rpcs(kind)[name]
