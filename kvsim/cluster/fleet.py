"""A fleet: N simulated SGLang engines on one simpy clock, one client and a router in front.

Each instance is an ordinary :class:`~kvsim.engines.driver.EngineDriver` (the engine loop, step times
and scheduler are the single-engine ones, not a copy) sharing the fleet's :class:`simpy.Environment`.
The fleet replaces the driver's client: it replays the workload's arrivals (behind the global
``--max-concurrency`` semaphore, as ``bench_serving`` in front of a load balancer would), asks the
router for an instance at the moment each request is sent, and hands the request to that engine.

Instances share the server settings of the experiment; each has its own KV pool, HiCache host tier and
L3 controller. With the ``kvcm`` storage backend, ``cluster.kvcm_scope`` says whose cache the L3 is:
``local`` (the default) gives each engine its own KVCM manager, instance id and group quota; ``global``
registers every engine under one instance id of one shared manager, so one engine's backups are every
engine's prefetch hits and all draw on one quota (:class:`~kvsim.engines.sglang.kvcm_store.SharedKvcmView`).
KVCM's event log is written per manager: one file for a one-instance or global fleet, one per instance
for a local one (:func:`~kvsim.cluster.output.write_cluster_run`).
With ``cluster.shared_tiers: true`` the engines' L3 transfers share each storage tier's bandwidth
(:class:`~kvsim.engines.sglang.storage.L3Group`); otherwise each engine has a tier's full bandwidth.
With ``cluster.pd`` the fleet is disaggregated into prefill and decode pools: :func:`run_cluster`
hands it to :mod:`kvsim.cluster.pd_fleet`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import simpy

from kvsim.cache.events import EventSink
from kvsim.cache.radix import RadixTree
from kvsim.cluster.kv_events import EventFeed, KvEventPublisher, PrefixIndex, page_hashes
from kvsim.cluster.pd import PDSection, parse_pd_section
from kvsim.cluster.routers import CacheAwareRouter, Router, make_router
from kvsim.core.errors import ConfigError
from kvsim.engines.client import BenchClient
from kvsim.engines.driver import DriverStats, EngineDriver
from kvsim.engines.experiment import (
    EngineBuild,
    build_engine,
    engine_metrics,
    hicache_metrics,
    l3_metrics,
    merge_config,
    resolved_config,
)
from kvsim.engines.sglang.hicache import HiCacheKVPool
from kvsim.engines.sglang.kvcm_store import KvcmStore, SharedKvcmView
from kvsim.engines.sglang.scheduler import SGLangScheduler
from kvsim.engines.sglang.storage import L3Group
from kvsim.metrics import IterationLogWriter, RequestRecord, summarize
from kvsim.workloads.base import Request, Workload

#: The sections an instance may override: its hardware and server, never the shared workload.
OVERRIDE_SECTIONS = ("model", "gpu", "server")
#: Engine metrics that are shares of the fleet's prompt tokens: recomputed over all requests, not summed.
_RATIO_KEYS = ("prefix_cache_reused_ratio", "l2_hit_ratio", "l3_hit_ratio", "l3_prefetch_ratio")
#: ``cluster.kvcm_scope`` values: one KVCM manager per engine, or one shared by all.
KVCM_SCOPES = ("local", "global")


@dataclass(frozen=True, slots=True)
class ClusterSection:
    """The experiment file's ``cluster:`` section."""

    instances: int = 1
    router: str = "round_robin"
    router_params: Mapping[str, Any] | None = None
    #: per instance (by index), sections merged over the experiment's: ``model``, ``gpu``, ``server``
    instance_overrides: tuple[Mapping[str, Any], ...] = ()
    #: ``local``: a KVCM manager, instance id and quota per engine; ``global``: one shared by all
    kvcm_scope: str = "local"
    #: whether the engines' L3 transfers share each storage tier's bandwidth (one store for all)
    shared_tiers: bool = False
    #: PD disaggregation: the prefill and decode pools (prefill instances first), None: co-located
    pd: PDSection | None = None


def parse_cluster_section(body: Mapping[str, Any] | None) -> ClusterSection:
    """Validate ``cluster:`` (keys are checked by the experiment loader; values here)."""
    body = dict(body or {})
    instances = body.get("instances", 1)
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise ConfigError(f"cluster.instances: must be an integer >= 1, got {instances!r}")
    router = body.get("router") or "round_robin"
    params = body.get("router_params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError("cluster.router_params: must be a mapping")
    make_router(str(router), params)  # fail on a bad name or parameter before anything runs
    pd = None
    if body.get("pd") is not None:
        pd = parse_pd_section(body["pd"], router=str(router), router_params=params)
        if "instances" in body and instances != pd.instances:
            raise ConfigError(
                f"cluster.instances: {instances} is not prefill_instances + decode_instances "
                f"= {pd.instances}; leave it out with cluster.pd"
            )
        instances = pd.instances
    overrides = body.get("instance_overrides") or []
    if not isinstance(overrides, list) or len(overrides) > instances:
        raise ConfigError(f"cluster.instance_overrides: must be a list of at most {instances} mappings")
    for index, entry in enumerate(overrides):
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"cluster.instance_overrides[{index}]: must be a mapping")
        for key in entry:
            if key not in OVERRIDE_SECTIONS:
                raise ConfigError(
                    f"cluster.instance_overrides[{index}]: unknown section {key!r}; "
                    f"valid: {', '.join(OVERRIDE_SECTIONS)}"
                )
    scope = body.get("kvcm_scope") or "local"
    if scope not in KVCM_SCOPES:
        raise ConfigError(f"cluster.kvcm_scope: {scope!r} is not one of {', '.join(KVCM_SCOPES)}")
    shared_tiers = body.get("shared_tiers", False)
    if not isinstance(shared_tiers, bool):
        raise ConfigError(f"cluster.shared_tiers: must be true or false, got {shared_tiers!r}")
    return ClusterSection(
        instances,
        str(router),
        dict(params),
        tuple(dict(e or {}) for e in overrides),
        str(scope),
        shared_tiers,
        pd,
    )


def instance_config(config: Mapping[str, Any], section: ClusterSection, index: int) -> dict[str, Any]:
    """The experiment config of instance ``index``: ``config`` with its ``instance_overrides`` entry."""
    if index >= len(section.instance_overrides) or not section.instance_overrides[index]:
        return dict(config)
    return merge_config(
        dict(config), section.instance_overrides[index], f"cluster.instance_overrides[{index}]"
    )


def tree_prefix_hit(
    tree: RadixTree, keys: tuple[int, ...], page_size: int, *, tiered: bool
) -> tuple[int, int]:
    """Length of ``keys`` cached in ``tree`` on device, then host-only, in whole pages; read-only.

    An untiered tree (no HiCache) holds everything on device. In a tiered tree the device part ends
    at the deepest matched node on device and the host part runs on through nodes held on host, as
    SGLang's ``HiRadixCache.match_prefix`` splits it. ``RadixTree.match_prefix`` is not used because
    it splits the node where the match ends, which would change what the engine later evicts.
    """
    node = tree.root
    i = 0
    n = len(keys)
    path: list[tuple[int, int]] = []  # (end position, tier mask) of each node on the match
    while i < n:
        child = node.children.get(keys[i])
        if child is None:
            break
        run = child.key
        if keys[i : i + len(run)] == run:
            i += len(run)
            path.append((i, child.tiers))
            node = child
            continue
        m = 0
        while m < len(run) and i + m < n and run[m] == keys[i + m]:
            m += 1
        i += m
        path.append((i, child.tiers))
        break
    if not tiered:
        return i - i % page_size, 0
    device_mask = tree.tier_mask("device")
    host_mask = tree.tier_mask("host")
    device = 0
    for end, tiers in path:
        if tiers & device_mask:
            device = end
    total = device
    for end, tiers in path:
        if end <= device:
            continue
        if not tiers & host_mask:
            break  # a node dropped from both tiers: nothing below it is usable
        total = end
    device -= device % page_size
    total -= total % page_size
    return device, max(total - device, 0)


class PromptKeys:
    """The radix keys of the last request asked for: the prompt less its last token, as a tuple."""

    def __init__(self) -> None:
        self._req: Request | None = None
        self._keys: tuple[int, ...] = ()

    def of(self, req: Request) -> tuple[int, ...]:
        """``req``'s keys, converted once however many instances probe it."""
        if req is not self._req:
            self._keys = tuple(req.token_ids[: req.input_len - 1].tolist())
            self._req = req
        return self._keys


#: Smallest run of tokens one event hash covers. SGLang publishes one hash per page, so with its
#: default page size of 1 every token would be an event entry; routers index blocks instead (Dynamo's
#: ``kv_block_size``), which costs a cache-aware score at most one block of tokens per request.
EVENT_BLOCK_TOKENS = 16


def event_block(page_size: int) -> int:
    """Tokens per event hash: the smallest multiple of the page size that is at least
    :data:`EVENT_BLOCK_TOKENS`."""
    return page_size * max(1, -(-EVENT_BLOCK_TOKENS // page_size))


class CacheEvents:
    """The router's side of the engines' KV cache events (:mod:`kvsim.cluster.kv_events`): a publisher
    on every engine's radix tree, one feed with the router's lag, one index; and the one KVCM prefix
    query per request and store.

    Args:
        env: the fleet's clock.
        drivers: the engines, in instance order.
        lag_s: how long an event takes to reach the index.
    """

    def __init__(self, env: simpy.Environment, drivers: Sequence[EngineDriver], lag_s: float) -> None:
        self.env = env
        self.index = PrefixIndex(len(drivers))
        self.feed = EventFeed(self.index, lag_s)
        for index, driver in enumerate(drivers):
            pool = driver.scheduler.pool
            if not pool.enable_prefix_cache:
                continue
            publisher = KvEventPublisher(
                index, event_block(pool.page_size), self.feed.publish, lambda: float(env.now)
            )
            publisher.attach(pool.tree, tiered=isinstance(pool, HiCacheKVPool))
        self._hashes: tuple[Request | None, int, list[int]] = (None, 0, [])
        self._l3: dict[int, tuple[Request, int]] = {}  # id(store) -> (request, pages)

    def page_hashes(self, req: Request, page_size: int) -> list[int]:
        """The chained page hashes of ``req``'s prompt less its last token, once per request."""
        cached_req, cached_size, hashes = self._hashes
        if req is not cached_req or page_size != cached_size:
            hashes = page_hashes(req.token_ids[: req.input_len - 1], page_size)
            self._hashes = (req, page_size, hashes)
        return hashes

    def prefix_hit(self, instance: int, req: Request, page_size: int) -> tuple[int, int]:
        """``(device, host-only)`` tokens the index says ``instance`` holds, after delivering every
        event due now (in whole event blocks)."""
        self.feed.deliver(float(self.env.now))
        block = event_block(page_size)
        device, host = self.index.prefix_hit(instance, self.page_hashes(req, block))
        return device * block, host * block

    def l3_pages(self, store: Any, keys: np.ndarray, req: Request) -> int:
        """KVCM's prefix of ``keys``, asked once per request and store (a global fleet's engines share
        one)."""
        # The engines of a global fleet hold views of one store: ask the store behind them once.
        target = getattr(store, "store", store)
        cached = self._l3.get(id(target))
        if cached is not None and cached[0] is req:
            return cached[1]
        pages = int(target.router_prefix(keys, float(self.env.now)))
        self._l3[id(target)] = (req, pages)
        return pages


class EngineView:
    """A router's view of one instance: its load, what it holds (from the KV cache events when the
    fleet has them, else read from its radix tree) and what its KVCM holds."""

    def __init__(self, driver: EngineDriver, keys: PromptKeys | None = None, *, index: int = 0) -> None:
        """``keys`` is shared by the views of one fleet so that a prompt is converted once; ``index`` is
        the instance's index in the fleet (its events' instance)."""
        self.driver = driver
        self.index = index
        self.scheduler: SGLangScheduler = driver.scheduler
        #: prompt + output tokens of requests sent to this instance and not finished (kept by the fleet)
        self.outstanding_tokens = 0
        self._hicache = isinstance(driver.scheduler.pool, HiCacheKVPool)
        self._keys = keys if keys is not None else PromptKeys()
        #: the fleet's KV cache events (set when its router uses them)
        self.events: CacheEvents | None = None

    def load_tokens(self) -> int:
        """Prompt plus output tokens of the requests sent here and not finished yet.

        Kept by the fleet as requests come and go, rather than read from the scheduler's queues: a
        request inside a prefill step is in neither the waiting queue nor the running set, and a
        router that missed it would send a burst to the same idle-looking engine.
        """
        return self.outstanding_tokens

    def prefix_hit(self, req: Request) -> tuple[int, int]:
        """Prompt tokens cached on device and host-only, in whole pages, as the engine would match them.

        Walks the tree without touching it: ``RadixTree.match_prefix`` would split a node where the
        match ends, which would change what the engine later evicts.
        """
        pool = self.scheduler.pool
        if not pool.enable_prefix_cache or req.input_len <= 1:
            return 0, 0
        if self.events is not None:
            return self.events.prefix_hit(self.index, req, pool.page_size)
        return tree_prefix_hit(pool.tree, self._keys.of(req), pool.page_size, tiered=self._hicache)

    def l3_hit(self, req: Request) -> int:
        """Prompt tokens the instance's KVCM holds as a prefix (0 without KVCM as its L3 store)."""
        l3 = self.scheduler.l3
        store = None if l3 is None else getattr(l3.store, "router_prefix", None)
        if l3 is None or store is None or self.events is None:
            return 0
        pages = self.events.l3_pages(l3.store, l3.page_keys.keys(req.request_id), req)
        return pages * l3.page_size


def attach_cache_events(
    env: simpy.Environment,
    drivers: Sequence[EngineDriver],
    views: Sequence[EngineView],
    routers: Sequence[Router],
) -> CacheEvents | None:
    """Give the views the engines' KV cache events when a router scores by cache (``cache_aware``);
    None (and nothing published) otherwise."""
    lags = [r.event_lag_s for r in routers if isinstance(r, CacheAwareRouter)]
    if not lags:
        return None
    events = CacheEvents(env, drivers, min(lags))
    for view in views:
        view.events = events
    return events


class TaggedLog:
    """An iteration log shared by the fleet: each step's line gets ``extra.instance``."""

    def __init__(self, writer: IterationLogWriter, instance: int) -> None:
        self.writer = writer
        self.instance = instance

    def log(
        self,
        time_s: float,
        kind: str,
        batch: Any,
        step_time_ms: float,
        num_running: int,
        num_waiting: int,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        """Forward one step to the shared writer, tagged with the instance index."""
        tagged = {**(extra or {}), "instance": self.instance}
        self.writer.log(time_s, kind, batch, step_time_ms, num_running, num_waiting, tagged)


class Fleet:
    """N engine drivers on one clock behind one client and a router."""

    def __init__(
        self,
        builds: Sequence[EngineBuild],
        router: Router,
        workload: Workload,
        *,
        max_concurrency: int | None = None,
        iteration_log: IterationLogWriter | None = None,
        on_finish: Callable[[int], None] | None = None,
    ) -> None:
        self.env = simpy.Environment()
        self.router = router
        self.workload = workload
        self.max_concurrency = max_concurrency
        self.on_finish = on_finish
        self.drivers: list[EngineDriver] = []
        for index, build in enumerate(builds):
            log = None if iteration_log is None else cast(IterationLogWriter, TaggedLog(iteration_log, index))
            driver = EngineDriver(
                build.scheduler,
                build.predictor,
                workload,
                iteration_log=log,
                on_finish=functools.partial(self._finished, index),
                env=self.env,
            )
            driver.expected_requests = 0  # raised as the router sends requests to it
            self.drivers.append(driver)
        keys = PromptKeys()
        self.views = [EngineView(driver, keys, index=i) for i, driver in enumerate(self.drivers)]
        self.cache_events = attach_cache_events(self.env, self.drivers, self.views, [router])
        #: request id -> instance index, the router's decisions
        self.assignments: dict[int, int] = {}
        self.client = BenchClient(self.env, workload.requests, self._send, max_concurrency, self._maybe_end)
        self._finished_count = 0
        self._ended = False

    def _send(self, req: Request) -> None:
        index = self.router.choose(req, self.views)
        self.assignments[req.request_id] = index
        driver = self.drivers[index]
        driver.expected_requests += 1
        self.views[index].outstanding_tokens += req.input_len + req.output_len
        driver.send(req)

    def _finished(self, index: int, _count: int) -> None:
        # Called by instance ``index``'s driver right after it recorded a finished request; the freed
        # client slot goes to the next pending request at once, as in the single-engine driver.
        record = self.drivers[index].stats.records[-1]
        self.views[index].outstanding_tokens -= record.input_len + record.output_len
        self._finished_count += 1
        if self.on_finish is not None:
            self.on_finish(self._finished_count)
        self.client.finished()
        self._maybe_end()

    def _maybe_end(self) -> None:
        # Engines may stop only once the client has nothing left to send anywhere.
        if self.client.drained and not self._ended:
            self._ended = True
            for driver in self.drivers:
                driver.end_arrivals()

    def run(self) -> list[DriverStats]:
        """Simulate until every request has finished; the per-instance stats."""
        self.env.process(self.client.process())
        engines = [driver.start_engine() for driver in self.drivers]
        self.env.run(until=self.env.all_of(engines))
        return [driver.stats for driver in self.drivers]


@dataclass(slots=True)
class ClusterResult:
    """Everything a simulated fleet produced, in memory."""

    config: dict[str, Any]
    section: ClusterSection
    builds: list[EngineBuild]
    workload: Workload
    #: every request, sorted by id
    records: list[RequestRecord]
    #: request id -> instance index
    assignments: dict[int, int]
    #: fleet metrics; ``metrics["instances"]`` holds one dict per instance
    metrics: dict[str, Any]
    stats: list[DriverStats]
    #: a PD fleet's per-request timeline (:class:`~kvsim.cluster.pd_fleet.PDRun`), None otherwise
    pd: Any = None


def run_cluster(
    config: Mapping[str, Any],
    *,
    iteration_log: IterationLogWriter | None = None,
    on_finish: Callable[[int], None] | None = None,
    workload: Workload | None = None,
    kvcm_events: EventSink | None = None,
    kvcm_event_sinks: Callable[[int], EventSink | None] | None = None,
) -> ClusterResult:
    """Simulate the fleet of a resolved experiment config (its ``cluster:`` section); deterministic.

    KVCM's event log: ``kvcm_event_sinks(i)`` gives the sink of instance ``i``'s manager (None: no
    log); a global fleet's one manager is instance 0's. Without it, ``kvcm_events`` is the log of a
    one-instance fleet."""
    section = parse_cluster_section(config.get("cluster"))
    if section.pd is not None:
        # Imported here: the PD fleet is built from this module's parts.
        from kvsim.cluster.pd_fleet import run_pd_cluster

        return run_pd_cluster(
            config, section, iteration_log=iteration_log, on_finish=on_finish, workload=workload
        )
    if kvcm_event_sinks is None:

        def kvcm_event_sinks(index: int) -> EventSink | None:
            return kvcm_events if section.instances == 1 else None

    first = build_engine(
        instance_config(config, section, 0), workload=workload, kvcm_events=kvcm_event_sinks(0)
    )
    builds = [first]
    # The workload is built once, by instance 0 (its context length truncates the prompts), and shared.
    for index in range(1, section.instances):
        builds.append(
            build_engine(
                instance_config(config, section, index),
                workload=first.workload,
                kvcm_events=kvcm_event_sinks(index),
            )
        )
    shared = share_kvcm(builds) if section.kvcm_scope == "global" and section.instances > 1 else None
    fleet = Fleet(
        builds,
        make_router(section.router, section.router_params),
        first.workload,
        max_concurrency=first.max_concurrency,
        iteration_log=iteration_log,
        on_finish=on_finish,
    )
    if section.shared_tiers and section.instances > 1:
        share_tiers(fleet, builds)
    stats = fleet.run()
    for build in builds:
        if build.l3 is not None:
            build.l3.close()
    if shared is not None:
        shared.close()
    records = sorted((r for s in stats for r in s.records), key=lambda r: r.request_id)
    metrics = fleet_metrics(builds, stats, section)
    resolved = resolved_config(config, first)
    resolved["cluster"] = {
        "instances": section.instances,
        "router": section.router,
        "router_params": dict(section.router_params or {}),
        "instance_overrides": [dict(entry) for entry in section.instance_overrides],
        "kvcm_scope": section.kvcm_scope,
        "shared_tiers": section.shared_tiers,
    }
    return ClusterResult(
        resolved, section, builds, first.workload, records, fleet.assignments, metrics, stats
    )


def share_kvcm(builds: Sequence[EngineBuild]) -> KvcmStore:
    """Make every engine's L3 use instance 0's KVCM store (global scope); returns that store.

    Each engine gets a :class:`SharedKvcmView` of it (instance 0's view reports the manager-wide
    counters). The managers the other engines built are dropped unused: the shared one was registered
    by instance 0 and the others use its instance id, as engines of one deployment registering under
    one id do.

    Raises:
        ConfigError: an engine without the ``kvcm`` storage backend, or page sizes that differ (KVCM's
            block size is the instance's, one for all).
    """
    stores = [build.l3.store if build.l3 is not None else None for build in builds]
    if not all(isinstance(store, KvcmStore) for store in stores):
        raise ConfigError("cluster.kvcm_scope: global needs every instance on --hicache-storage-backend kvcm")
    pages = {build.server.args.page_size for build in builds}
    if len(pages) != 1:
        raise ConfigError(f"cluster.kvcm_scope: global needs one page size for all instances, got {pages}")
    shared = cast(KvcmStore, stores[0])
    for index, build in enumerate(builds):
        assert build.l3 is not None
        build.l3.store = SharedKvcmView(shared, owner=index == 0)
    return shared


def share_tiers(fleet: Fleet, builds: Sequence[EngineBuild]) -> L3Group:
    """Put every engine's L3 controller in one :class:`L3Group`: one transfer IO, so each storage tier's
    bandwidth is shared by all engines' transfers on it; the group wakes every driver when a transfer
    is cancelled (the others then move faster than their engines planned for).

    Raises:
        ConfigError: an engine without an L3 storage tier.
    """
    controllers = [build.l3 for build in builds]
    if any(controller is None for controller in controllers):
        raise ConfigError("cluster.shared_tiers: needs every instance on an L3 --hicache-storage-backend")
    group = L3Group([c for c in controllers if c is not None])
    drivers = fleet.drivers

    def wake() -> None:
        for driver in drivers:
            driver.wake()

    group.wake = wake
    return group


def fleet_metrics(
    builds: Sequence[EngineBuild],
    stats: Sequence[DriverStats],
    section: ClusterSection,
    *,
    instance_records: Sequence[Sequence[RequestRecord]] | None = None,
    records: Sequence[RequestRecord] | None = None,
) -> dict[str, Any]:
    """Fleet ``metrics.json``: the single-engine fields over all requests, plus ``router`` and one
    ``instances`` entry per engine (its own engine metrics, ``busy_s`` and ``busy_fraction``).

    Engine counters are summed over instances and cache ratios recomputed over all requests, so a
    one-instance fleet reproduces ``kvsim sim``'s fields exactly. ``l3_mean_prefetch_ms`` is a
    per-engine mean: for several instances it is averaged weighted by each one's ``l3_prefetches``.

    By default each instance's requests are those its driver finished and the fleet's are all of
    them; a PD fleet, where a request passes two instances, gives both lists (``instance_records``
    per instance, ``records`` the fleet's).
    """
    per_instance: list[dict[str, Any]] = []
    all_records: list[RequestRecord] = []
    for index, (build, stat) in enumerate(zip(builds, stats, strict=True)):
        own = stat.records if instance_records is None else instance_records[index]
        ordered = sorted(own, key=lambda r: r.request_id)
        all_records.extend(ordered)
        per_instance.append(engine_metrics(build, ordered, stat) if ordered else _idle_metrics(build, stat))
    if records is not None:
        all_records = list(records)
    all_records.sort(key=lambda r: r.request_id)
    first = builds[0]
    metrics: dict[str, Any] = summarize(
        all_records, truncated_requests=first.workload.truncated_requests, start_s=0.0
    )
    # An idle instance has no summary: take the engine fields from one that served requests.
    template = next((m for m in per_instance if m.get("completed")), per_instance[0])
    engine_keys = [k for k in template if k not in metrics]
    ratios: dict[str, Any] = {}
    if first.scheduler.hicache is not None:
        ratios.update(hicache_metrics(all_records, first.scheduler.hicache))
    if first.l3 is not None:
        ratios.update(l3_metrics(all_records, first.l3))
    for key in engine_keys:
        values = [m[key] for m in per_instance if key in m]
        if key in _RATIO_KEYS:
            metrics[key] = ratios[key]
        elif len(values) == 1:
            metrics[key] = values[0]
        elif key == "l3_mean_prefetch_ms":
            weights = [m.get("l3_prefetches") or 0 for m in per_instance if key in m]
            total = sum(weights)
            metrics[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else 0.0
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            metrics[key] = sum(values)  # type: ignore[arg-type]
        elif all(v == values[0] for v in values):
            metrics[key] = values[0]
    duration = float(metrics.get("duration") or 0.0)
    for index, (entry, stat) in enumerate(zip(per_instance, stats, strict=True)):
        entry["instance"] = index
        entry["gpu"] = builds[index].deployment.gpu.name
        entry["tp"] = builds[index].deployment.tp
        entry["busy_s"] = stat.busy_s
        # Busy share of the fleet's run, not of the instance's own span, so instances compare.
        entry["busy_fraction"] = stat.busy_s / duration if duration > 0 else 0.0
    metrics["router"] = section.router
    metrics["instances"] = per_instance
    return metrics


def _idle_metrics(build: EngineBuild, stat: DriverStats) -> dict[str, Any]:
    """Metrics of an instance the router sent nothing (bench_serving's summary needs requests)."""
    return {
        "completed": 0,
        "num_retractions": build.scheduler.num_retractions,
        "prefill_steps": stat.prefill_steps,
        "decode_steps": stat.decode_steps,
        "max_total_tokens": build.server.max_total_tokens,
    }
