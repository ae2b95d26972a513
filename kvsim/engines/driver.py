"""The simpy driver: one process for arrivals, one per engine; time advances once per forward step.

The driver owns time. It feeds requests to the scheduler as the client would send them (Poisson or trace
arrivals, optionally behind ``--max-concurrency``, a semaphore over the arrival schedule exactly like
``bench_serving``'s: a request is *sent* when a slot frees, and its latencies count from then), asks the
scheduler for a step, charges the predicted step time, and applies the result.

With HiCache a step also carries host<->device copies (:class:`~kvsim.engines.sglang.hicache.L2Transfers`).
A load-back runs layer by layer on its own stream and each layer's compute waits for its layer (SGLang's
``LayerDoneCounter``); with overlap scheduling the load starts while the previous step still computes
(it is issued when the step is scheduled), so that step's GPU time is a head start. Write-through backups
run on their own stream and cost the step nothing; write-back backups made during an eviction are waited
for by the scheduler, on the CPU side of the step.

With an L3 storage tier the storage transfers (prefetches into host memory, backups out of it) run in
the background on the tier's shared bandwidth and cost no step time; the scheduler sees their progress
at each prefill attempt, and the driver also wakes when one may let a waiting request in.

In a PD fleet (:mod:`kvsim.cluster.pd_fleet`) a driver runs a prefill or a decode server: after each
step it hands a prefill server's ready KV to ``on_kv_ready``, and it records the requests a decode
server finished while taking them in. A prefill server's requests finish on their decode server, so
the fleet counts them in ``handed_off`` to let the engine stop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simpy

from kvsim.engines.client import BenchClient
from kvsim.engines.sglang.hicache import L2Transfers
from kvsim.engines.sglang.scheduler import ReqState, ScheduledBatch, SGLangScheduler
from kvsim.metrics.records import RequestRecord
from kvsim.metrics.writers import IterationLogWriter
from kvsim.perf.ops import BatchSums
from kvsim.perf.predictor import StepTimePredictor
from kvsim.workloads.base import Request, Workload


@dataclass(slots=True)
class DriverStats:
    """Counters of one simulated run."""

    prefill_steps: int = 0
    decode_steps: int = 0
    busy_s: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    #: (step start time, running, waiting) per step, for the queue plot
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


class EngineDriver:
    """Runs one :class:`SGLangScheduler` against a workload under simpy."""

    def __init__(
        self,
        scheduler: SGLangScheduler,
        predictor: StepTimePredictor,
        workload: Workload,
        *,
        max_concurrency: int | None = None,
        iteration_log: IterationLogWriter | None = None,
        on_finish: Callable[[int], None] | None = None,
        env: simpy.Environment | None = None,
    ) -> None:
        """``env`` lets several engines share one clock (:mod:`kvsim.cluster`); by default the driver
        has its own."""
        self.env = env if env is not None else simpy.Environment()
        self.scheduler = scheduler
        self.predictor = predictor
        self.workload = workload
        self.max_concurrency = max_concurrency
        self.iteration_log = iteration_log
        self.on_finish = on_finish
        self.stats = DriverStats()
        #: requests this engine will serve; the engine stops once they have all finished and arrivals
        #: are done (a cluster raises it as its router sends requests here)
        self.expected_requests = len(workload.requests)
        #: requests this engine served that finish on another one (a PD prefill server's, once sent)
        self.handed_off = 0
        #: a PD prefill server's ``(request, last)`` pairs whose KV became ready in a step, after it
        self.on_kv_ready: Callable[[Sequence[tuple[ReqState, bool]]], None] | None = None
        self.client = BenchClient(
            self.env, workload.requests, self._deliver, max_concurrency, self._end_of_client_arrivals
        )
        self._wake: simpy.Event | None = None
        self._arrivals_done = False
        self._step_cache: dict[tuple[int, int], float] = {}
        # HiCache: the previous step's GPU time and end (a load-back's head start), the last step's L2 cost.
        self._prev_gpu_s = 0.0
        self._prev_end_s = -1.0
        self._l2_stall_s = 0.0

    # ---- client side ------------------------------------------------------------------------------------
    def _deliver(self, req: Request) -> None:
        self.scheduler.add_request(req, self.env.now)
        self.wake()

    def _end_of_client_arrivals(self) -> None:
        self._arrivals_done = True

    def send(self, req: Request) -> None:
        """Deliver ``req`` to the server now (a cluster's router sends requests this way)."""
        self._deliver(req)

    def end_arrivals(self) -> None:
        """No more requests will be sent: the engine may stop once its requests have finished."""
        self._arrivals_done = True
        self.wake()

    def wake(self) -> None:
        """Wake the engine process if it is idle (a request arrived, or arrivals ended)."""
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _finished(self, state: ReqState) -> None:
        sched = self.scheduler
        cached = max(state.cached_tokens, 0)
        tiers = sched.hicache is not None  # per-tier counts only where there are tiers
        l3 = sched.l3 is not None
        if sched.l3 is not None:
            sched.l3.forget(state)
        record = RequestRecord(
            request_id=state.req.request_id,
            arrival_s=state.req.arrival_s,
            send_s=state.send_s,
            first_token_s=state.first_token_s,
            finish_s=self.env.now,
            input_len=state.input_len,
            output_len=state.output_len,
            cached_tokens=cached,
            token_times=sched.token_times(state),
            cached_tokens_device=cached - state.cached_host if tiers else None,
            cached_tokens_host=state.cached_host if tiers else None,
            cached_tokens_storage=state.cached_storage if l3 else None,
            prefetched_tokens=state.prefetched_tokens if l3 else None,
            prefetch_s=state.prefetch_s if l3 and state.prefetch_s >= 0 else None,
        )
        self.stats.records.append(record)
        if self.on_finish is not None:
            self.on_finish(len(self.stats.records))
        self.client.finished()

    # ---- server side ------------------------------------------------------------------------------------
    def _step_time_s(self, batch: ScheduledBatch) -> float:
        """Wall time of one step: GPU time from the predictor, plus or overlapped with scheduler CPU time."""
        sums = BatchSums(
            num_requests=batch.num_requests,
            num_tokens=batch.num_tokens,
            sum_context=batch.sum_context,
            attention_pairs=batch.attention_pairs,
            is_decode=batch.kind == "decode",
        )
        gpu_s = self.predictor.predict_sums(sums).step_time_ms / 1e3
        args = self.scheduler.server.args
        cpu_ms = args.scheduler_cpu_base_ms + args.scheduler_cpu_per_request_us / 1e3 * batch.num_requests
        cpu_s = cpu_ms / 1e3
        if batch.l2 is not None:
            return self._step_time_l2_s(batch.l2, gpu_s, cpu_s)
        if args.disable_overlap_schedule:
            return gpu_s + cpu_s
        # Overlap scheduling prepares step N+1 on the CPU while the GPU runs step N.
        return max(gpu_s, cpu_s)

    def _step_time_l2_s(self, l2: L2Transfers, gpu_s: float, cpu_s: float) -> float:
        """Wall time of a HiCache step: the load-back pipelined per layer, write-back waits on the CPU side.

        With ``n`` layers of compute ``C`` each and a load of ``L`` per layer that started ``H`` earlier,
        layer ``i`` computes once layer ``i``'s copy is in: the GPU part is
        ``max(n C, L + n C - H, n L + C - H)``.
        """
        overlap = not self.scheduler.server.args.disable_overlap_schedule
        compute_s = gpu_s
        if l2.load_layer_s > 0:
            assert self.scheduler.hicache is not None
            layers = self.scheduler.hicache.transfer.num_layers
            head = self._prev_gpu_s if overlap and self.env.now == self._prev_end_s else 0.0
            gpu_s = max(
                compute_s,
                compute_s + l2.load_layer_s - head,
                layers * l2.load_layer_s + compute_s / layers - head,
            )
        if overlap:
            step_s = max(gpu_s, cpu_s + l2.blocking_s)
            self._l2_stall_s = step_s - max(compute_s, cpu_s)
        else:
            step_s = gpu_s + cpu_s + l2.blocking_s
            self._l2_stall_s = step_s - (compute_s + cpu_s)
        self._prev_gpu_s = gpu_s
        self._prev_end_s = self.env.now + step_s
        return step_s

    def _l2_extra(self, l2: L2Transfers | None) -> dict[str, float] | None:
        """The step's HiCache numbers for ``iterations.jsonl`` (copy times, tokens, added step time).

        None for steps without host<->device traffic (most decode steps), which keeps the log lean.
        """
        if l2 is None or not (l2.load_tokens or l2.backup_tokens):
            return None
        return {
            "l2_load_ms": l2.load_s * 1e3,
            "l2_load_tokens": l2.load_tokens,
            "l2_backup_ms": l2.backup_s * 1e3,
            "l2_backup_tokens": l2.backup_tokens,
            "l2_stall_ms": self._l2_stall_s * 1e3,
        }

    def _engine(self):  # type: ignore[no-untyped-def]
        env = self.env
        sched = self.scheduler
        log = self.iteration_log
        while True:
            batch = sched.schedule(env.now)
            if sched.finished_early:
                for state in sched.take_finished_early():
                    self._finished(state)
                if batch is None:
                    continue  # a freed client slot may have sent this engine a request meanwhile
            if batch is None:
                done = len(self.stats.records) + self.handed_off >= self.expected_requests
                if self._arrivals_done and not self.client.pending and done:
                    return
                self._wake = env.event()
                wakeup_s = sched.next_wakeup_s(env.now)
                if wakeup_s is None:
                    yield self._wake
                else:  # an arrival, or cache the scheduler is waiting for becoming free
                    yield self._wake | env.timeout(wakeup_s - env.now)
                self._wake = None
                continue
            step_s = self._step_time_s(batch)
            if log is not None:
                log.log(
                    env.now,
                    batch.kind,
                    batch.batch_json(sched.running),
                    step_s * 1e3,
                    sched.num_running,
                    sched.num_waiting,
                    self._l2_extra(batch.l2),
                )
            self.stats.timeline.append((env.now, sched.num_running, sched.num_waiting))
            if batch.kind == "decode":
                self.stats.decode_steps += 1
            else:
                self.stats.prefill_steps += 1
            self.stats.busy_s += step_s
            yield env.timeout(step_s)
            for state in sched.complete(batch, env.now):
                self._finished(state)
            if sched.kv_ready and self.on_kv_ready is not None:
                self.on_kv_ready(sched.take_kv_ready())

    def start_engine(self) -> simpy.Process:
        """Start the server's process on the driver's clock (arrivals are the caller's)."""
        return self.env.process(self._engine())

    def run(self) -> DriverStats:
        """Simulate until every request has finished."""
        self.env.process(self.client.process())
        engine = self.start_engine()
        self.env.run(until=engine)
        return self.stats
