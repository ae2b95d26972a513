"""``CacheManager``: Tair KVCM's cache logic as plain synchronous Python.

One object serves every meta and admin operation of the reference (``register_instance`` ...
``trim_cache``, storages, groups, instances, accounts, config snapshots). It is shared by the simulator
(in process, with a simulated clock) and by ``kvsim.serve`` (behind gRPC/HTTP, with a wall clock).

Injected, never global: the :class:`~kvsim.core.Clock` (session deadlines, access times, deletion
delays), the seeded ``numpy.random.Generator`` (session and location ids, weighted read choice, default
password salts; children of it sample reclaim victims and name events), the
:class:`~kvsim.cache.store.CacheStore` (registry + meta index; memory by default), the backend factory
(storage allocation; the capacity-only simulated backend by default), the :class:`~kvsim.core.Timer`
(latency metrics) and an optional :class:`~kvsim.cache.events.EventLog`. No threads: deadlines are acted
on in :meth:`CacheManager.poll` (expired sessions, the reclaimer's water levels, delayed deletions), which
the simulator calls as time advances and the service calls from a periodic task.

Errors are :class:`~kvsim.cache.errors.CacheError` with the code a KVCM client would see. Every
operation validates its whole input before changing anything and makes at most one store write per
instance, so a failed call applies nothing. Where kvsim deliberately differs from the reference
(``../shared/COMPAT.md``) the method docstring says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from kvsim.cache import codec
from kvsim.cache import events as ev
from kvsim.cache.accounts import DEFAULT_ITERATIONS, AccountRecord, PasswordHasher
from kvsim.cache.backends.base import BackendError, BackendFactory, StorageBackend
from kvsim.cache.backends.simulated import SimulatedBackend
from kvsim.cache.deletion import RETRY_BASE_S, DeletionQueue, Pending, retry_delay
from kvsim.cache.errors import CacheError, ErrorCode, instance_not_exist, internal, invalid
from kvsim.cache.health import (
    Prober,
    ProbeResult,
    ProbeSettings,
    StorageHealth,
    StorageStatus,
    excess_bytes,
)
from kvsim.cache.meta import Change, InstanceIndex
from kvsim.cache.metrics import Counter as MetricCounter
from kvsim.cache.metrics import MetricsRegistry, Summary, tags_of
from kvsim.cache.quota import (
    Credit,
    GroupUsage,
    InstanceUsage,
    check_group_quotas,
    group_usage,
    quota_type,
    water_level,
)
from kvsim.cache.reclaim import Candidate, Reclaimer, ReclaimerConfig, Victim, policy_of
from kvsim.cache.registry import Registry
from kvsim.cache.selection import (
    ReadWeights,
    UniformStream,
    choose_serving,
    read_weights,
    select_write_storage,
    write_exclusions,
)
from kvsim.cache.sessions import SessionTable, WriteSession
from kvsim.cache.store.base import CacheStore, KeyRecord, StoredLocation, StoreError
from kvsim.cache.store.memory import MemoryStore
from kvsim.cache.types import (
    EMPTY_LOCATION,
    Account,
    AccountRole,
    BlockMask,
    CacheLocation,
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
    LocationSpec,
    LocationSpecGroup,
    LocationSpecInfo,
    LocationStatus,
    ModelDeployment,
    PollResult,
    QueryType,
    RegisterInstanceRequest,
    RegisterInstanceResult,
    RemoveCacheRequest,
    RemoveCacheResult,
    StartWriteCacheRequest,
    StartWriteCacheResult,
    StorageConfig,
    StorageType,
    TrimCacheRequest,
    TrimCacheResult,
    TrimStrategy,
)
from kvsim.cache.validation import (
    check_instance_group,
    check_mask,
    check_names,
    check_storage_config,
    require_int,
    require_str,
    resolve_keys,
)
from kvsim.core import Clock, PerfTimer, Timer

DEFAULT_MAX_KEYS_PER_REQUEST = 1_000_000
# The reference forces this timeout on a session that has nothing to write.
EMPTY_SESSION_TIMEOUT_S = 10.0
SESSION_ID_LEN = 32
LOCATION_ID_LEN = 8
SNAPSHOT_FORMAT = "kvsim-config-snapshot"
SNAPSHOT_VERSION = 1

_MASK64 = (1 << 64) - 1
_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
_WRITING = LocationStatus.CLS_WRITING
_SERVING = LocationStatus.CLS_SERVING
_DELETING = LocationStatus.CLS_DELETING
_QUERY_TYPES = frozenset(
    {QueryType.QT_PREFIX_MATCH, QueryType.QT_BATCH_GET, QueryType.QT_REVERSE_ROLL_SW_MATCH}
)
_TRIM_STRATEGIES = frozenset(
    {TrimStrategy.TS_REMOVE_ALL_CACHE, TrimStrategy.TS_REMOVE_ALL_META, TrimStrategy.TS_TIMESTAMP}
)
_COMPACT = (",", ":")


def _store_failure(what: str, exc: Exception) -> CacheError:
    return internal(f"{what}: meta store failed: {exc}")


_F = TypeVar("_F", bound=Callable[..., Any])


def _store_guard(fn: _F) -> _F:
    """Report a store failure anywhere in a public operation as INTERNAL_ERROR (it applied nothing:
    every operation writes at most once, last)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            raise _store_failure(fn.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


def _api(api_name: str, per_instance: bool = False) -> Callable[[_F], _F]:
    """Count and time a public operation under the reference's API name (``service.*`` metrics).

    The six per-instance meta APIs (``per_instance``) are also tagged with the instance and its group,
    as the reference does, when the request names a registered instance.
    """

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(self: CacheManager, *args: Any, **kwargs: Any) -> Any:
            timer = self._timer
            start = timer.monotonic()
            try:
                result = fn(self, *args, **kwargs)
            except Exception as exc:
                self._record_call(api_name, per_instance, args, timer.monotonic() - start, exc)
                raise
            self._record_call(api_name, per_instance, args, timer.monotonic() - start, None)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


@dataclasses.dataclass(frozen=True, slots=True)
class _ApiMetrics:
    """The ``service.*`` metrics of one API (and instance): fetched once, then updated per call."""

    calls: MetricCounter
    rt_us: Summary
    errors: MetricCounter
    tags: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class _WritePlan:
    """Registry-derived inputs of write selection for one group (see ``CacheManager._write_plan``)."""

    bytes_per_key: list[tuple[str, int]]
    quotas: list[tuple[StorageType, int]]
    candidates: list[tuple[str, StorageType]]
    any_available: bool


class _RandomText:
    """Random ``[a-z0-9]`` characters from the seeded generator, drawn a block at a time (one numpy
    call per few hundred ids instead of one per id)."""

    def __init__(self, rng: np.random.Generator, block: int = 4096) -> None:
        self._rng = rng
        self._block = block
        self._buf = ""
        self._pos = 0

    def take(self, n: int) -> str:
        if self._pos + n > len(self._buf):
            size = max(self._block, n)
            fresh = _ALPHABET[self._rng.integers(0, 36, size=size)].tobytes().decode("ascii")
            self._buf = self._buf[self._pos :] + fresh
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out


def _multiset(items: Sequence[str]) -> dict[str, int]:
    """How many times each item occurs."""
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _children(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``n`` independent generators derived from ``rng`` without drawing from it (its seed sequence
    spawns them), so adding a consumer does not change the parent's stream."""
    try:
        return rng.spawn(n)
    except (TypeError, ValueError, AttributeError):
        # A generator built without a seed sequence cannot spawn: seed the children from its stream.
        return [np.random.default_rng(s) for s in rng.integers(0, 2**63, size=n).tolist()]


class CacheManager:
    """The KVCM cache manager (see the module docstring).

    Args:
        clock: source of "now" in seconds (``ManualClock`` in tests, ``SimClock`` in simulation).
        rng: the seeded generator for ids, read choices and default salts.
        store: registry and meta store; a fresh :class:`MemoryStore` when None. A store that already
            holds data is recovered: its storages are reopened and WRITING locations (whose sessions
            died with the previous process) are turned into deletions.
        backend_factory: opens a backend for a storage config; :class:`SimulatedBackend` when None.
        max_keys_per_request: requests with more keys are refused (INVALID_ARGUMENT).
        salt_source: ``n -> n random bytes`` for password salts; ``rng.bytes`` when None.
        password_iterations: PBKDF2 rounds for new password hashes.
        timer: measures call latencies for the metrics; :class:`~kvsim.core.PerfTimer` when None.
        events: the event log (reference publisher format); None publishes nothing.
        metrics: where metrics are recorded; a fresh :class:`MetricsRegistry` when None.
        reclaimer: sampling, batching and period of the reclaimer; the reference's defaults when None.
        deletion_retry_s: first back-off of a failed storage delete (doubled per failure, capped at 60 s).
        storage_probe: probe period, hysteresis and water levels of the storages
            (:mod:`kvsim.cache.health`); None probes nothing and uses no storage water levels.
        prober: probes one backend; the backend's own ``probe`` when None.
    """

    def __init__(
        self,
        clock: Clock,
        rng: np.random.Generator,
        *,
        store: CacheStore | None = None,
        backend_factory: BackendFactory | None = None,
        max_keys_per_request: int = DEFAULT_MAX_KEYS_PER_REQUEST,
        salt_source: Callable[[int], bytes] | None = None,
        password_iterations: int = DEFAULT_ITERATIONS,
        timer: Timer | None = None,
        events: ev.EventLog | None = None,
        metrics: MetricsRegistry | None = None,
        reclaimer: ReclaimerConfig | None = None,
        deletion_retry_s: float = RETRY_BASE_S,
        storage_probe: ProbeSettings | None = None,
        prober: Prober | None = None,
    ) -> None:
        if max_keys_per_request <= 0:
            raise ValueError(f"max_keys_per_request: must be > 0, got {max_keys_per_request}")
        if not deletion_retry_s > 0:
            raise ValueError(f"deletion_retry_s: must be > 0, got {deletion_retry_s}")
        self._clock = clock
        self._rng = rng
        self._uniform = UniformStream(rng)
        self._text = _RandomText(rng)
        self._store: CacheStore = store if store is not None else MemoryStore()
        self._backend_factory: BackendFactory = backend_factory or SimulatedBackend
        self._max_keys = max_keys_per_request
        self._hasher = PasswordHasher(salt_source or rng.bytes, password_iterations)
        self._sessions = SessionTable()
        self._indexes: dict[str, InstanceIndex] = {}
        # Locations marked DELETING, waiting (until their due time) for poll() to delete them.
        self._deletions = DeletionQueue()
        self._retry_s = float(deletion_retry_s)
        # Last storage-delete failure per storage (reported, and retried by the queue).
        self.deletion_errors: dict[str, str] = {}
        self._timer: Timer = timer if timer is not None else PerfTimer()
        self._metrics = metrics if metrics is not None else MetricsRegistry()
        self._api_metrics: dict[tuple[str, str, str], _ApiMetrics] = {}
        # storage name -> (its backend, create counters): fetched once per opened backend.
        self._create_metrics: dict[str, tuple[Any, ...]] = {}
        self._events = events
        # Children of the run's generator: reclaiming and event ids never shift the ids drawn above.
        reclaim_rng, event_rng = _children(rng, 2)
        self._event_ids = _RandomText(event_rng)
        self._reclaimer = Reclaimer(reclaimer or ReclaimerConfig(), reclaim_rng)
        self._reclaim_pending = False
        self._m_get_keys = self._metrics.summary(
            "manager.request_key_count", tags_of(api_name="GetCacheLocation")
        )
        self._m_write_keys = self._metrics.summary(
            "manager.request_key_count", tags_of(api_name="StartWriteCache")
        )
        self._m_prefix_len = self._metrics.summary("manager.prefix_match_len")
        self._m_gen_location = self._metrics.summary("manager.gen_write_location_us")
        self._m_expired = self._metrics.counter("cache_manager.write_location_expire_size")
        self._weights_cache: dict[str, ReadWeights] = {}
        self._weights_epoch = (-1, -1)
        self._plans: dict[str, _WritePlan] = {}
        self._plans_epoch = (-1, -1)
        # Bumped whenever the set of open backends or their enabled flags change (cache invalidation).
        self._backend_epoch = 0
        self._placeholders: dict[str, tuple[InstanceInfo, CacheLocation]] = {}
        # Storage status (kvsim.cache.health): probe history per storage name, and the next round.
        self._probe_settings = storage_probe
        self._prober: Prober = prober or self._default_probe
        self._health: dict[str, StorageHealth] = {}
        self._next_probe = float("-inf")
        # Set by a probe round: the next reclaim round also brings storages under their water level.
        self._storage_reclaim_due = False
        try:
            self._registry = Registry(self._store)
        except StoreError as exc:
            raise _store_failure("recovery", exc) from None
        self._backends: dict[str, StorageBackend] = {}
        self.backend_open_errors: dict[str, str] = {}
        for config in self._registry.storages.values():
            try:
                self._backends[config.global_unique_name] = self._backend_factory(config)
            except BackendError as exc:
                # As the reference, a storage that fails to reopen is logged and left unavailable.
                self.backend_open_errors[config.global_unique_name] = str(exc)
        self._recover_writing()
        self._restore_backends(self._backends)

    # =================================================================================== plumbing

    @property
    def clock(self) -> Clock:
        """The injected clock."""
        return self._clock

    @property
    def store(self) -> CacheStore:
        """The registry and meta store."""
        return self._store

    def backend(self, name: str) -> StorageBackend:
        """The open backend of storage ``name`` (for inspection; KeyError when not open)."""
        return self._backends[name]

    def num_open_sessions(self) -> int:
        """Write sessions started and not yet finished or expired."""
        return len(self._sessions)

    def num_pending_deletions(self) -> int:
        """Locations marked DELETING and queued for deletion (due now or after their delay)."""
        return len(self._deletions)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work, or None: the earliest session deadline, queued deletion, or
        (when the last reclaim round found a group over its water level) the next reclaim round. A
        simulator may schedule its next ``poll`` there. With storage probing on, the next probe round
        counts too."""
        times = [self._sessions.next_deadline(), self._deletions.next_due()]
        if self._reclaim_pending:
            times.append(self._reclaimer.next_round)
        if self._probe_settings is not None and self._backends:
            times.append(self._next_probe)
        due = [t for t in times if t is not None]
        return min(due) if due else None

    @property
    def events(self) -> ev.EventLog | None:
        """The event log, if one was given."""
        return self._events

    def metrics(self) -> MetricsRegistry:
        """Refresh the interval gauges (storage health and usage, group usage ratio, per-instance key
        counts and bytes, queue length) and return the metrics registry.

        ``data_storage.healthy_status`` is 1 when the storage can serve: open, enabled and (with
        probing on) healthy by its probes; ``storage_usage_ratio`` is :meth:`storage_usage_ratio`."""
        m = self._metrics
        for name, backend in self._backends.items():
            tags = tags_of(type=backend.config.type_name, unique_name=name)
            m.gauge("data_storage.healthy_status", tags).set(1.0 if self._available(name) else 0.0)
            m.gauge("data_storage.storage_usage_ratio", tags).set(self.storage_usage_ratio(name))
        total_keys = total_bytes = 0
        for group in self._registry.groups.values():
            ids = self._registry.instance_ids_of_group(group.name)
            usage = self._group_usage(group, ids)
            capacity = group.quota.capacity
            ratio = usage.used_bytes / capacity if capacity > 0 else 0.0
            m.gauge("cache_manager_group.usage_ratio", tags_of(instance_group=group.name)).set(ratio)
            for inst in usage.instances:
                tags = tags_of(instance_group=group.name, instance_id=inst.instance_id)
                size = sum(inst.type_bytes.values())
                m.gauge("cache_manager_instance.key_count", tags).set(inst.key_count)
                m.gauge("cache_manager_instance.byte_size", tags).set(size)
                total_keys += inst.key_count
                total_bytes += size
        m.gauge("meta_indexer.total_key_count").set(total_keys)
        m.gauge("meta_indexer.total_cache_usage").set(total_bytes)
        m.gauge("schedule_plan_executor.waiting_task_count").set(len(self._deletions))
        return m

    def _record_call(
        self, api_name: str, per_instance: bool, args: tuple[Any, ...], seconds: float, exc: Exception | None
    ) -> None:
        """Update the ``service.*`` metrics of one call (see :func:`_api`)."""
        instance_id = group_name = ""
        if per_instance and args:
            candidate = getattr(args[0], "instance_id", None)
            info = self._registry.instances.get(candidate) if isinstance(candidate, str) else None
            if info is not None:
                instance_id, group_name = info.instance_id, info.instance_group_name
        key = (api_name, instance_id, group_name)
        handles = self._api_metrics.get(key)
        if handles is None:
            if instance_id:
                tags = tags_of(api_name=api_name, instance_group=group_name, instance_id=instance_id)
            else:
                tags = tags_of(api_name=api_name)
            m = self._metrics
            handles = _ApiMetrics(
                m.counter("service.query_counter", tags),
                m.summary("service.query_rt_us", tags),
                m.counter("service.error_counter", tags),
                tags,
            )
            self._api_metrics[key] = handles
        handles.calls.inc()
        handles.rt_us.observe(seconds * 1e6)
        if exc is not None:
            handles.errors.inc()
            code = exc.code.name if isinstance(exc, CacheError) else ErrorCode.UNKNOWN_ERROR.name
            self._metrics.counter(
                "service.error_code", tuple(sorted((*handles.tags, ("error_code", code))))
            ).inc()

    def _publish(self, kind: str, source: str, component: str, now: float, fields: dict[str, Any]) -> None:
        """Append one event (the caller checked that an event log is set)."""
        assert self._events is not None
        record = ev.base_record(self._event_ids.take(32), source, component, kind, now)
        record.update(fields)
        self._events.publish(record)

    def _index(self, instance_id: str) -> InstanceIndex:
        index = self._indexes.get(instance_id)
        if index is None:
            index = self._indexes[instance_id] = InstanceIndex(self._store, instance_id)
        return index

    def _instance(self, instance_id: object) -> tuple[InstanceInfo, InstanceIndex]:
        """The registered instance, or INSTANCE_NOT_EXIST (also for an empty id, as the reference)."""
        info = self._registry.instances.get(instance_id) if isinstance(instance_id, str) else None
        if info is None:
            raise instance_not_exist(instance_id if isinstance(instance_id, str) else "")
        return info, self._index(info.instance_id)

    def _available(self, name: str) -> bool:
        backend = self._backends.get(name)
        config = self._registry.storages.get(name)
        if backend is None or config is None or not config.is_available or not backend.available():
            return False
        health = self._health.get(name)
        return health is None or health.healthy

    def _weights(self, info: InstanceInfo) -> ReadWeights:
        epoch = (self._registry.epoch, self._backend_epoch)
        if self._weights_epoch != epoch:
            self._weights_cache.clear()
            self._weights_epoch = epoch
        weights = self._weights_cache.get(info.instance_group_name)
        if weights is None:
            group = self._registry.groups.get(info.instance_group_name)
            weights = read_weights(self._registry.storages, self._available, group)
            self._weights_cache[info.instance_group_name] = weights
        return weights

    def _random_ids(self, count: int, length: int) -> list[str]:
        """``count`` random ``[a-z0-9]`` strings of ``length`` characters."""
        text = self._text.take(count * length)
        return [text[i : i + length] for i in range(0, count * length, length)]

    def _placeholder(self, info: InstanceInfo) -> CacheLocation:
        """The "not cached" location: one spec per registered spec, every URI empty."""
        cached = self._placeholders.get(info.instance_id)
        if cached is None or cached[0] is not info:
            specs = tuple(LocationSpec(s.name, "") for s in info.location_spec_infos)
            cached = (info, CacheLocation(StorageType.ST_UNSPECIFIED, len(specs), specs))
            self._placeholders[info.instance_id] = cached
        return cached[1]

    # =================================================================================== instances

    @_api("RegisterInstance")
    @_store_guard
    def register_instance(self, request: RegisterInstanceRequest) -> RegisterInstanceResult:
        """Register an instance (idempotent for an identical registration).

        Validation (INVALID_ARGUMENT): ``instance_group``, ``instance_id``, ``model_deployment`` with
        ``model_name`` and ``dtype``, at least one spec, spec names non-empty and unique, spec sizes
        > 0, ``block_size`` > 0 (kvsim fix: the reference accepts 0), spec groups naming known specs.

        Returns:
            ``storage_configs``: compact JSON array of the group's storages (reference model format).

        Raises:
            CacheError: DUPLICATE_ENTITY if the id is registered with other parameters (the admin
                service reports INTERNAL_ERROR); INTERNAL_ERROR if the group does not exist.
        """
        group_name = require_str("instance_group", request.instance_group)
        instance_id = require_str("instance_id", request.instance_id)
        md = request.model_deployment
        if not isinstance(md, ModelDeployment):
            raise invalid("model_deployment", "is required")
        require_str("model_deployment.model_name", md.model_name)
        require_str("model_deployment.dtype", md.dtype)
        specs = tuple(request.location_spec_infos)
        if not specs:
            raise invalid("location_spec_infos", "needs at least one spec")
        seen: set[str] = set()
        for i, spec in enumerate(specs):
            if not isinstance(spec, LocationSpecInfo):
                raise invalid(f"location_spec_infos[{i}]", "must be a LocationSpecInfo")
            require_str(f"location_spec_infos[{i}].name", spec.name)
            if spec.name in seen:
                raise invalid(f"location_spec_infos[{i}].name", f"duplicate spec name {spec.name!r}")
            seen.add(spec.name)
            require_int(f"location_spec_infos[{i}].size", spec.size, minimum=1)
        block_size = require_int("block_size", request.block_size, minimum=1)
        groups = tuple(request.location_spec_groups)
        group_names: set[str] = set()
        for i, g in enumerate(groups):
            if not isinstance(g, LocationSpecGroup):
                raise invalid(f"location_spec_groups[{i}]", "must be a LocationSpecGroup")
            require_str(f"location_spec_groups[{i}].name", g.name)
            if g.name in group_names:
                raise invalid(f"location_spec_groups[{i}].name", f"duplicate group name {g.name!r}")
            group_names.add(g.name)
            members = check_names(f"location_spec_groups[{i}].spec_names", g.spec_names)
            if not members:
                raise invalid(f"location_spec_groups[{i}].spec_names", "needs at least one spec name")
            for name in members:
                if name not in seen:
                    raise invalid(f"location_spec_groups[{i}].spec_names", f"unknown spec {name!r}")
        candidate = InstanceInfo(
            quota_group_name="",
            instance_group_name=group_name,
            instance_id=instance_id,
            block_size=block_size,
            location_spec_infos=specs,
            model_deployment=md,
            # Stored as the reference reports them: groups by name, spec names sorted.
            location_spec_groups=tuple(
                LocationSpecGroup(g.name, tuple(sorted(g.spec_names)))
                for g in sorted(groups, key=lambda g: g.name)
            ),
        )
        existing = self._registry.instances.get(instance_id)
        if existing is not None:
            if not existing.same_registration(candidate):
                raise CacheError(
                    ErrorCode.DUPLICATE_ENTITY,
                    f"instance_id: {instance_id!r} is already registered with other parameters",
                )
            return RegisterInstanceResult(self._storage_configs_json(existing.instance_group_name))
        group = self._registry.groups.get(group_name)
        if group is None:
            raise internal(f"instance_group: group {group_name!r} does not exist")
        info = dataclasses.replace(candidate, quota_group_name=group.global_quota_group_name)
        try:
            self._registry.put_instance(info)
        except StoreError as exc:
            raise _store_failure("register_instance", exc) from None
        self._index(instance_id)
        return RegisterInstanceResult(self._storage_configs_json(group_name))

    def _storage_configs_json(self, group_name: str) -> str:
        group = self._registry.groups.get(group_name)
        names = group.storage_candidates if group is not None else ()
        configs = [
            self._registry.storages[n].to_model_dict()
            for n in dict.fromkeys(names)
            if n in self._registry.storages
        ]
        return json.dumps(configs, separators=_COMPACT)

    @_api("GetInstanceInfo")
    def get_instance_info(self, request: GetInstanceInfoRequest) -> GetInstanceInfoResult:
        """Look up an instance.

        Raises:
            CacheError: INVALID_ARGUMENT for an empty id; INSTANCE_NOT_EXIST for an unknown one (the
                admin service reports INTERNAL_ERROR).
        """
        instance_id = require_str("instance_id", request.instance_id)
        info = self._registry.instances.get(instance_id)
        if info is None:
            raise instance_not_exist(instance_id)
        return GetInstanceInfoResult(info.instance_group_name, info)

    @_api("ListInstanceInfo")
    def list_instance_info(self, instance_group_name: str = "") -> tuple[InstanceInfo, ...]:
        """Instances of a group sorted by id; an empty name lists every instance (kvsim extension: the
        reference refuses an empty name). An unknown group gives an empty tuple."""
        if not isinstance(instance_group_name, str):
            raise invalid("instance_group_name", "must be a string")
        if instance_group_name:
            ids = self._registry.instance_ids_of_group(instance_group_name)
        else:
            ids = sorted(self._registry.instances)
        return tuple(self._registry.instances[i] for i in ids)

    @_api("RemoveInstance")
    @_store_guard
    def remove_instance(self, instance_id: str, instance_group: str = "") -> TrimCacheResult:
        """Unregister an instance and delete all of its cache (as TrimCache TS_REMOVE_ALL_CACHE).

        Its open write sessions are expired at once. ``instance_group`` may be empty; when given it
        must be the instance's group.

        Raises:
            CacheError: INVALID_ARGUMENT for an empty id; INTERNAL_ERROR for an unknown instance or a
                group mismatch.
        """
        require_str("instance_id", instance_id)
        info = self._registry.instances.get(instance_id)
        if info is None:
            raise internal(f"instance_id: instance {instance_id!r} does not exist")
        if instance_group and instance_group != info.instance_group_name:
            raise internal(
                f"instance_group: instance {instance_id!r} is in group {info.instance_group_name!r}"
            )
        try:
            self._registry.delete_instance(instance_id)
        except StoreError as exc:
            raise _store_failure("remove_instance", exc) from None
        index = self._index(instance_id)
        for session in self._sessions.of_instance(instance_id):
            self._sessions.pop(session.session_id)
        return self._delete_all(index, index.all_keys(), "remove_instance")

    # =================================================================================== reads

    @_api("GetCacheLocation", per_instance=True)
    @_store_guard
    def get_cache_location(self, request: GetCacheLocationRequest) -> GetCacheLocationResult:
        """Find cached blocks; only SERVING locations are ever returned.

        * ``QT_PREFIX_MATCH``: drop the masked keys, then return the locations of the longest run of
          leading keys that are cached (0 .. remaining keys). No placeholders.
        * ``QT_BATCH_GET``: one entry per key, in order (the mask is ignored, as the reference).
        * ``QT_REVERSE_ROLL_SW_MATCH``: one entry per key; only the right-most window of ``sw_size``
          consecutive cached keys is filled (the mask is ignored).

        For the last two, a key that is not cached gets a placeholder: one spec per registered spec
        with an empty URI. ``location_spec_names`` keeps only those specs in every returned location
        (``spec_size`` unchanged). Among several SERVING locations of a key one is drawn by weight from
        the injected RNG. Keys hit count as accesses (for TS_TIMESTAMP trims and the reclaimer).

        Raises:
            CacheError: INSTANCE_NOT_EXIST; INVALID_ARGUMENT for no keys, a missing query type (kvsim
                fix: the reference answers INTERNAL_ERROR), ``sw_size`` outside ``1..len(keys)`` (kvsim
                fix: 0 hangs the reference), a bool mask longer than the keys, unknown spec names.
        """
        info, index = self._instance(request.instance_id)
        qt = request.query_type
        if qt not in _QUERY_TYPES:
            raise invalid(
                "query_type", "is required: QT_PREFIX_MATCH, QT_BATCH_GET or QT_REVERSE_ROLL_SW_MATCH"
            )
        keys = resolve_keys(info, request.block_keys, request.token_ids, self._max_keys)
        n = len(keys)
        mask = request.block_mask
        check_mask("block_mask", mask, n)
        names = self._check_spec_names(info, request.location_spec_names)
        sw = 0
        if qt == QueryType.QT_REVERSE_ROLL_SW_MATCH:
            sw = require_int("sw_size", request.sw_size)
            if not 1 <= sw <= n:
                raise invalid("sw_size", f"must be in [1, {n}] for {n} keys, got {sw}")
        weights = self._weights(info)
        now = self._clock.now()
        uniform = self._uniform
        all_keys = keys
        self._m_get_keys.observe(n)
        locations: list[CacheLocation]
        if qt == QueryType.QT_PREFIX_MATCH:
            if mask is not None:
                if mask.offset is not None:
                    keys = keys[mask.offset :]
                else:
                    keys = [k for i, k in enumerate(keys) if not mask.contains(i)]
            locations = []
            for rec in index.get(keys):
                if rec is None:
                    break
                loc = choose_serving(rec.locations, weights, uniform, _SERVING)
                if loc is None:
                    break
                locations.append(loc.location)
            index.touch(keys[: len(locations)], now)
            self._m_prefix_len.observe(len(locations))
        elif qt == QueryType.QT_BATCH_GET:
            hole = self._placeholder(info)
            locations = []
            hits = []
            for key, rec in zip(keys, index.get(keys), strict=True):
                loc = None if rec is None else choose_serving(rec.locations, weights, uniform, _SERVING)
                if loc is None:
                    locations.append(hole)
                else:
                    locations.append(loc.location)
                    hits.append(key)
            index.touch(hits, now)
        else:
            locations = self._sliding_window(info, index, keys, sw, weights, now)
        if names is not None:
            locations = [
                CacheLocation(
                    loc.type, loc.spec_size, tuple(s for s in loc.location_specs if s.name in names)
                )
                for loc in locations
            ]
        if self._events is not None:
            self._publish(
                ev.GET,
                info.instance_id,
                ev.MANAGER,
                now,
                {
                    "trace_id": request.trace_id,
                    "query_type": ev.QUERY_TYPE_NAMES[QueryType(qt)],
                    "keys": list(all_keys),
                    "tokens": ev.int_list(request.token_ids),
                    "block_mask": ev.mask_json(mask),
                    "sw_size": int(request.sw_size),
                    "location_spec_names": list(request.location_spec_names),
                },
            )
        return GetCacheLocationResult(tuple(locations))

    def _sliding_window(
        self,
        info: InstanceInfo,
        index: InstanceIndex,
        keys: list[int],
        sw: int,
        weights: ReadWeights,
        now: float,
    ) -> list[CacheLocation]:
        """The right-most window of ``sw`` consecutive cached keys; every other entry a placeholder."""
        n = len(keys)
        records = index.get(keys)
        hole = self._placeholder(info)
        out = [hole] * n

        def cached(i: int) -> bool:
            rec = records[i]
            return rec is not None and any(
                loc.status == _SERVING and weights.weight(loc) > 0 for loc in rec.locations
            )

        base = n - sw
        while base >= 0:
            # Scan the window left to right; on the first miss at base+o, every window that ends at or
            # after base+o (and is not yet excluded) contains it, so the next window ends just before it.
            miss = next((o for o in range(sw) if not cached(base + o)), None)
            if miss is None:
                for i in range(base, base + sw):
                    rec = records[i]
                    assert rec is not None
                    loc = choose_serving(rec.locations, weights, self._uniform, _SERVING)
                    assert loc is not None
                    out[i] = loc.location
                index.touch(keys[base : base + sw], now)
                break
            base = base + miss - sw
        return out

    def _check_spec_names(self, info: InstanceInfo, names: Sequence[str]) -> frozenset[str] | None:
        if not len(names):
            return None
        checked = check_names("location_spec_names", names)
        known = {s.name for s in info.location_spec_infos}
        for name in checked:
            if name not in known:
                raise invalid(
                    "location_spec_names", f"unknown spec {name!r} of instance {info.instance_id!r}"
                )
        return frozenset(checked)

    @_api("GetCacheMeta", per_instance=True)
    @_store_guard
    def get_cache_meta(self, request: GetCacheMetaRequest) -> GetCacheMetaResult:
        """Inspect keys: for each unmasked key its first location (any status) and a JSON meta
        ``{"id":"<location id>","status":"CLS_..."}``; a missing key gives an empty location and
        ``{"status":"CLS_NOT_FOUND"}`` (kvsim fix: no stale id carried over). Masked keys are dropped.
        """
        info, index = self._instance(request.instance_id)
        keys = resolve_keys(info, request.block_keys, request.token_ids, self._max_keys)
        mask = request.block_mask
        check_mask("block_mask", mask, len(keys))
        if mask is not None:
            keys = [k for i, k in enumerate(keys) if not mask.contains(i)]
        locations: list[CacheLocation] = []
        metas: list[str] = []
        for rec in index.get(keys):
            if rec is None or not rec.locations:
                locations.append(EMPTY_LOCATION)
                metas.append(json.dumps({"status": LocationStatus.CLS_NOT_FOUND.name}, separators=_COMPACT))
            else:
                first = rec.locations[0]
                locations.append(first.location)
                meta = {"id": first.location_id, "status": first.status.name}
                metas.append(json.dumps(meta, sort_keys=True, separators=_COMPACT))
        return GetCacheMetaResult(tuple(locations), tuple(metas))

    # =================================================================================== writes

    @_api("StartWriteCache", per_instance=True)
    @_store_guard
    def start_write_cache(self, request: StartWriteCacheRequest) -> StartWriteCacheResult:
        """Phase 1 of a write: allocate WRITING locations for the keys that are not cached.

        A key counts as cached if it has a selectable location in any state (WRITING, SERVING or
        DELETING). ``block_mask`` in the result marks the cached keys: an offset when the uncached
        keys are a suffix (all new -> 0, all cached -> ``len(keys)``), else a bool per key. The
        ``locations`` are for the uncached keys, in order; with ``location_spec_group_names`` block ``i``
        gets only the specs of group ``i``. The session's deadline is now + ``write_timeout_seconds``
        (10 s when there is nothing to write); it can be finished up to its deadline, and the first
        :meth:`poll` after it deletes its blocks (a 0 s timeout dies as soon as time moves).

        Raises:
            CacheError: INSTANCE_NOT_EXIST; INVALID_ARGUMENT for no keys, too many keys, a negative
                timeout, a spec-group list whose length differs from the key count (kvsim fix: counted
                after deriving keys from tokens) or naming an unknown group; INTERNAL_ERROR when no
                storage can take the blocks (quotas, availability, capacity), the instance's
                ``max_key_count`` would be exceeded, or the store fails. On any failure everything
                allocated in the call is released (kvsim fix).
        """
        info, index = self._instance(request.instance_id)
        keys = resolve_keys(info, request.block_keys, request.token_ids, self._max_keys)
        n = len(keys)
        group_names = request.location_spec_group_names
        spec_count = len(info.location_spec_infos)
        block_specs: list[tuple[int, ...]] | None = None
        if len(group_names):
            names = check_names("location_spec_group_names", group_names)
            if len(names) != n:
                raise invalid("location_spec_group_names", f"has {len(names)} names for {n} keys")
            spec_pos = {s.name: i for i, s in enumerate(info.location_spec_infos)}
            members = {
                g.name: tuple(sorted(spec_pos[s] for s in g.spec_names)) for g in info.location_spec_groups
            }
            block_specs = []
            for name in names:
                if name not in members:
                    raise invalid("location_spec_group_names", f"unknown spec group {name!r}")
                block_specs.append(members[name])
        timeout = require_int("write_timeout_seconds", request.write_timeout_seconds, minimum=0)
        weights = self._weights(info)
        now = self._clock.now()
        records = index.get(keys)
        exists = [
            rec is not None
            and any(
                loc.status != LocationStatus.CLS_NOT_FOUND and weights.weight(loc) > 0
                for loc in rec.locations
            )
            for rec in records
        ]
        first_new = next((i for i, e in enumerate(exists) if not e), n)
        if not any(exists[first_new:]):
            mask = BlockMask(offset=first_new)
            new_pos = list(range(first_new, n))
        else:
            mask = BlockMask(bool_masks=tuple(exists))
            new_pos = [i for i, e in enumerate(exists) if not e]
        self._m_write_keys.observe(n)
        session_id = self._new_session_id()
        if not new_pos:
            self._sessions.add(
                WriteSession(session_id, info.instance_id, (), (), now + EMPTY_SESSION_TIMEOUT_S)
            )
            self._publish_start(request, info, keys, session_id, mask, timeout, now)
            return StartWriteCacheResult(session_id, mask, ())

        new_keys = [keys[i] for i in new_pos]
        # Keys created by this call (a key repeated in the request is created once).
        creates = len({k for k, i in zip(new_keys, new_pos, strict=True) if records[i] is None})
        group = self._registry.groups.get(info.instance_group_name)
        if group is None or group.cache_config is None:
            raise CacheError(
                ErrorCode.INSTANCE_NOT_EXIST, f"instance group {info.instance_group_name!r} does not exist"
            )
        max_keys = group.cache_config.meta_indexer_config.max_key_count
        if index.key_count + creates > max_keys:
            raise internal(
                f"instance {info.instance_id!r}: {index.key_count} keys + {creates} new "
                f"exceed max_key_count {max_keys}"
            )
        backend = self._select_write_backend(group)
        per_block = [block_specs[i] for i in new_pos] if block_specs is not None else None
        started = self._timer.monotonic()
        spec_lists, allocated = self._allocate(info, backend, new_keys, per_block, spec_count)
        self._m_gen_location.observe((self._timer.monotonic() - started) * 1e6)

        sizes = [s.size for s in info.location_spec_infos]
        full_size = sum(sizes)
        loc_ids = self._random_ids(len(new_keys), LOCATION_ID_LEN)
        changes: dict[int, Change] = {}
        locations: list[CacheLocation]
        storage_type = backend.type
        storage_name = backend.name
        if per_block is None and creates == len(new_keys):
            # The common case: distinct keys, none stored yet, every spec in every block.
            locations = [CacheLocation(storage_type, spec_count, specs) for specs in spec_lists]
            changes = {
                key: (
                    None,
                    KeyRecord((StoredLocation(lid, _WRITING, loc, storage_name, full_size),), now, now, 0),
                )
                for key, lid, loc in zip(new_keys, loc_ids, locations, strict=True)
            }
            added = full_size * len(new_keys)
        else:
            locations = []
            added = 0
            for j, key in enumerate(new_keys):
                prev = changes.get(key)
                old = prev[1] if prev is not None else records[new_pos[j]]
                if old is not None:
                    taken = {loc.location_id for loc in old.locations}
                    while loc_ids[j] in taken:  # astronomically rare; keep ids unique within a key
                        loc_ids[j] = self._random_ids(1, LOCATION_ID_LEN)[0]
                specs = spec_lists[j]
                location = CacheLocation(storage_type, len(specs), specs)
                locations.append(location)
                size = full_size if per_block is None else sum(sizes[s] for s in per_block[j])
                added += size
                stored = StoredLocation(loc_ids[j], _WRITING, location, storage_name, size)
                if old is None:
                    new = KeyRecord((stored,), now, now, 0)
                else:
                    new = KeyRecord((*old.locations, stored), old.created, now, old.access_count)
                changes[key] = (prev[0] if prev is not None else old, new)
        try:
            index.commit(changes, {storage_type: added})
        except StoreError as exc:
            for uris in allocated:
                backend.delete(uris)
            raise _store_failure("start_write_cache", exc) from None
        self._sessions.add(
            WriteSession(session_id, info.instance_id, tuple(new_keys), tuple(loc_ids), now + timeout)
        )
        self._publish_start(request, info, keys, session_id, mask, timeout, now)
        return StartWriteCacheResult(session_id, mask, tuple(locations))

    def _publish_start(
        self,
        request: StartWriteCacheRequest,
        info: InstanceInfo,
        keys: list[int],
        session_id: str,
        mask: BlockMask,
        timeout: int,
        now: float,
    ) -> None:
        """The StartWriteCache event (its ``block_mask`` is the response's: keys already cached)."""
        if self._events is None:
            return
        self._publish(
            ev.START,
            info.instance_id,
            ev.MANAGER,
            now,
            {
                "trace_id": request.trace_id,
                "write_session_id": session_id,
                "keys": list(keys),
                "tokens": ev.int_list(request.token_ids),
                "block_mask": ev.mask_json(mask),
                "location_spec_group_names": list(request.location_spec_group_names),
                "write_timeout_seconds": timeout,
            },
        )

    def _new_session_id(self) -> str:
        while True:
            sid = self._random_ids(1, SESSION_ID_LEN)[0]
            if sid not in self._sessions:
                return sid

    def _write_plan(self, group: InstanceGroup) -> _WritePlan:
        """What write selection needs from the registry, cached until a storage, group or instance
        changes (the usage figures it is combined with are read per call)."""
        epoch = (self._registry.epoch, self._backend_epoch)
        if self._plans_epoch != epoch:
            self._plans.clear()
            self._plans_epoch = epoch
        plan = self._plans.get(group.name)
        if plan is None:
            ids = self._registry.instance_ids_of_group(group.name)
            bytes_per_key = [
                (i, sum(s.size for s in self._registry.instances[i].location_spec_infos)) for i in ids
            ]
            quotas = [
                (quota_type(qc.storage_type), qc.capacity)
                for qc in group.quota.quota_config
                if quota_type(qc.storage_type) != StorageType.ST_UNSPECIFIED
            ]
            candidates = [
                (name, self._registry.storages[name].type)
                for name in dict.fromkeys(group.storage_candidates)
                if self._available(name)
            ]
            any_available = any(self._available(name) for name in self._registry.storages)
            plan = self._plans[group.name] = _WritePlan(bytes_per_key, quotas, candidates, any_available)
        return plan

    def _select_write_backend(self, group: InstanceGroup) -> StorageBackend:
        """Apply the group quota, the per-type quotas and the preference strategy (see selection.py)."""
        plan = self._write_plan(group)
        if not plan.any_available:
            raise internal("no storage is available")
        used = 0
        usage: dict[StorageType, int] = {}
        for instance_id, bytes_per_key in plan.bytes_per_key:
            idx = self._index(instance_id)
            used += idx.key_count * bytes_per_key
            for t, b in idx.usage_bytes.items():
                qt = quota_type(t)
                usage[qt] = usage.get(qt, 0) + b
        excluded = write_exclusions(group, plan.quotas, used, usage)
        candidates = plan.candidates
        if self._probe_settings is not None:
            candidates = [c for c in candidates if not self._at_high_water(c[0])]
            if plan.candidates and not candidates:
                names = ", ".join(repr(n) for n, _ in plan.candidates)
                raise internal(
                    f"instance group {group.name!r}: every available storage ({names}) is at its "
                    f"high-water mark {self._probe_settings.high_water:g}"
                )
        return self._backends[select_write_storage(group, candidates, excluded)]

    def _group_usage(self, group: InstanceGroup, instance_ids: Sequence[str]) -> GroupUsage:
        """The group's usage against its quotas, from the in-memory index counters (no store I/O)."""
        plan = self._write_plan(group)
        per_key = dict(plan.bytes_per_key)
        cc = group.cache_config
        max_keys = cc.meta_indexer_config.max_key_count if cc is not None else 0
        instances = []
        for instance_id in instance_ids:
            index = self._index(instance_id)
            instances.append(
                InstanceUsage(
                    instance_id,
                    index.key_count,
                    per_key.get(instance_id, 0),
                    max_keys,
                    dict(index.usage_bytes),
                )
            )
        return group_usage(instances)

    def _allocate(
        self,
        info: InstanceInfo,
        backend: StorageBackend,
        keys: list[int],
        per_block: list[tuple[int, ...]] | None,
        spec_count: int,
    ) -> tuple[list[tuple[LocationSpec, ...]], list[list[str]]]:
        """Create storage for every (block, spec); all or nothing.

        When every spec has the same size, one ``create`` covers all of them (spec-major order, so one
        file can hold several specs' blocks); otherwise one ``create`` per spec with its own size.

        Returns:
            Per block its LocationSpecs (registration order) and the URI lists of each create call.
        """
        specs = info.location_spec_infos
        inst = info.instance_id
        n = len(keys)
        # Storage object names "<instance>/<spec>/<hex of uint64 key>" (see keys.storage_key).
        hexes = [f"{k & _MASK64:x}" for k in keys]
        out: list[list[LocationSpec]] = [[] for _ in keys]
        allocated: list[list[str]] = []
        if len({s.size for s in specs}) == 1:
            calls = [(list(range(spec_count)), specs[0].size)]
        else:
            calls = [([s], specs[s].size) for s in range(spec_count)]
        try:
            if per_block is None and len(calls) == 1:
                # Every spec in every block, one create call (spec-major): block j's spec s is uris[s*n+j].
                names = [f"{inst}/{spec.name}/{h}" for spec in specs for h in hexes]
                uris = self._create(backend, names, calls[0][1])
                allocated.append(uris)
                if len(uris) != len(names):
                    raise BackendError(f"returned {len(uris)} URIs for {len(names)} blocks")
                if spec_count == 1:
                    name = specs[0].name
                    return [(LocationSpec(name, uri),) for uri in uris], allocated
                return [
                    tuple(LocationSpec(spec.name, uris[s * n + j]) for s, spec in enumerate(specs))
                    for j in range(n)
                ], allocated
            for spec_ids, size in calls:
                if per_block is None:
                    pairs = [(j, s) for s in spec_ids for j in range(n)]
                else:
                    pairs = [(j, s) for s in spec_ids for j in range(n) if s in per_block[j]]
                if not pairs:
                    continue
                names = [f"{inst}/{specs[s].name}/{hexes[j]}" for j, s in pairs]
                uris = self._create(backend, names, size)
                allocated.append(uris)
                if len(uris) != len(pairs):
                    raise BackendError(f"returned {len(uris)} URIs for {len(pairs)} blocks")
                for (j, s), uri in zip(pairs, uris, strict=True):
                    out[j].append(LocationSpec(specs[s].name, uri))
        except BackendError as exc:
            for uris in allocated:
                backend.delete(uris)
            raise internal(f"storage {backend.name!r}: allocation failed: {exc}") from None
        return [tuple(x) for x in out], allocated

    def _create(self, backend: StorageBackend, names: list[str], size: int) -> list[str]:
        """``backend.create`` with the ``data_storage.create_*`` metrics."""
        handles = self._create_metrics.get(backend.name)
        if handles is None or handles[0] is not backend:
            m = self._metrics
            tags = tags_of(type=backend.config.type_name, unique_name=backend.name)
            handles = self._create_metrics[backend.name] = (
                backend,
                m.counter("data_storage.create_counter", tags),
                m.counter("data_storage.create_keys_counter", tags),
                m.summary("data_storage.create_time_us", tags),
                m.counter("data_storage.create_error_counter", tags),
            )
        _, calls, keys, time_us, errors = handles
        timer = self._timer
        started = timer.monotonic()
        try:
            uris = backend.create(names, size)
        except BackendError:
            errors.inc()
            raise
        finally:
            time_us.observe((timer.monotonic() - started) * 1e6)
        calls.inc()
        keys.inc(len(names))
        return uris

    @_api("FinishWriteCache", per_instance=True)
    @_store_guard
    def finish_write_cache(self, request: FinishWriteCacheRequest) -> FinishWriteCacheResult:
        """Phase 2 of a write: ``success_blocks`` (over the locations StartWriteCache returned) says
        which blocks were written. Written blocks become SERVING; the others are marked DELETING and
        deleted at the next :meth:`poll`. A block reported written whose location is already DELETING
        (removed meanwhile) stays DELETING and counts as failed (kvsim fix: the reference resurrects it).

        Raises:
            CacheError: INSTANCE_NOT_EXIST; INVALID_ARGUMENT for a missing session id or mask, or a mask
                that does not fit the session (an offset past it, or a bool list of another length) -
                the session is then left open (kvsim fix: the reference consumes it and leaks its
                blocks); INTERNAL_ERROR for an unknown, finished or expired session.
        """
        info, index = self._instance(request.instance_id)
        session_id = require_str("write_session_id", request.write_session_id)
        mask = request.success_blocks
        if mask is None:
            raise invalid("success_blocks", "is required")
        session = self._sessions.get(session_id)
        now = self._clock.now()
        if session is None or session.instance_id != info.instance_id or now > session.deadline:
            # An overdue session is left for poll() to expire, so this failed call changes nothing.
            raise internal(
                f"write_session_id: session {session_id!r} does not exist (unknown, finished or expired)"
            )
        check_mask("success_blocks", mask, len(session.keys), exact=True)
        changes, doomed, serving, failed = self._settle(index, session, mask, now)
        try:
            index.commit(changes, {})  # status changes only: usage unchanged
        except StoreError as exc:
            raise _store_failure("finish_write_cache", exc) from None
        self._sessions.pop(session_id)
        self._submit_deletion(info.instance_id, doomed, now)
        if self._events is not None:
            self._publish(
                ev.FINISH,
                info.instance_id,
                ev.MANAGER,
                now,
                {
                    "trace_id": request.trace_id,
                    "write_session_id": session_id,
                    "success_block": ev.mask_json(mask),
                },
            )
        return FinishWriteCacheResult(serving, failed)

    def _settle(
        self,
        index: InstanceIndex,
        session: WriteSession,
        mask: BlockMask,
        now: float,
    ) -> tuple[dict[int, Change], dict[int, list[str]], int, int]:
        """Work out a session's outcome: WRITING -> SERVING where the mask says written, else DELETING."""
        keys = list(dict.fromkeys(session.keys))
        records = index.get(keys)
        offset = mask.offset
        n = len(session.keys)
        every = (
            offset == n
            if offset is not None
            else len(mask.bool_masks or ()) == n and all(mask.bool_masks or ())
        )
        if every and len(keys) == n:
            fast = self._settle_all_written(session, records, now)
            if fast is not None:
                return fast, {}, n, 0
        original: dict[int, KeyRecord | None] = dict(zip(keys, records, strict=True))
        current = dict(original)
        doomed: dict[int, list[str]] = {}
        serving = failed = 0
        bools = mask.bool_masks or ()
        n_bools = len(bools)
        for j, (key, loc_id) in enumerate(zip(session.keys, session.location_ids, strict=True)):
            written = j < offset if offset is not None else (j < n_bools and bools[j])
            rec = current[key]
            if rec is None:
                failed += 1  # removed meanwhile
                continue
            locs = rec.locations
            pos = -1
            for p, candidate in enumerate(locs):
                if candidate.location_id == loc_id:
                    pos = p
                    break
            if pos < 0 or locs[pos].status != _WRITING:
                failed += 1  # gone, or already being deleted
                continue
            loc = locs[pos]
            if written:
                serving += 1
                new_loc = StoredLocation(loc_id, _SERVING, loc.location, loc.storage_name, loc.size_bytes)
                last = now
            else:
                failed += 1
                new_loc = StoredLocation(loc_id, _DELETING, loc.location, loc.storage_name, loc.size_bytes)
                last = rec.last_access
                doomed.setdefault(key, []).append(loc_id)
            new_locs = (new_loc,) if len(locs) == 1 else (*locs[:pos], new_loc, *locs[pos + 1 :])
            current[key] = KeyRecord(new_locs, rec.created, last, rec.access_count)
        changes = {k: (original[k], current[k]) for k in keys if current[k] is not original[k]}
        return changes, doomed, serving, failed

    @staticmethod
    def _settle_all_written(
        session: WriteSession, records: list[KeyRecord | None], now: float
    ) -> dict[int, Change] | None:
        """The common outcome (distinct keys, every block written, each key holding only its new
        WRITING location) in one pass; None when any record differs, for the general path."""
        firsts: list[StoredLocation] = []
        stored: list[KeyRecord] = []
        for rec, loc_id in zip(records, session.location_ids, strict=True):
            if rec is None or len(rec.locations) != 1:
                return None
            loc = rec.locations[0]
            if loc.location_id != loc_id or loc.status != _WRITING:
                return None
            firsts.append(loc)
            stored.append(rec)
        serving = [
            StoredLocation(loc.location_id, _SERVING, loc.location, loc.storage_name, loc.size_bytes)
            for loc in firsts
        ]
        return {
            key: (rec, KeyRecord((loc,), rec.created, now, rec.access_count))
            for key, rec, loc in zip(session.keys, stored, serving, strict=True)
        }

    # =================================================================================== removal

    @_api("RemoveCache", per_instance=True)
    @_store_guard
    def remove_cache(self, request: RemoveCacheRequest) -> RemoveCacheResult:
        """Delete keys: every location of them (any status) becomes DELETING at once and is deleted at
        the next :meth:`poll`. Unknown keys are fine. ``block_mask`` is ignored, as the reference."""
        info, index = self._instance(request.instance_id)
        keys = resolve_keys(info, request.block_keys, request.token_ids, self._max_keys)
        check_mask("block_mask", request.block_mask, len(keys))
        result = self._delete_all(index, list(dict.fromkeys(keys)), "remove_cache")
        return RemoveCacheResult(result.num_keys, result.num_locations)

    @_api("TrimCache", per_instance=True)
    @_store_guard
    def trim_cache(self, request: TrimCacheRequest) -> TrimCacheResult:
        """Remove an instance's cache by strategy.

        * ``TS_REMOVE_ALL_CACHE``: every key, as :meth:`remove_cache`.
        * ``TS_REMOVE_ALL_META`` (kvsim extension): drop the instance's index entries at once without
          deleting storage (open sessions then finish with every block failed).
        * ``TS_TIMESTAMP`` (kvsim extension): keys whose last access (read hit or write) lies in
          ``[begin_timestamp, end_timestamp)`` seconds of the manager's clock, as :meth:`remove_cache`.

        Raises:
            CacheError: INSTANCE_NOT_EXIST; INVALID_ARGUMENT for TS_UNSPECIFIED or ``begin > end``.
        """
        _, index = self._instance(request.instance_id)
        strategy = request.strategy
        if strategy not in _TRIM_STRATEGIES:
            raise invalid("strategy", "is required: TS_REMOVE_ALL_CACHE, TS_REMOVE_ALL_META or TS_TIMESTAMP")
        if strategy == TrimStrategy.TS_REMOVE_ALL_CACHE:
            return self._delete_all(index, index.all_keys(), "trim_cache")
        if strategy == TrimStrategy.TS_REMOVE_ALL_META:
            count = index.key_count
            locations = 0
            for keys in index.scan():
                locations += sum(len(r.locations) for r in index.get(keys) if r is not None)
            try:
                index.drop()
            except StoreError as exc:
                raise _store_failure("trim_cache", exc) from None
            self._deletions.drop_instance(index.instance_id)
            return TrimCacheResult(count, locations)
        begin = require_int("begin_timestamp", request.begin_timestamp)
        end = require_int("end_timestamp", request.end_timestamp)
        if begin > end:
            raise invalid("begin_timestamp", f"{begin} is after end_timestamp {end}")
        chosen: list[int] = []
        for keys in index.scan():
            for key, rec in zip(keys, index.get(keys), strict=True):
                if rec is not None and begin <= index.last_access(key, rec) < end:
                    chosen.append(key)
        return self._delete_all(index, chosen, "trim_cache")

    def _delete_all(self, index: InstanceIndex, keys: list[int], what: str) -> TrimCacheResult:
        """Mark every location of ``keys`` DELETING (one commit) and queue their deletion."""
        changes: dict[int, Change] = {}
        doomed: dict[int, list[str]] = {}
        num_keys = 0
        for key, rec in zip(keys, index.get(keys), strict=True):
            if rec is None:
                continue
            num_keys += 1
            ids = [loc.location_id for loc in rec.locations if loc.status != _DELETING]
            if ids:
                locs = tuple(
                    loc if loc.status == _DELETING else loc.with_status(_DELETING) for loc in rec.locations
                )
                changes[key] = (rec, KeyRecord(locs, rec.created, rec.last_access, rec.access_count))
                doomed[key] = ids
        try:
            index.commit(changes, {})
        except StoreError as exc:
            raise _store_failure(what, exc) from None
        self._submit_deletion(index.instance_id, doomed)
        return TrimCacheResult(num_keys, sum(len(v) for v in doomed.values()))

    def _submit_deletion(
        self, instance_id: str, doomed: dict[int, list[str]], due: float | None = None
    ) -> None:
        """Queue locations already marked DELETING, due at ``due`` (now when None: API deletions and
        failed writes have no delay, as the reference)."""
        if doomed:
            self._deletions.submit(instance_id, doomed, self._clock.now() if due is None else due)

    # =================================================================================== time

    def poll(self, now: float | None = None) -> PollResult:
        """Act on everything due by ``now`` (the clock's time when None), in this order:

        1. expire write sessions whose deadline is before ``now`` (all their blocks failed);
        1b. with storage probing on, probe every storage when a probe period has passed and update
           its health (:mod:`kvsim.cache.health`);
        2. run a reclaim round (at most one per ``ReclaimerConfig.interval_s``): groups over their water
           level, or with a TTL policy, get victims marked DELETING and queued after
           ``delay_before_delete_ms``;
        3. delete every queued location that is due: storage released by its backend first, then the
           index entry (a key left without locations is removed); a failed storage delete keeps the
           location DELETING and queued with a back-off;
        4. merge buffered access statistics into the store and flush the event log.
        """
        if now is None:
            now = self._clock.now()
        expired = sum(self._expire(session, now) for session in self._sessions.pop_due(now))
        if expired:
            self._m_expired.inc(expired)
        health_changes = self._probe_storages(now)
        reclaimed = self._reclaim(now)
        deleted_locations, deleted_keys, failed = self._run_deletions(now)
        for index in self._indexes.values():
            # On a store failure the statistics stay buffered and are retried at the next poll.
            with contextlib.suppress(StoreError):
                index.flush_access()
        if self._events is not None:
            try:
                self._events.flush()
            except OSError:
                # The records stay buffered for the next poll; the failure is counted, not raised.
                self._metrics.counter("event_publisher.flush_error_count").inc()
        return PollResult(expired, deleted_locations, deleted_keys, reclaimed, failed, health_changes)

    def _expire(self, session: WriteSession, now: float) -> bool:
        """Fail every block of an overdue session; False (session kept for the next poll) if the store
        fails."""
        index = self._index(session.instance_id)
        try:
            changes, doomed, _, _ = self._settle(index, session, BlockMask(offset=0), now)
            index.commit(changes, {})
        except StoreError:
            self._sessions.add(session)  # nothing of it was applied
            return False
        self._submit_deletion(session.instance_id, doomed, now)
        return True

    # ----------------------------------------------------------------------------------- deletion

    def _run_deletions(self, now: float) -> tuple[int, int, int]:
        """Delete every queued location due by ``now``; return (locations, keys deleted, failures).

        Storage first, then the index: a location leaves the index only once its blocks are released,
        so after a crash it is still DELETING and is queued again by recovery (never leaked). URIs a
        backend released are remembered on the queue entry, so neither a failed commit nor a partial
        backend failure releases a block twice.
        """
        due = self._deletions.pop_due(now)
        total_locations = total_keys = failures = 0
        for instance_id, entries in due.items():
            removed, keys_gone, failed = self._delete_due(instance_id, entries, now)
            total_locations += removed
            total_keys += keys_gone
            failures += failed
        return total_locations, total_keys, failures

    def _delete_due(self, instance_id: str, entries: dict[int, Pending], now: float) -> tuple[int, int, int]:
        """Delete one instance's due entries (see :meth:`_run_deletions`); requeue what must wait."""
        index = self._index(instance_id)
        keys = list(entries)
        retry_at = now + self._retry_s
        try:
            records = index.get(keys)
        except StoreError:
            for key, entry in entries.items():
                entry.due = retry_at
                self._deletions.requeue(instance_id, key, entry)
            return 0, 0, 0
        # 1. Release storage, batched per storage (the URI host).
        targets: dict[int, list[StoredLocation]] = {}
        work: dict[str, list[tuple[int, str, str]]] = {}
        for key, rec in zip(keys, records, strict=True):
            entry = entries[key]
            if rec is None:
                continue  # removed meanwhile (e.g. TS_REMOVE_ALL_META)
            locs = [
                loc
                for loc in rec.locations
                if loc.location_id in entry.location_ids and loc.status == _DELETING
            ]
            if not locs:
                continue
            targets[key] = locs
            for loc in locs:
                released = entry.released.get(loc.location_id, ())
                for spec in loc.location.location_specs:
                    if spec.uri and spec.uri not in released:
                        work.setdefault(loc.storage_name, []).append((key, loc.location_id, spec.uri))
        failed: set[tuple[int, str]] = set()
        for name, items in work.items():
            still = self._release(name, [uri for _, _, uri in items])
            for key, loc_id, uri in items:
                if still.get(uri, 0) > 0:
                    still[uri] -= 1
                    failed.add((key, loc_id))
                else:
                    entries[key].released.setdefault(loc_id, set()).add(uri)
        # 2. Drop the released locations from the index (one commit).
        changes: dict[int, Change] = {}
        freed: dict[StorageType, int] = {}
        removed_locations = removed_keys = 0
        reclaimed_locations = reclaimed_keys = 0
        retry: dict[int, set[str]] = {}
        by_key = dict(zip(keys, records, strict=True))
        for key, locs in targets.items():
            rec = by_key[key]
            assert rec is not None  # targets only holds keys with a record
            entry = entries[key]
            done = {loc.location_id for loc in locs if (key, loc.location_id) not in failed}
            bad = {loc.location_id for loc in locs if (key, loc.location_id) in failed}
            if bad:
                retry[key] = bad
            if not done:
                continue
            keep = tuple(loc for loc in rec.locations if loc.location_id not in done)
            for loc in rec.locations:
                if loc.location_id in done:
                    t = loc.location.type
                    freed[t] = freed.get(t, 0) - loc.size_bytes
            new = KeyRecord(keep, rec.created, rec.last_access, rec.access_count) if keep else None
            changes[key] = (rec, new)
            removed_locations += len(done)
            removed_keys += new is None
            from_reclaim = len(done & entry.reclaimed)
            reclaimed_locations += from_reclaim
            reclaimed_keys += from_reclaim > 0 and new is None
        try:
            index.commit(changes, freed)
        except StoreError:
            # Storage is released (remembered on the entries); only the index change is retried.
            for key, entry in entries.items():
                entry.due = retry_at
                self._deletions.requeue(instance_id, key, entry)
            return 0, 0, 0
        for key, bad in retry.items():
            entry = entries[key]
            entry.attempts += 1
            entry.due = now + retry_delay(entry.attempts, self._retry_s)
            entry.location_ids = bad
            entry.released = {loc_id: uris for loc_id, uris in entry.released.items() if loc_id in bad}
            entry.reclaimed &= bad
            self._deletions.requeue(instance_id, key, entry)
        failures = sum(len(bad) for bad in retry.values())
        m = self._metrics
        if failures:
            m.counter("schedule_plan_executor.delete_retry_count").inc(failures)
        if removed_locations:
            m.counter("schedule_plan_executor.location_del_count").inc(removed_locations)
            m.counter("schedule_plan_executor.block_del_count").inc(removed_keys)
        if reclaimed_locations:
            info = self._registry.instances.get(instance_id)
            tags = tags_of(instance_group=info.instance_group_name if info is not None else "")
            m.counter("cache_reclaimer.location_del_count", tags).inc(reclaimed_locations)
            m.counter("cache_reclaimer.block_del_count", tags).inc(reclaimed_keys)
        return removed_locations, removed_keys, failures

    def _release(self, name: str, uris: list[str]) -> dict[str, int]:
        """Release ``uris`` on storage ``name``; return the URIs *not* released (with multiplicity).

        A storage that was removed has no backend to ask: its blocks cannot be released by kvsim any
        more, so they count as released and are reported in ``data_storage.delete_orphan_counter``. A
        registered storage whose backend is not open fails the whole batch (retried later).
        """
        m = self._metrics
        backend = self._backends.get(name)
        config = self._registry.storages.get(name)
        type_name = backend.config.type_name if backend is not None else (config.type_name if config else "")
        tags = tags_of(type=type_name, unique_name=name)
        if backend is None:
            if config is None:
                m.counter("data_storage.delete_orphan_counter", tags).inc(len(uris))
                return {}
            why = self.backend_open_errors.get(name, "the backend is not open")
            self.deletion_errors[name] = f"storage {name!r}: {why}"
            m.counter("data_storage.delete_error_counter", tags).inc(len(uris))
            return _multiset(uris)
        started = self._timer.monotonic()
        failed: dict[str, int] = {}
        try:
            backend.delete(uris)
        except BackendError as exc:
            failed = _multiset(exc.failed if exc.failed is not None else uris)
            self.deletion_errors[name] = str(exc)
            m.counter("data_storage.delete_error_counter", tags).inc(sum(failed.values()))
        m.summary("data_storage.delete_time_us", tags).observe((self._timer.monotonic() - started) * 1e6)
        m.counter("data_storage.delete_counter", tags).inc()
        m.counter("data_storage.delete_keys_counter", tags).inc(len(uris) - sum(failed.values()))
        return failed

    # ----------------------------------------------------------------------------------- reclaim

    def _reclaim(self, now: float) -> int:
        """One reclaim round when due: every group over its water level (or with a TTL policy) gets
        victims marked DELETING and queued; return the locations submitted."""
        if not self._reclaimer.due(now):
            return 0
        pending = False
        submitted = 0
        m = self._metrics
        storage_need = self._storage_needs() if self._storage_reclaim_due else {}
        self._storage_reclaim_due = False
        for name in sorted(self._registry.groups):
            group = self._registry.groups[name]
            ids = self._registry.instance_ids_of_group(name)
            if group.cache_config is None or not ids:
                continue
            try:
                usage = self._group_usage(group, ids)
                level = water_level(group, usage)
                if level.triggered:
                    level = water_level(group, usage, self._deletion_credit(usage))
                over = {
                    n: storage_need[n]
                    for n in dict.fromkeys(group.storage_candidates)
                    if storage_need.get(n, 0) > 0
                }
                if over:
                    level = dataclasses.replace(level, triggered=True, free_storage_bytes=over)
                    m.counter("cache_reclaimer.storage_trigger_count", tags_of(instance_group=name)).inc()
                _, ttl = policy_of(group)
                if not level.triggered and ttl <= 0:
                    continue
                tags = tags_of(instance_group=name)
                m.counter("cache_reclaimer.round_count", tags).inc()
                if level.triggered:
                    m.counter("cache_reclaimer.trigger_count", tags).inc()
                choice = self._reclaimer.plan(group, usage, level, self._sample, now)
                if choice.victims:
                    submitted += self._submit_reclaim(group, choice.victims, now)
                    for storage, freed in choice.storage_bytes.items():
                        if storage in storage_need:
                            storage_need[storage] -= freed
                # Another round is wanted while the group stays over its level, or while TTL keys exist.
                # A storage over its level waits for its next probe instead (fresh figures).
                group_short = not choice.covered and (
                    level.free_keys > 0 or level.free_bytes > 0 or bool(level.over_types)
                )
                pending = pending or group_short or (ttl > 0 and usage.used_keys > 0)
            except StoreError:
                # Nothing of this group was applied; the next round tries again.
                m.counter("cache_reclaimer.store_error_count", tags_of(instance_group=name)).inc()
                pending = True
        self._reclaim_pending = pending
        return submitted

    def _deletion_credit(self, usage: GroupUsage) -> Credit:
        """What the queued deletions of the group's instances will free (they are still counted in the
        usage until their delay has passed)."""
        keys = size = 0
        types: dict[StorageType, int] = {}
        for inst in usage.instances:
            queued = self._deletions.of_instance(inst.instance_id)
            if not queued:
                continue
            wanted = list(queued)
            for key, rec in zip(wanted, self._index(inst.instance_id).get(wanted), strict=True):
                if rec is None:
                    continue
                ids = queued[key].location_ids
                for loc in rec.locations:
                    if loc.status == _DELETING and loc.location_id in ids:
                        qt = quota_type(loc.location.type)
                        types[qt] = types.get(qt, 0) + loc.size_bytes
                if all(loc.status == _DELETING for loc in rec.locations):
                    keys += 1
                    size += inst.bytes_per_key
        return Credit(keys, size, types)

    def _sample(self, instance_id: str, count: int, rng: np.random.Generator) -> list[Candidate]:
        """Sample keys of an instance for the reclaimer, with their access statistics."""
        keys = self._store.meta_sample(instance_id, count, rng)
        if not keys:
            return []
        index = self._index(instance_id)
        info = self._registry.instances.get(instance_id)
        per_key = sum(s.size for s in info.location_spec_infos) if info is not None else 0
        return [
            Candidate(
                instance_id, key, rec, index.last_access(key, rec), index.access_count(key, rec), per_key
            )
            for key, rec in zip(keys, index.get(keys), strict=True)
            if rec is not None
        ]

    def _submit_reclaim(self, group: InstanceGroup, victims: list[Victim], now: float) -> int:
        """Mark the victims' locations DELETING (one commit per instance), queue them after the group's
        ``delay_before_delete_ms`` and publish a CacheReclaimSubmit event per instance."""
        assert group.cache_config is not None
        delay_ms = group.cache_config.reclaim_strategy.delay_before_delete_ms
        by_instance: dict[str, list[Victim]] = {}
        for victim in victims:
            by_instance.setdefault(victim.instance_id, []).append(victim)
        tags = tags_of(instance_group=group.name)
        submitted = 0
        for instance_id, chosen in by_instance.items():
            index = self._index(instance_id)
            keys = [v.key for v in chosen]
            changes: dict[int, Change] = {}
            doomed: dict[int, list[str]] = {}
            # Re-read: a victim is marked only if its location is still SERVING.
            for victim, rec in zip(chosen, index.get(keys), strict=True):
                if rec is None:
                    continue
                ids = set(victim.location_ids)
                marked = [
                    loc.location_id
                    for loc in rec.locations
                    if loc.location_id in ids and loc.status == _SERVING
                ]
                if not marked:
                    continue
                locs = tuple(
                    loc.with_status(_DELETING) if loc.location_id in marked else loc for loc in rec.locations
                )
                changes[victim.key] = (rec, KeyRecord(locs, rec.created, rec.last_access, rec.access_count))
                doomed[victim.key] = marked
            if not doomed:
                continue
            index.commit(changes, {})  # status only: usage falls when the deletion runs
            self._deletions.submit(instance_id, doomed, now + delay_ms / 1000.0, reclaimed=True)
            count = sum(len(ids) for ids in doomed.values())
            submitted += count
            self._metrics.counter("cache_reclaimer.block_submit_count", tags).inc(len(doomed))
            self._metrics.counter("cache_reclaimer.location_submit_count", tags).inc(count)
            if self._events is not None:
                self._publish(
                    ev.RECLAIM,
                    instance_id,
                    ev.RECLAIMER,
                    now,
                    {
                        "block_keys": list(doomed),
                        "location_ids": [doomed[k] for k in doomed],
                        "delay_us": int(delay_ms) * 1000,
                    },
                )
        return submitted

    def _recover_writing(self) -> None:
        """After a restart nothing pending survives: write sessions and queued deletions are lost. Turn
        every WRITING location into a deletion and queue every DELETING one again."""
        instance_ids = set(self._registry.instances) | set(self._store.meta_instances())
        for instance_id in sorted(instance_ids):
            index = self._index(instance_id)
            changes: dict[int, Change] = {}
            doomed: dict[int, list[str]] = {}
            for keys in index.scan():
                for key, rec in zip(keys, index.get(keys), strict=True):
                    if rec is None or all(loc.status == _SERVING for loc in rec.locations):
                        continue
                    doomed[key] = [loc.location_id for loc in rec.locations if loc.status != _SERVING]
                    if any(loc.status == _WRITING for loc in rec.locations):
                        locs = tuple(
                            loc.with_status(_DELETING) if loc.status == _WRITING else loc
                            for loc in rec.locations
                        )
                        changes[key] = (rec, KeyRecord(locs, rec.created, rec.last_access, rec.access_count))
            try:
                index.commit(changes, {})
            except StoreError as exc:
                raise _store_failure("recovery", exc) from None
            self._submit_deletion(instance_id, doomed)

    # =================================================================================== storage status

    def _default_probe(self, backend: StorageBackend) -> ProbeResult:
        """The backend's own probe, timed with the manager's timer."""
        assert self._probe_settings is not None
        return backend.probe(self._timer, self._probe_settings.probe_bytes)

    def _probe_storages(self, now: float) -> int:
        """Probe every open storage when a period has passed; return how many flipped health."""
        settings = self._probe_settings
        if settings is None or now < self._next_probe or not self._backends:
            return 0
        self._next_probe = now + settings.period_s
        self._storage_reclaim_due = True
        m = self._metrics
        changes = 0
        for name in sorted(self._backends):
            backend = self._backends[name]
            health = self._health.get(name)
            if health is None:
                health = self._health[name] = StorageHealth(settings.fail_after, settings.recover_after)
            try:
                result = self._prober(backend)
            except Exception as exc:  # an injected prober that raises has failed its probe, nothing more
                result = ProbeResult(False, error=f"storage {name!r}: probe raised {exc!r}")
            tags = tags_of(type=backend.config.type_name, unique_name=name)
            m.summary("data_storage.probe_latency_us", tags).observe(result.latency_s * 1e6)
            m.counter("data_storage.probe_counter", tags).inc()
            if not result.ok:
                m.counter("data_storage.probe_fail_counter", tags).inc()
            if health.record(result):
                changes += 1
                self._backend_epoch += 1
                m.counter(
                    "data_storage.became_healthy_counter"
                    if health.healthy
                    else "data_storage.became_unhealthy_counter",
                    tags,
                ).inc()
        return changes

    def storage_usage_ratio(self, name: str) -> float:
        """How full storage ``name`` is: the larger of its filesystem's own figure (from the last
        probe) and kvsim's accounting (bytes allocated over the configured capacity).

        Raises:
            KeyError: the storage is not open.
        """
        ratio = self._backends[name].usage_ratio()
        health = self._health.get(name)
        probed = health.storage_ratio() if health is not None else None
        return max(ratio, probed) if probed is not None else ratio

    def _at_high_water(self, name: str) -> bool:
        settings = self._probe_settings
        return settings is not None and self.storage_usage_ratio(name) >= settings.high_water

    def storage_status(self) -> dict[str, StorageStatus]:
        """Health and water level of every open storage, by name (sorted)."""
        out: dict[str, StorageStatus] = {}
        for name in sorted(self._backends):
            health = self._health.get(name)
            last = health.last if health is not None else None
            out[name] = StorageStatus(
                name=name,
                available=self._available(name),
                enabled=self._backends[name].enabled,
                healthy=health.healthy if health is not None else True,
                consecutive_failures=health.failures if health is not None else 0,
                probes=health.probes if health is not None else 0,
                usage_ratio=self.storage_usage_ratio(name),
                at_high_water=self._at_high_water(name),
                last_error=last.error if last is not None else "",
                last_latency_s=last.latency_s if last is not None else 0.0,
            )
        return out

    def _storage_needs(self) -> dict[str, int]:
        """Bytes to free per storage above its reclaim water level, less what queued deletions on it
        will free (empty without probing)."""
        settings = self._probe_settings
        if settings is None:
            return {}
        level = settings.reclaim_water
        need: dict[str, int] = {}
        for name, backend in self._backends.items():
            usage = backend.usage()
            excess = excess_bytes(usage.used_bytes, usage.capacity_bytes or 0, level)
            health = self._health.get(name)
            last = health.last if health is not None else None
            if last is not None and last.used_bytes is not None and last.total_bytes:
                excess = max(excess, excess_bytes(last.used_bytes, last.total_bytes, level))
            if excess > 0:
                need[name] = excess
        if need:
            for name, queued in self._storage_credit(set(need)).items():
                need[name] -= queued
        return {n: b for n, b in need.items() if b > 0}

    def _storage_credit(self, names: set[str]) -> dict[str, int]:
        """Bytes of queued (DELETING) locations per storage in ``names``."""
        credit: dict[str, int] = {}
        for instance_id in sorted(self._registry.instances):
            queued = self._deletions.of_instance(instance_id)
            if not queued:
                continue
            wanted = list(queued)
            for key, rec in zip(wanted, self._index(instance_id).get(wanted), strict=True):
                if rec is None:
                    continue
                ids = queued[key].location_ids
                for loc in rec.locations:
                    if loc.status == _DELETING and loc.location_id in ids and loc.storage_name in names:
                        credit[loc.storage_name] = credit.get(loc.storage_name, 0) + loc.size_bytes
        return credit

    # =================================================================================== storages

    @_api("AddStorage")
    def add_storage(self, config: StorageConfig) -> None:
        """Register and open a storage.

        Raises:
            CacheError: INVALID_ARGUMENT for a config that breaks the reference's rules; INTERNAL_ERROR
                when the name exists (kvsim fix: the stored config is not overwritten) or the backend
                fails to open (nothing is registered).
        """
        check_storage_config(config)
        name = config.global_unique_name
        if name in self._registry.storages:
            raise internal(f"storage: {name!r} already exists")
        backend = self._open_backend(config)
        try:
            self._registry.put_storage(config)
        except StoreError as exc:
            backend.close()
            raise _store_failure("add_storage", exc) from None
        self._backends[name] = backend
        self._backend_epoch += 1
        self.backend_open_errors.pop(name, None)

    def _restore_backends(self, backends: dict[str, StorageBackend]) -> None:
        """Give freshly opened backends the URIs the meta index holds for them, so their live-block
        counts (packed files, shared objects) match the index (see ``StorageBackend.restore``)."""
        if not backends:
            return
        uris: dict[str, list[str]] = {name: [] for name in backends}
        try:
            for instance_id in sorted(set(self._registry.instances) | set(self._store.meta_instances())):
                index = self._index(instance_id)
                for keys in index.scan():
                    for rec in index.get(keys):
                        if rec is None:
                            continue
                        for loc in rec.locations:
                            bucket = uris.get(loc.storage_name)
                            if bucket is not None:
                                bucket.extend(spec.uri for spec in loc.location.location_specs if spec.uri)
        except StoreError as exc:
            raise _store_failure("restore storage bookkeeping", exc) from None
        for name, backend in backends.items():
            backend.restore(uris[name])

    def _open_backend(self, config: StorageConfig) -> StorageBackend:
        """Open a backend and give it the index's URIs for its storage (closed again on failure)."""
        try:
            backend = self._backend_factory(config)
        except BackendError as exc:
            raise internal(f"storage {config.global_unique_name!r}: failed to open: {exc}") from None
        try:
            self._restore_backends({config.global_unique_name: backend})
        except CacheError:
            backend.close()
            raise
        return backend

    def _stored_storage(self, name: object, field: str = "storage_unique_name") -> StorageConfig:
        checked = require_str(field, name)
        config = self._registry.storages.get(checked)
        if config is None:
            raise internal(f"{field}: storage {name!r} does not exist")
        return config

    @_api("EnableStorage")
    def enable_storage(self, storage_unique_name: str) -> None:
        """Make a storage available for reads and writes again; an operator's word also overrides its
        probes until they fail ``fail_after`` times in a row again."""
        self._set_storage_available(storage_unique_name, True)
        health = self._health.get(storage_unique_name)
        if health is not None and health.force_healthy():
            self._backend_epoch += 1

    @_api("DisableStorage")
    def disable_storage(self, storage_unique_name: str) -> None:
        """Take a storage out of write selection; its locations get read weight 0 as the policy says."""
        self._set_storage_available(storage_unique_name, False)

    def _set_storage_available(self, name: str, available: bool) -> None:
        config = self._stored_storage(name)
        try:
            self._registry.put_storage(dataclasses.replace(config, is_available=available))
        except StoreError as exc:
            raise _store_failure("enable/disable_storage", exc) from None
        backend = self._backends.get(name)
        if backend is not None:
            backend.set_enabled(available)
        self._backend_epoch += 1

    @_api("RemoveStorage")
    def remove_storage(self, storage_unique_name: str) -> None:
        """Unregister and close a storage (groups and existing locations that name it are left alone)."""
        self._stored_storage(storage_unique_name)
        try:
            self._registry.delete_storage(storage_unique_name)
        except StoreError as exc:
            raise _store_failure("remove_storage", exc) from None
        backend = self._backends.pop(storage_unique_name, None)
        if backend is not None:
            backend.close()
        self._health.pop(storage_unique_name, None)
        self._backend_epoch += 1

    @_api("UpdateStorage")
    def update_storage(self, config: StorageConfig) -> None:
        """Replace a storage's config and reopen it; if the new backend fails to open the old one stays."""
        check_storage_config(config)
        self._stored_storage(config.global_unique_name, "storage.global_unique_name")
        backend = self._open_backend(config)
        try:
            self._registry.put_storage(config)
        except StoreError as exc:
            backend.close()
            raise _store_failure("update_storage", exc) from None
        old = self._backends.get(config.global_unique_name)
        if old is not None:
            old.close()
        self._backends[config.global_unique_name] = backend
        # A new config is a new storage as far as its probes go: its history starts afresh.
        self._health.pop(config.global_unique_name, None)
        self._backend_epoch += 1

    @_api("ListStorage")
    def list_storage(self) -> tuple[StorageConfig, ...]:
        """Every registered storage, sorted by name."""
        return tuple(self._registry.storages[n] for n in sorted(self._registry.storages))

    # =================================================================================== groups

    @_api("CreateInstanceGroup")
    def create_instance_group(self, group: InstanceGroup) -> None:
        """Create a group (storage candidates are not checked against registered storages).

        Raises:
            CacheError: INVALID_ARGUMENT per the reference's rules and for negative quotas, a duplicate
                or unknown per-type quota, a negative water level, delay or TTL (kvsim fix);
                INTERNAL_ERROR if the name exists.
        """
        check_instance_group(group)
        check_group_quotas(group)
        if group.name in self._registry.groups:
            raise internal(f"instance_group: group {group.name!r} already exists")
        self._put_group(group, "create_instance_group")

    @_api("UpdateInstanceGroup")
    def update_instance_group(self, group: InstanceGroup, current_version: int) -> None:
        """Replace a group; ``current_version`` must equal the stored version and ``group.version`` must
        be greater (INTERNAL_ERROR otherwise). Existing instances see quota and storage changes at once."""
        check_instance_group(group)
        check_group_quotas(group)
        require_int("current_version", current_version)
        stored = self._registry.groups.get(group.name)
        if stored is None:
            raise internal(f"instance_group: group {group.name!r} does not exist")
        if current_version != stored.version:
            raise internal(f"current_version: {current_version} is not the stored version {stored.version}")
        if group.version <= stored.version:
            raise internal(f"instance_group.version: {group.version} must be greater than {stored.version}")
        self._put_group(group, "update_instance_group")

    def _put_group(self, group: InstanceGroup, what: str) -> None:
        try:
            self._registry.put_group(group)
        except StoreError as exc:
            raise _store_failure(what, exc) from None

    @_api("RemoveInstanceGroup")
    def remove_instance_group(self, name: str) -> None:
        """Remove a group; its instances stay registered (their writes then fail), as the reference."""
        self._stored_group(name)
        try:
            self._registry.delete_group(name)
        except StoreError as exc:
            raise _store_failure("remove_instance_group", exc) from None

    @_api("GetInstanceGroup")
    def get_instance_group(self, name: str) -> InstanceGroup:
        """The stored group (INTERNAL_ERROR if unknown)."""
        return self._stored_group(name)

    def _stored_group(self, name: object) -> InstanceGroup:
        checked = require_str("name", name)
        group = self._registry.groups.get(checked)
        if group is None:
            raise internal(f"name: group {name!r} does not exist")
        return group

    def apply_startup_config(self, storage: StorageConfig | None, group: InstanceGroup | None) -> None:
        """Add the startup storage and group unless they already exist (the reference's first-leader
        bootstrap); see :func:`kvsim.cache.defaults.default_startup_config`."""
        if storage is not None and storage.global_unique_name not in self._registry.storages:
            self.add_storage(storage)
        if group is not None and group.name not in self._registry.groups:
            self.create_instance_group(group)

    # =================================================================================== accounts

    @_api("AddAccount")
    def add_account(
        self, user_name: str, password: str, role: AccountRole | int = AccountRole.ROLE_USER
    ) -> None:
        """Add an account with a salted password hash (kvsim fix: never stored in plain text).

        An unknown role becomes ROLE_USER, as the reference.

        Raises:
            CacheError: INVALID_ARGUMENT for an empty name or password; INTERNAL_ERROR if it exists.
        """
        require_str("user_name", user_name)
        require_str("password", password)
        try:
            role = AccountRole(role)
        except ValueError:
            role = AccountRole.ROLE_USER
        if user_name in self._registry.accounts:
            raise internal(f"user_name: account {user_name!r} already exists")
        record = AccountRecord(user_name, role, self._hasher.hash(password))
        try:
            self._registry.put_account(record)
        except StoreError as exc:
            raise _store_failure("add_account", exc) from None

    @_api("DeleteAccount")
    def delete_account(self, user_name: str) -> None:
        """Remove an account (INTERNAL_ERROR if unknown)."""
        require_str("user_name", user_name)
        if user_name not in self._registry.accounts:
            raise internal(f"user_name: account {user_name!r} does not exist")
        try:
            self._registry.delete_account(user_name)
        except StoreError as exc:
            raise _store_failure("delete_account", exc) from None

    @_api("ListAccount")
    def list_account(self) -> tuple[Account, ...]:
        """Every account (name and role), sorted by name."""
        accounts = self._registry.accounts
        return tuple(Account(accounts[n].user_name, accounts[n].role) for n in sorted(accounts))

    def verify_account(self, user_name: str, password: str) -> AccountRole | None:
        """The account's role if ``password`` is right, else None."""
        record = self._registry.accounts.get(user_name)
        if record is None or not isinstance(password, str):
            return None
        return record.role if PasswordHasher.verify(password, record.password_hash) else None

    # =================================================================================== snapshots

    @_api("GenConfigSnapshot")
    def gen_config_snapshot(self) -> str:
        """The whole registry as JSON (storages, groups, instances, accounts with password hashes).

        kvsim extension: the reference leaves Gen/LoadConfigSnapshot unimplemented.
        """
        reg = self._registry
        doc = {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "storages": [codec.to_jsonable(reg.storages[n]) for n in sorted(reg.storages)],
            "instance_groups": [codec.to_jsonable(reg.groups[n]) for n in sorted(reg.groups)],
            "instances": [codec.to_jsonable(reg.instances[n]) for n in sorted(reg.instances)],
            "accounts": [codec.to_jsonable(reg.accounts[n]) for n in sorted(reg.accounts)],
        }
        return json.dumps(doc, separators=_COMPACT, ensure_ascii=False)

    @_api("LoadConfigSnapshot")
    def load_config_snapshot(self, config_snapshot: str) -> None:
        """Replace the registry by a snapshot from :meth:`gen_config_snapshot`, all or nothing.

        Storages whose config is unchanged keep their open backend; others are (re)opened first, and
        if one fails nothing changes. Cache entries are kept: an instance left out of the snapshot
        keeps its index, reachable again if it registers again.

        Raises:
            CacheError: INVALID_ARGUMENT for malformed JSON or contents; INTERNAL_ERROR if a backend
                fails to open or the store fails.
        """
        decoded = self._decode_snapshot(config_snapshot)
        storages: dict[str, StorageConfig] = decoded["storage"]
        opened: dict[str, StorageBackend] = {}
        keep: dict[str, StorageBackend] = {}
        try:
            for name, config in storages.items():
                current = self._registry.storages.get(name)
                backend = self._backends.get(name)
                if (
                    backend is not None
                    and current is not None
                    and dataclasses.replace(current, is_available=True)
                    == dataclasses.replace(config, is_available=True)
                ):
                    keep[name] = backend
                else:
                    opened[name] = self._open_backend(config)
            self._registry.replace(decoded)
        except (CacheError, StoreError) as exc:
            for backend in opened.values():
                backend.close()
            if isinstance(exc, CacheError):
                raise
            raise _store_failure("load_config_snapshot", exc) from None
        for name, backend in self._backends.items():
            if name not in keep:
                backend.close()
        self._backends = {**keep, **opened}
        for name, backend in self._backends.items():
            backend.set_enabled(storages[name].is_available)
        self._backend_epoch += 1
        for instance_id in self._registry.instances:
            self._index(instance_id)

    def _decode_snapshot(self, text: str) -> dict[str, dict[str, Any]]:
        if not isinstance(text, str):
            raise invalid("config_snapshot", "must be a JSON string")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise invalid("config_snapshot", f"is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise invalid("config_snapshot", f"is not a {SNAPSHOT_FORMAT} document")
        if doc.get("version") != SNAPSHOT_VERSION:
            raise invalid("config_snapshot.version", f"unsupported version {doc.get('version')!r}")
        unknown = set(doc) - {"format", "version", "storages", "instance_groups", "instances", "accounts"}
        if unknown:
            raise invalid("config_snapshot", f"unknown field(s) {sorted(unknown)}")
        out: dict[str, dict[str, Any]] = {}
        spec: list[tuple[str, str, type, Callable[[Any], str]]] = [
            ("storage", "storages", StorageConfig, lambda o: o.global_unique_name),
            ("instance_group", "instance_groups", InstanceGroup, lambda o: o.name),
            ("instance", "instances", InstanceInfo, lambda o: o.instance_id),
            ("account", "accounts", AccountRecord, lambda o: o.user_name),
        ]
        for kind, key, cls, name_of in spec:
            items = doc.get(key, [])
            if not isinstance(items, list):
                raise invalid(f"config_snapshot.{key}", "must be a list")
            objs: dict[str, Any] = {}
            for i, item in enumerate(items):
                try:
                    obj: Any = codec.from_jsonable(cls, item, f"config_snapshot.{key}[{i}]")
                except ValueError as exc:
                    raise invalid(f"config_snapshot.{key}[{i}]", str(exc)) from None
                name = name_of(obj)
                if name in objs:
                    raise invalid(f"config_snapshot.{key}[{i}]", f"duplicate name {name!r}")
                objs[name] = obj
            out[kind] = objs
        for config in out["storage"].values():
            check_storage_config(config)
        for group in out["instance_group"].values():
            check_instance_group(group)
            check_group_quotas(group)
        for info in out["instance"].values():
            require_int(
                f"config_snapshot.instances[{info.instance_id!r}].block_size", info.block_size, minimum=1
            )
            if not info.location_spec_infos:
                raise invalid(f"config_snapshot.instances[{info.instance_id!r}]", "needs at least one spec")
        for record in out["account"].values():
            if not PasswordHasher.is_encoded(record.password_hash):
                raise invalid(
                    f"config_snapshot.accounts[{record.user_name!r}].password_hash", "is not a salted hash"
                )
        return out

    # =================================================================================== lifecycle

    def flush(self) -> None:
        """Merge buffered access statistics into the store now."""
        for index in self._indexes.values():
            index.flush_access()

    def close(self) -> None:
        """Flush statistics and events, close every backend, the event log and the store."""
        self.flush()
        if self._events is not None:
            self._events.close()
        for backend in self._backends.values():
            backend.close()
        self._backends = {}
        self._backend_epoch += 1
        self._store.close()
