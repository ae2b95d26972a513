"""One handler per KVCM RPC: convert the request, call the cache, fill the response.

Handlers hold no cache logic and never build a status: a failure is a ``CacheError`` raised by the cache
(or, for input only the service understands, here), and :meth:`KvcmService.dispatch` maps it. The meta
RPCs and the four admin RPCs that share them are generic: request message -> request dataclass ->
``cache.<method>(request)`` -> result dataclass -> response fields, matched by name. Results the
reference's responses have no field for (FinishWriteCache, RemoveCache, TrimCache and RemoveInstance
counts) go to the ``kvsim_counts`` extension field. The string-key KV service works the same way over
:class:`kvsim.cache.kv_meta.KvMetaManager` (``svc.kv_meta()``), whose request and result types follow
``kv_meta_service.proto`` field by field.

:func:`routes` checks that every method of every service has exactly one handler, so a proto change
without a handler fails at start-up (and in the tests), not at the first call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvsim.cache import (
    CacheError,
    ErrorCode,
    FinishWriteCacheRequest,
    GetCacheLocationRequest,
    GetCacheMetaRequest,
    GetInstanceInfoRequest,
    InstanceGroup,
    KvGetInstanceInfoRequest,
    KvGetRequest,
    KvPutFinishRequest,
    KvPutStartRequest,
    KvRegisterInstanceRequest,
    KvRemoveRequest,
    KvTrimRequest,
    RegisterInstanceRequest,
    RemoveCacheRequest,
    StartWriteCacheRequest,
    StorageConfig,
    TrimCacheRequest,
)
from kvsim.cache.errors import invalid
from kvsim.serve.catalog import ALL_SERVICE_KINDS, ServiceKind, rpcs
from kvsim.serve.convert import fill_message, from_message
from kvsim.serve.prometheus import collect
from kvsim.serve.service import FAULTABLE_APIS, Fault, Handler, Route

if TYPE_CHECKING:
    from kvsim.serve.service import KvcmService

# (service kind, method) -> (handler, success message, fault-injectable)
_TABLE: dict[tuple[ServiceKind, str], tuple[Handler, str, bool]] = {}


def _register(
    kind: ServiceKind, name: str, handler: Handler, success: str = "", faultable: bool = False
) -> None:
    if (kind, name) in _TABLE:
        raise ValueError(f"duplicate handler for {kind}.{name}")
    _TABLE[(kind, name)] = (handler, success, faultable)


def _cache_call(method: str, request_type: type, counts: bool = False) -> Handler:
    """A handler that converts the request to ``request_type``, calls ``cache.<method>`` and copies the
    result into the response (or into its ``kvsim_counts`` extension)."""

    def handler(svc: KvcmService, request: Any, response: Any) -> None:
        result = getattr(svc.cache, method)(from_message(request, request_type))
        fill_message(result, response.kvsim_counts if counts else response)

    handler.__name__ = f"call_{method}"
    return handler


def _field(request: Any, name: str, cls: type) -> Any:
    """A sub-message of ``request`` as a ``cls`` dataclass, or None when absent (presence matters)."""
    return from_message(getattr(request, name), cls) if request.HasField(name) else None


# ---------------------------------------------------------------------------------------------- meta

for _kind in ("meta", "admin"):
    # The four RPCs both services offer run the same cache call; the admin service differs only in how
    # dispatch maps errors and in what its responses have room for.
    _register(
        _kind,
        "RegisterInstance",
        _cache_call("register_instance", RegisterInstanceRequest),
        "Instance registered successfully",
    )
    _register(_kind, "GetInstanceInfo", _cache_call("get_instance_info", GetInstanceInfoRequest))
    _register(
        _kind,
        "GetCacheMeta",
        _cache_call("get_cache_meta", GetCacheMetaRequest),
        "Cache metadata retrieved successfully",
    )
    _register(
        _kind,
        "RemoveCache",
        _cache_call("remove_cache", RemoveCacheRequest, counts=True),
        "Cache removed successfully",
    )

_register(
    "meta",
    "GetCacheLocation",
    _cache_call("get_cache_location", GetCacheLocationRequest),
    "Cache locations retrieved successfully",
    faultable=True,
)
_register(
    "meta",
    "StartWriteCache",
    _cache_call("start_write_cache", StartWriteCacheRequest),
    "Write cache session started successfully",
    faultable=True,
)
_register(
    "meta",
    "FinishWriteCache",
    _cache_call("finish_write_cache", FinishWriteCacheRequest, counts=True),
    "Write cache session finished successfully",
    faultable=True,
)
_register(
    "meta",
    "TrimCache",
    _cache_call("trim_cache", TrimCacheRequest, counts=True),
    "Cache trimmed successfully",
)


# ------------------------------------------------------------------------------------------ admin: storages


def _add_storage(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.add_storage(_field(request, "storage", StorageConfig))


def _enable_storage(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.enable_storage(request.storage_unique_name)


def _disable_storage(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.disable_storage(request.storage_unique_name)


def _remove_storage(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.remove_storage(request.storage_unique_name)


def _update_storage(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.update_storage(_field(request, "storage", StorageConfig))


def _list_storage(svc: KvcmService, request: Any, response: Any) -> None:
    for config in svc.cache.list_storage():
        fill_message(config, response.storage.add())


_register("admin", "AddStorage", _add_storage, "Storage added successfully")
_register("admin", "EnableStorage", _enable_storage, "Storage enabled successfully")
_register("admin", "DisableStorage", _disable_storage, "Storage disabled successfully")
_register("admin", "RemoveStorage", _remove_storage, "Storage removed successfully")
_register("admin", "UpdateStorage", _update_storage, "Storage updated successfully")
_register("admin", "ListStorage", _list_storage, "Storage listed successfully")


# ---------------------------------------------------------------------------------------------- admin: groups


def _create_group(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.create_instance_group(_field(request, "instance_group", InstanceGroup))


def _update_group(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.update_instance_group(_field(request, "instance_group", InstanceGroup), request.current_version)


def _remove_group(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.remove_instance_group(request.name)


def _get_group(svc: KvcmService, request: Any, response: Any) -> None:
    fill_message(svc.cache.get_instance_group(request.name), response.instance_group)


_register("admin", "CreateInstanceGroup", _create_group, "Instance group created successfully")
_register("admin", "UpdateInstanceGroup", _update_group, "Instance group updated successfully")
_register("admin", "RemoveInstanceGroup", _remove_group, "Instance group removed successfully")
_register("admin", "GetInstanceGroup", _get_group, "Instance group retrieved successfully")


# ----------------------------------------------------------------------------------------- admin: instances


def _remove_instance(svc: KvcmService, request: Any, response: Any) -> None:
    fill_message(
        svc.cache.remove_instance(request.instance_id, request.instance_group), response.kvsim_counts
    )


def _list_instances(svc: KvcmService, request: Any, response: Any) -> None:
    for info in svc.cache.list_instance_info(request.instance_group_name):
        fill_message(info, response.instance_info.add())


_register("admin", "RemoveInstance", _remove_instance, "Instance removed successfully")
_register("admin", "ListInstanceInfo", _list_instances)


# ------------------------------------------------------------------------------------------ admin: accounts


def _add_account(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.add_account(request.user_name, request.password, request.role)


def _delete_account(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.delete_account(request.user_name)


def _list_accounts(svc: KvcmService, request: Any, response: Any) -> None:
    for account in svc.cache.list_account():
        fill_message(account, response.accounts.add())


def _gen_snapshot(svc: KvcmService, request: Any, response: Any) -> None:
    response.config_snapshot = svc.cache.gen_config_snapshot()


def _load_snapshot(svc: KvcmService, request: Any, response: Any) -> None:
    svc.cache.load_config_snapshot(request.config_snapshot)


_register("admin", "AddAccount", _add_account, "Account added successfully")
_register("admin", "DeleteAccount", _delete_account, "Account deleted successfully")
_register("admin", "ListAccount", _list_accounts, "Account listed successfully")
_register("admin", "GenConfigSnapshot", _gen_snapshot, "Config snapshot generated successfully")
_register("admin", "LoadConfigSnapshot", _load_snapshot, "Config snapshot loaded successfully")


# ------------------------------------------------------------------------------------- admin: service state
# These report on the service itself rather than the cache and are answered by every node. With an
# elector (``kvsim serve``) they report the election (kvsim.serve.leader); a service without one (an
# in-process server) is a standalone leader, and LeaderDemote is UNSUPPORTED there.

_LEASE_US = 10_000_000  # the reference's default leader lease (kvcm.leader_elector.lease_ms = 10000)
_LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}


def _add_metric(response: Any, name: str, value: float, tags: Any, as_int: bool) -> None:
    data = response.metrics.add()
    data.metric_name = name
    if as_int:
        data.metric_value.int_value = int(value)
    else:
        data.metric_value.float_value = float(value)
    for key, tag in tags:
        entry = data.metric_tags.add()
        entry.tag_key, entry.tag_value = key, str(tag)


def _get_metrics(svc: KvcmService, request: Any, response: Any) -> None:
    response.timestamp = int(svc.clock.now() * 1000)
    # kvsim.serve.prometheus.collect is the one list of samples, so GET /metrics reports the same numbers:
    # the cache's registry, the service's own ``service.*`` for APIs the cache does not see, store health.
    for sample in collect(svc):
        _add_metric(response, sample.name, sample.value, sample.tags, sample.kind == "counter")


def _check_health(svc: KvcmService, request: Any, response: Any) -> None:
    if svc.elector is not None:
        svc.elector.check_health(response)
        return
    response.is_leader = True
    response.is_health = True
    response.elector_last_loop_time_ms = int(svc.clock.now() * 1000)


def _cluster_info(svc: KvcmService, request: Any, response: Any) -> None:
    if svc.elector is not None:
        svc.elector.cluster_info(response)
        return
    response.info_updated_time = 0
    response.self_leader_expiration_time = int(svc.clock.now() * 1e6) + _LEASE_US
    response.self_node_id = svc.node_id
    response.leader_node_id = svc.node_id


def _leader_demote(svc: KvcmService, request: Any, response: Any) -> str:
    if svc.elector is not None:
        return svc.elector.request_demotion()  # type: ignore[no-any-return]
    raise CacheError(
        ErrorCode.UNSUPPORTED, "leader election is off: this node runs standalone and stays leader"
    )


def _get_elector_config(svc: KvcmService, request: Any, response: Any) -> None:
    response.campaign_delay_time_ms = svc.campaign_delay_ms


def _update_elector_config(svc: KvcmService, request: Any, response: Any) -> None:
    svc.campaign_delay_ms = request.campaign_delay_time_ms


def _update_logger(svc: KvcmService, request: Any, response: Any) -> None:
    level = _LOG_LEVELS.get(request.log_level.upper())
    if level is None:
        raise invalid(
            "log_level", f"invalid log level string {request.log_level!r}: DEBUG, INFO, WARN or ERROR"
        )
    logging.getLogger("kvsim").setLevel(level)


_register("admin", "GetMetrics", _get_metrics)
_register("admin", "CheckHealth", _check_health)
_register("admin", "GetManagerClusterInfo", _cluster_info)
_register("admin", "LeaderDemote", _leader_demote)
_register("admin", "GetLeaderElectorConfig", _get_elector_config)
_register(
    "admin", "UpdateLeaderElectorConfig", _update_elector_config, "Leader elector config updated successfully"
)
_register("admin", "UpdateLogger", _update_logger, "Logger updated successfully")


# ---------------------------------------------------------------------------------------------- debug


def _inject_fault(svc: KvcmService, request: Any, response: Any) -> str:
    if not request.api_name:
        raise invalid("api_name", "is required")
    once = request.fault_trigger_strategy == 1  # ONCE
    svc.faults.inject(request.api_name, Fault(once=once, at_call=request.trigger_at_call))
    if request.api_name not in FAULTABLE_APIS:
        logging.getLogger("kvsim.serve").warning(
            "fault for %r stored, but only %s consult faults", request.api_name, ", ".join(FAULTABLE_APIS)
        )
    return (
        f"Inject fault successfully, api_name: {request.api_name}, fault_type: internal_error, "
        f"fault_trigger_strategy: {'once' if once else 'always'}"
    )


def _remove_fault(svc: KvcmService, request: Any, response: Any) -> str:
    if not svc.faults.remove(request.api_name):
        raise invalid("api_name", f"no fault is injected for {request.api_name!r}")
    return f"Remove fault successfully, api_name: {request.api_name}"


def _clear_faults(svc: KvcmService, request: Any, response: Any) -> None:
    svc.faults.clear()


_register("debug", "InjectFault", _inject_fault)
_register("debug", "RemoveFault", _remove_fault)
_register("debug", "ClearFaults", _clear_faults, "Clear faults successfully")


# ---------------------------------------------------------------------------------------------- kv_meta


def _kv_call(method: str, request_type: type, counts: bool = False) -> Handler:
    """A handler that converts the request to ``request_type``, calls ``svc.kv_meta().<method>`` and
    copies the result into the response (or into its ``kvsim_counts`` extension)."""

    def handler(svc: KvcmService, request: Any, response: Any) -> None:
        result = getattr(svc.kv_meta(), method)(from_message(request, request_type))
        fill_message(result, response.kvsim_counts if counts else response)

    handler.__name__ = f"kv_{method}"
    return handler


_register(
    "kv_meta",
    "RegisterInstance",
    _kv_call("register_instance", KvRegisterInstanceRequest),
    "Instance registered successfully",
)
_register("kv_meta", "GetInstanceInfo", _kv_call("get_instance_info", KvGetInstanceInfoRequest))
_register("kv_meta", "Get", _kv_call("get", KvGetRequest), "Values located successfully")
_register("kv_meta", "PutStart", _kv_call("put_start", KvPutStartRequest), "Put session started successfully")
_register(
    "kv_meta",
    "PutFinish",
    _kv_call("put_finish", KvPutFinishRequest, counts=True),
    "Put session finished successfully",
)
_register("kv_meta", "Remove", _kv_call("remove", KvRemoveRequest, counts=True), "Keys removed successfully")
_register("kv_meta", "Trim", _kv_call("trim", KvTrimRequest, counts=True), "Instance trimmed successfully")


def routes() -> dict[ServiceKind, dict[str, Route]]:
    """Every RPC of every service with its handler.

    Raises:
        RuntimeError: a method of the protos has no handler, or a handler names no method.
    """
    out: dict[ServiceKind, dict[str, Route]] = {}
    for kind in ALL_SERVICE_KINDS:
        infos = rpcs(kind)
        missing = [name for name in infos if (kind, name) not in _TABLE]
        if missing:
            raise RuntimeError(f"{kind} service: no handler for {missing}")
        out[kind] = {}
        for name, info in infos.items():
            handler, success, faultable = _TABLE[(kind, name)]
            out[kind][name] = Route(info, handler, success, faultable)
    unknown = [f"{k}.{n}" for (k, n) in _TABLE if n not in rpcs(k)]
    if unknown:
        raise RuntimeError(f"handlers for methods the protos do not declare: {unknown}")
    return out
