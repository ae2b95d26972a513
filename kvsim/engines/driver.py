"""The simpy driver: one process for arrivals, one per engine; time advances once per forward step.

The driver owns time. It feeds requests to the scheduler as the client would send them (Poisson or trace
arrivals, optionally behind ``--max-concurrency``, a semaphore over the arrival schedule exactly like
``bench_serving``'s: a request is *sent* when a slot frees, and its latencies count from then), asks the
scheduler for a step, charges the predicted step time, and applies the result.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

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
    ) -> None:
        self.env = simpy.Environment()
        self.scheduler = scheduler
        self.predictor = predictor
        self.workload = workload
        self.max_concurrency = max_concurrency
        self.iteration_log = iteration_log
        self.on_finish = on_finish
        self.stats = DriverStats()
        self._in_flight = 0
        self._pending: deque[Request] = deque()
        self._wake: simpy.Event | None = None
        self._arrivals_done = False
        self._step_cache: dict[tuple[int, int], float] = {}

    # ---- client side ------------------------------------------------------------------------------------
    def _arrivals(self):  # type: ignore[no-untyped-def]
        env = self.env
        for req in self.workload.requests:
            delay = req.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            if self.max_concurrency is not None and self._in_flight >= self.max_concurrency:
                self._pending.append(req)
            else:
                self._send(req)
        self._arrivals_done = True

    def _send(self, req: Request) -> None:
        self._in_flight += 1
        self.scheduler.add_request(req, self.env.now)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _finished(self, state: ReqState) -> None:
        sched = self.scheduler
        record = RequestRecord(
            request_id=state.req.request_id,
            arrival_s=state.req.arrival_s,
            send_s=state.send_s,
            first_token_s=state.first_token_s,
            finish_s=self.env.now,
            input_len=state.input_len,
            output_len=state.output_len,
            cached_tokens=max(state.cached_tokens, 0),
            token_times=sched.token_times(state),
        )
        self.stats.records.append(record)
        self._in_flight -= 1
        if self.on_finish is not None:
            self.on_finish(len(self.stats.records))
        if self._pending:
            self._send(self._pending.popleft())

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
        if args.disable_overlap_schedule:
            return gpu_s + cpu_s
        # Overlap scheduling prepares step N+1 on the CPU while the GPU runs step N.
        return max(gpu_s, cpu_s)

    def _engine(self):  # type: ignore[no-untyped-def]
        env = self.env
        sched = self.scheduler
        log = self.iteration_log
        total = len(self.workload.requests)
        while True:
            batch = sched.schedule(env.now)
            if batch is None:
                if self._arrivals_done and not self._pending and len(self.stats.records) >= total:
                    return
                self._wake = env.event()
                yield self._wake
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

    def run(self) -> DriverStats:
        """Simulate until every request has finished."""
        self.env.process(self._arrivals())
        engine = self.env.process(self._engine())
        self.env.run(until=engine)
        return self.stats
