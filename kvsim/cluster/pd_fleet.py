"""A PD-disaggregated fleet: a prefill pool and a decode pool of SGLang engines on one simpy clock.

What happens to one request, as SGLang's PD mode (``--disaggregation-mode prefill|decode`` behind its
load balancer) does it:

1. The client sends it; the prefill router picks a prefill instance and the decode router a decode
   instance (both at once, as ``mini_lb`` does). The decode server puts it in its prealloc queue.
2. The decode server reserves the prompt's KV slots once its pool can hold the prompt plus
   ``num_reserved_decode_tokens`` for every active request (FIFO; see
   :meth:`~kvsim.engines.sglang.scheduler.SGLangScheduler._preallocate`). That is the prefill side's
   bootstrap: only now may the prefill server schedule the request (its bootstrap queue waits for the
   decode side's KV addresses).
3. The prefill server runs it like any prefill (chunked prefill, radix cache, HiCache) with
   ``max_new_tokens = 1``. After each chunk, and after the last with the first token, it sends the KV
   computed so far (SGLang's ``send_kv_chunk``) over the :class:`~kvsim.cluster.pd.TransferNetwork`;
   the request keeps its KV locked and its request slot (the inflight queue) until every piece has
   landed, then its KV is unlocked and stays in the prefill server's tree as cache.
4. The decode server's next pass takes it into the running batch: the first token reaches the client
   then, with no forward step, and the request decodes. Its last token ends it at the client.

Per-request timestamps are kept in :class:`PDRequest`; ``requests.jsonl`` and ``metrics.json`` report
them (:func:`pd_metrics`). The client's view (TTFT, TPOT, ITL) comes from the decode servers' records,
with the prefix-cache counts of the prefill server that computed the prompt.

Not modelled: layer-wise overlap of a forward step with its own KV transfer (a chunk's KV is sent when
its step ends), the bootstrap handshake's own time, the copy of retracted decode KV to host memory and
back, and decode servers' prefix caching (SGLang forces the chunk cache on them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import simpy

from kvsim.cluster.fleet import (
    ClusterResult,
    ClusterSection,
    EngineView,
    PromptKeys,
    TaggedLog,
    attach_cache_events,
    fleet_metrics,
    instance_config,
)
from kvsim.cluster.pd import KVTransfer, PDSection, TransferNetwork
from kvsim.cluster.routers import make_router
from kvsim.core.errors import ConfigError
from kvsim.engines.client import BenchClient
from kvsim.engines.driver import DriverStats, EngineDriver
from kvsim.engines.experiment import EngineBuild, build_engine, resolved_config
from kvsim.engines.sglang.scheduler import ReqState
from kvsim.metrics import IterationLogWriter, RequestRecord
from kvsim.workloads.base import Request, Workload

ROLES = ("prefill", "decode")


@dataclass(slots=True)
class PDRequest:
    """One request's way through a PD fleet; times are simulated seconds, -1 until they happen."""

    request_id: int
    prefill_instance: int
    decode_instance: int
    input_len: int
    send_s: float
    #: when the decode server reserved the prompt's KV (the prefill server may start from then)
    prealloc_s: float = -1.0
    #: when the prefill server's last chunk ended (the first token was made)
    prefill_end_s: float = -1.0
    #: when the first KV piece was sent and when the last one landed
    transfer_start_s: float = -1.0
    transfer_end_s: float = -1.0
    transfer_bytes: float = 0.0
    #: prompt tokens whose KV was handed to the network so far
    sent_tokens: int = 0
    #: KV pieces in flight, whether the last one was sent, and each landed piece's (sent, landed) times
    pieces: int = 0
    all_sent: bool = False
    piece_times: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    prefill_state: ReqState | None = None
    decode_state: ReqState | None = None

    @property
    def prealloc_wait_s(self) -> float:
        """Time in the decode server's prealloc queue."""
        return self.prealloc_s - self.send_s

    @property
    def transfer_s(self) -> float:
        """Time the request's KV was on the network: the union of its pieces' (sent, landed) spans.

        Without chunking that is its one transfer; with chunks, the gaps while later chunks were still
        being computed do not count.
        """
        total = 0.0
        reached = -np.inf
        for start, end in sorted(self.piece_times):
            if end > reached:
                total += end - max(start, reached)
                reached = end
        return total

    @property
    def transfer_wait_s(self) -> float:
        """From the end of the prefill to the last KV piece landed: the transfer time not hidden."""
        return self.transfer_end_s - self.prefill_end_s

    def to_json(self) -> dict[str, Any]:
        """The fields ``requests.jsonl`` adds to the request's line."""
        return {
            "prefill_instance": self.prefill_instance,
            "decode_instance": self.decode_instance,
            "prealloc_s": self.prealloc_s,
            "prealloc_wait_ms": self.prealloc_wait_s * 1e3,
            "prefill_end_s": self.prefill_end_s,
            "transfer_start_s": self.transfer_start_s,
            "transfer_end_s": self.transfer_end_s,
            "transfer_ms": self.transfer_s * 1e3,
            "transfer_wait_ms": self.transfer_wait_s * 1e3,
            "transfer_bytes": round(self.transfer_bytes),
        }


@dataclass(slots=True)
class PDRun:
    """What a PD fleet adds to its :class:`~kvsim.cluster.fleet.ClusterResult`."""

    section: PDSection
    #: request id -> its way through the fleet
    requests: dict[int, PDRequest]
    #: ``prefill`` or ``decode`` per instance
    roles: list[str]
    #: bytes/s of one NIC per instance (the override or the GPU profile's network)
    nic_bandwidth: list[float]
    #: KV pieces sent over the network (one per chunk that made whole pages, plus one per prompt)
    transfers: int = 0


def _kv_bytes_per_token(build: EngineBuild) -> int:
    """KV bytes of one token on all of an instance's GPUs: what a decode server receives per token."""
    return build.deployment.kv_bytes_per_token * build.deployment.tp


def _nic_bandwidth(pd: PDSection, builds: Sequence[EngineBuild]) -> list[float]:
    """Each instance's NIC bandwidth: ``cluster.pd.transfer_bandwidth``, else its GPU profile's."""
    values = []
    for index, build in enumerate(builds):
        bandwidth = pd.transfer_bandwidth or build.deployment.gpu.network_bandwidth
        if bandwidth is None or not bandwidth > 0:
            raise ConfigError(
                f"cluster.pd: instance {index}'s GPU {build.deployment.gpu.name} has no "
                "interconnect.network bandwidth in its profile; set cluster.pd.transfer_bandwidth"
            )
        values.append(float(bandwidth))
    return values


def _check_compatible(builds: Sequence[EngineBuild]) -> None:
    """Every instance serves the same model with the same KV format, so that KV can move between them."""
    kinds = {(b.deployment.model.name, b.deployment.precision.kv_cache_dtype) for b in builds}
    if len(kinds) != 1:
        shown = ", ".join(f"{model} ({dtype} KV)" for model, dtype in sorted(kinds))
        raise ConfigError(f"cluster.pd: every instance must serve one model with one KV format, got {shown}")


class PDFleet:
    """Prefill and decode engine drivers on one clock, one client, two routers and a transfer network."""

    def __init__(
        self,
        builds: Sequence[EngineBuild],
        pd: PDSection,
        workload: Workload,
        *,
        max_concurrency: int | None = None,
        iteration_log: IterationLogWriter | None = None,
        on_finish: Callable[[int], None] | None = None,
    ) -> None:
        if len(builds) != pd.instances:
            raise ValueError(f"builds: {len(builds)} engines for {pd.instances} PD instances")
        _check_compatible(builds)
        self.env = simpy.Environment()
        self.pd = pd
        self.builds = list(builds)
        self.workload = workload
        self.on_finish = on_finish
        self.roles = ["prefill"] * pd.prefill_instances + ["decode"] * pd.decode_instances
        self.drivers: list[EngineDriver] = []
        for index, (build, role) in enumerate(zip(builds, self.roles, strict=True)):
            build.scheduler.configure_pd(role, pd.num_reserved_decode_tokens)
            log = None if iteration_log is None else cast(IterationLogWriter, TaggedLog(iteration_log, index))
            driver = EngineDriver(
                build.scheduler,
                build.predictor,
                workload,
                iteration_log=log,
                on_finish=functools.partial(self._finished, index) if role == "decode" else None,
                env=self.env,
            )
            driver.expected_requests = 0  # raised as the routers send requests to it
            if role == "prefill":
                driver.on_kv_ready = functools.partial(self._kv_ready, index)
            else:
                build.scheduler.on_preallocated = self._preallocated
            self.drivers.append(driver)
        keys = PromptKeys()
        self.views = [EngineView(driver, keys, index=i) for i, driver in enumerate(self.drivers)]
        self.prefill_views = self.views[: pd.prefill_instances]
        self.decode_views = self.views[pd.prefill_instances :]
        self.prefill_router = make_router(
            pd.prefill_router, pd.prefill_router_params, prefix="cluster.pd.prefill_"
        )
        self.decode_router = make_router(
            pd.decode_router, pd.decode_router_params, prefix="cluster.pd.decode_"
        )
        # Decode servers keep no prefix cache: only the prefill pool's trees publish events.
        attach_cache_events(
            self.env, self.drivers[: pd.prefill_instances], self.prefill_views, [self.prefill_router]
        )
        self.nic_bandwidth = _nic_bandwidth(pd, builds)
        capacity = [bw * b.deployment.tp for bw, b in zip(self.nic_bandwidth, builds, strict=True)]
        self.network = TransferNetwork(
            [c if role == "prefill" else 0.0 for c, role in zip(capacity, self.roles, strict=True)],
            [c if role == "decode" else 0.0 for c, role in zip(capacity, self.roles, strict=True)],
        )
        self.requests: dict[int, PDRequest] = {}
        self.client = BenchClient(self.env, workload.requests, self._send, max_concurrency, self._maybe_end)
        self._network_wake: simpy.Event | None = None
        self._finished_count = 0
        self._ended = False

    # ---- request flow -----------------------------------------------------------------------------------
    def _send(self, req: Request) -> None:
        """The client sends ``req``: pick both instances; the decode server queues it for prealloc."""
        now = float(self.env.now)
        prefill = self.prefill_router.choose(req, self.prefill_views)
        decode = self.pd.prefill_instances + self.decode_router.choose(req, self.decode_views)
        entry = PDRequest(req.request_id, prefill, decode, req.input_len, now)
        self.requests[req.request_id] = entry
        self.drivers[prefill].expected_requests += 1
        self.views[prefill].outstanding_tokens += req.input_len
        self.drivers[decode].expected_requests += 1
        self.views[decode].outstanding_tokens += req.input_len + req.output_len
        entry.decode_state = self.drivers[decode].scheduler.add_request(req, now)
        self.drivers[decode].wake()

    def _preallocated(self, state: ReqState, now: float) -> None:
        """A decode server reserved ``state``'s KV: its prefill server may schedule it now."""
        entry = self.requests[state.req.request_id]
        entry.prealloc_s = float(now)
        driver = self.drivers[entry.prefill_instance]
        entry.prefill_state = driver.scheduler.add_request(state.req, now)
        driver.wake()

    def _kv_ready(self, index: int, ready: Sequence[tuple[ReqState, bool]]) -> None:
        """Prefill instance ``index`` finished chunks or prompts: send the KV they made."""
        now = float(self.env.now)
        driver = self.drivers[index]
        page = driver.scheduler.page_size
        for state, last in ready:
            entry = self.requests[state.req.request_id]
            if last:
                end = state.input_len
                entry.prefill_end_s = now
                entry.all_sent = True
                driver.handed_off += 1
            else:
                # A chunk sends whole pages only; the partial page goes with the next piece.
                end = min(state.fill_len, state.input_len)
                end -= end % page
            if end > entry.sent_tokens:
                self._send_piece(entry, end - entry.sent_tokens, now)
                entry.sent_tokens = end
            if entry.all_sent and entry.pieces == 0:
                self._landed(entry)

    def _send_piece(self, entry: PDRequest, tokens: int, now: float) -> None:
        """Put ``tokens`` tokens of ``entry``'s KV on the network towards its decode instance."""
        src, dst = entry.prefill_instance, entry.decode_instance
        nbytes = tokens * _kv_bytes_per_token(self.builds[dst])
        link = min(self.nic_bandwidth[src], self.nic_bandwidth[dst]) * min(
            self.builds[src].deployment.tp, self.builds[dst].deployment.tp
        )
        if entry.transfer_start_s < 0:
            entry.transfer_start_s = now
        entry.pieces += 1
        entry.transfer_bytes += nbytes
        done = functools.partial(self._piece_done, entry)
        self.network.submit(src, dst, nbytes, link, self.pd.transfer_latency_s, now, done)
        if self._network_wake is not None and not self._network_wake.triggered:
            self._network_wake.succeed()  # the network's next event may now come sooner

    def _piece_done(self, entry: PDRequest, transfer: KVTransfer, _time: float) -> None:
        entry.piece_times.append((transfer.submit_s, float(self.env.now)))
        entry.pieces -= 1
        if entry.all_sent and entry.pieces == 0:
            self._landed(entry)

    def _landed(self, entry: PDRequest) -> None:
        """All of ``entry``'s KV reached its decode server: the prefill side lets go of it, and the
        decode side takes it in at its next pass."""
        now = float(self.env.now)
        entry.transfer_end_s = now
        prefill = self.drivers[entry.prefill_instance]
        state = entry.prefill_state
        assert state is not None and entry.decode_state is not None
        if prefill.scheduler.l3 is not None:
            prefill.scheduler.l3.forget(state)
        prefill.scheduler.release_transferred(state, now)
        self.views[entry.prefill_instance].outstanding_tokens -= entry.input_len
        prefill.wake()
        decode = self.drivers[entry.decode_instance]
        decode.scheduler.kv_arrived(entry.decode_state)
        decode.wake()

    def _finished(self, index: int, _count: int) -> None:
        """Decode instance ``index`` recorded a finished request: give it the prefill side's cache
        counts, and free the client's slot."""
        stats = self.drivers[index].stats
        record = stats.records[-1]
        entry = self.requests[record.request_id]
        stats.records[-1] = self._with_prefill_cache(record, entry)
        self.views[index].outstanding_tokens -= record.input_len + record.output_len
        self._finished_count += 1
        if self.on_finish is not None:
            self.on_finish(self._finished_count)
        self.client.finished()
        self._maybe_end()

    def _with_prefill_cache(self, record: RequestRecord, entry: PDRequest) -> RequestRecord:
        """``record`` with the prefix-cache counts of the prefill server that computed its prompt."""
        state = entry.prefill_state
        assert state is not None
        sched = self.drivers[entry.prefill_instance].scheduler
        cached = max(state.cached_tokens, 0)
        tiers = sched.hicache is not None
        l3 = sched.l3 is not None
        return dataclasses.replace(
            record,
            cached_tokens=cached,
            cached_tokens_device=cached - state.cached_host if tiers else None,
            cached_tokens_host=state.cached_host if tiers else None,
            cached_tokens_storage=state.cached_storage if l3 else None,
            prefetched_tokens=state.prefetched_tokens if l3 else None,
            prefetch_s=state.prefetch_s if l3 and state.prefetch_s >= 0 else None,
        )

    def _maybe_end(self) -> None:
        # Engines may stop only once the client has nothing left to send anywhere.
        if self.client.drained and not self._ended:
            self._ended = True
            for driver in self.drivers:
                driver.end_arrivals()

    # ---- processes --------------------------------------------------------------------------------------
    def _network_process(self) -> Generator[simpy.Event, Any, None]:
        """Run the transfer network's events at their times; a new transfer wakes it to re-plan."""
        env = self.env
        network = self.network
        while True:
            self._network_wake = env.event()
            when = network.next_event_s()
            if when is None:
                yield self._network_wake
                network.advance(env.now)
                continue
            timer = env.timeout(max(when - env.now, 0.0))
            fired = yield self._network_wake | timer
            # Advance to the event's own time when its timer fired: the clock's sum may fall a rounding
            # step short of it, and the event must not wait for another timer of zero length.
            network.advance(max(when, env.now) if timer in fired else env.now)

    def run(self) -> list[DriverStats]:
        """Simulate until every request has finished at its decode server; the per-instance stats."""
        self.env.process(self.client.process())
        self.env.process(self._network_process())
        engines = [driver.start_engine() for driver in self.drivers]
        self.env.run(until=self.env.all_of(engines))
        return [driver.stats for driver in self.drivers]


def pd_metrics(
    builds: Sequence[EngineBuild],
    stats: Sequence[DriverStats],
    section: ClusterSection,
    run: PDRun,
    records: Sequence[RequestRecord],
) -> dict[str, Any]:
    """A PD fleet's ``metrics.json``: the fleet fields of :func:`~kvsim.cluster.fleet.fleet_metrics`
    (a prefill instance's requests are those it prefilled, a decode instance's those it decoded), each
    instance's ``role``, and the ``pd_*`` fields.

    ``pd_mean_transfer_ms``/``pd_p99_transfer_ms``: time a request's KV was on the network
    (:attr:`PDRequest.transfer_s`); ``pd_mean_transfer_wait_ms``: prefill end to last piece landed
    (the transfer time not hidden behind later chunks); ``pd_mean_prealloc_wait_ms`` and
    ``pd_p99_prealloc_wait_ms``: time in the decode prealloc queue; per pool: its busy share (mean
    over its instances), the prompt tokens the prefill pool computed per second and the tokens the
    decode pool generated per second (the first token of each request is the prefill pool's).
    """
    by_instance: list[list[RequestRecord]] = [[] for _ in builds]
    for record in records:
        entry = run.requests[record.request_id]
        by_instance[entry.prefill_instance].append(record)
        by_instance[entry.decode_instance].append(record)
    metrics = fleet_metrics(builds, stats, section, instance_records=by_instance, records=records)
    pd = run.section
    metrics["router"] = pd.prefill_router
    entries = [run.requests[r.request_id] for r in records]
    transfer_ms = np.array([e.transfer_s * 1e3 for e in entries], dtype=np.float64)
    wait_ms = np.array([e.transfer_wait_s * 1e3 for e in entries], dtype=np.float64)
    prealloc_ms = np.array([e.prealloc_wait_s * 1e3 for e in entries], dtype=np.float64)
    duration = float(metrics.get("duration") or 0.0)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else 0.0

    def p99(values: np.ndarray) -> float:
        return float(np.percentile(values, 99)) if values.size else 0.0

    def per_second(value: float) -> float:
        return value / duration if duration > 0 else 0.0

    instances = metrics["instances"]
    for entry, role in zip(instances, run.roles, strict=True):
        entry["role"] = role
    busy = {role: [e["busy_fraction"] for e in instances if e["role"] == role] for role in ROLES}
    computed = sum(r.input_len - r.cached_tokens for r in records)
    decoded = sum(r.output_len - 1 for r in records)
    metrics.update(
        {
            "pd_prefill_instances": pd.prefill_instances,
            "pd_decode_instances": pd.decode_instances,
            "pd_prefill_router": pd.prefill_router,
            "pd_decode_router": pd.decode_router,
            "pd_transfer_latency_us": pd.transfer_latency_us,
            "pd_num_reserved_decode_tokens": pd.num_reserved_decode_tokens,
            "pd_transfers": run.transfers,
            "pd_transfer_bytes": round(sum(e.transfer_bytes for e in entries)),
            "pd_mean_transfer_ms": mean(transfer_ms),
            "pd_p99_transfer_ms": p99(transfer_ms),
            "pd_mean_transfer_wait_ms": mean(wait_ms),
            "pd_mean_prealloc_wait_ms": mean(prealloc_ms),
            "pd_p99_prealloc_wait_ms": p99(prealloc_ms),
            "pd_prefill_busy_fraction": float(np.mean(busy["prefill"])),
            "pd_decode_busy_fraction": float(np.mean(busy["decode"])),
            "pd_prefill_computed_tokens_per_s": per_second(computed),
            "pd_decode_tokens_per_s": per_second(decoded),
        }
    )
    return metrics


def run_pd_cluster(
    config: Mapping[str, Any],
    section: ClusterSection,
    *,
    iteration_log: IterationLogWriter | None = None,
    on_finish: Callable[[int], None] | None = None,
    workload: Workload | None = None,
) -> ClusterResult:
    """Simulate the PD fleet of a resolved experiment config (``section.pd`` set); deterministic.

    Raises:
        ConfigError: KVCM's global scope or shared tiers (not wired for PD), HiCache on a decode
            instance, instances of different models or KV formats, or a GPU without a network
            bandwidth and no ``cluster.pd.transfer_bandwidth``.
    """
    pd = section.pd
    assert pd is not None
    if section.kvcm_scope != "local" or section.shared_tiers:
        raise ConfigError("cluster.pd: kvcm_scope global and shared_tiers are not modelled with PD yet")
    first = build_engine(instance_config(config, section, 0), workload=workload)
    builds = [first]
    # The workload is built once, by instance 0 (its context length truncates the prompts), and shared.
    for index in range(1, section.instances):
        builds.append(build_engine(instance_config(config, section, index), workload=first.workload))
    fleet = PDFleet(
        builds,
        pd,
        first.workload,
        max_concurrency=first.max_concurrency,
        iteration_log=iteration_log,
        on_finish=on_finish,
    )
    stats = fleet.run()
    for build in builds:
        if build.l3 is not None:
            build.l3.close()
    records = sorted((r for s in stats for r in s.records), key=lambda r: r.request_id)
    run = PDRun(pd, fleet.requests, fleet.roles, fleet.nic_bandwidth, fleet.network.transfers)
    metrics = pd_metrics(builds, stats, section, run, records)
    resolved = resolved_config(config, first)
    resolved["cluster"] = {
        "instances": section.instances,
        "router": section.router,
        "router_params": dict(section.router_params or {}),
        "instance_overrides": [dict(entry) for entry in section.instance_overrides],
        "kvcm_scope": section.kvcm_scope,
        "shared_tiers": section.shared_tiers,
        "pd": pd.to_dict(),
    }
    assignments = {rid: entry.decode_instance for rid, entry in fleet.requests.items()}
    return ClusterResult(resolved, section, builds, first.workload, records, assignments, metrics, stats, run)
