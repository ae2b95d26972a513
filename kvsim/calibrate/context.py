"""What every microbenchmark shares: the device, the time budget, random inputs and the timing method.

Timing method (the same for every table unless a benchmark says otherwise):

* On a GPU, each repeat is bracketed by CUDA events and the table keeps the **median** of the repeats,
  after warm-up calls (which also absorb cuBLAS heuristics and Triton compilation). Before the repeats
  are queued the GPU is held busy by ``torch.cuda._sleep`` so that the CPU queues all of them first:
  the events then measure GPU time of the kernels themselves, not the host's launch gaps (launch cost is
  measured separately in ``launch.csv``). End-to-end steps are timed without that trick, as served.
* Weights are rotated through enough copies to exceed twice the L2 cache, so that a GEMM reads its
  weights from HBM as it does in a real forward pass, where every layer has different weights.
* Inputs are random normal (never zeros: zero operands let some hardware skip work or power down).
* Clocks are left as found; ``meta.json`` records them.
* On the CPU (``--quick``) repeats are timed with the injected wall timer instead of events.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kvsim.core.timer import Timer

#: GPU cycles per second assumed when sizing the queue-ahead sleep (a longer sleep only costs a little).
_ASSUMED_CLOCK_HZ = 2.0e9


#: A task stops (as failed) once this many of its items have failed.
MAX_ITEM_ERRORS = 8


class OutOfBudget(Exception):
    """Raised inside a benchmark when its next item would not finish before the task's deadline."""


@dataclass
class BenchContext:
    """The state one calibration run hands to every benchmark function."""

    torch: Any
    device: Any
    quick: bool
    timer: Timer
    deadline: float
    l2_bytes: int = 0
    sms: int = 1
    has_triton: bool = False
    fp8: bool = False
    log: Callable[[str], None] = print
    notes: dict[str, Any] = field(default_factory=dict)
    _item_started: float | None = None
    _item_seconds: list[float] = field(default_factory=list)
    _task_errors: int = 0

    # ---- budget -----------------------------------------------------------------------------------
    def now(self) -> float:
        """Monotonic seconds from the injected timer."""
        return self.timer.monotonic()

    def remaining(self) -> float:
        """Seconds left before the current task's deadline."""
        return self.deadline - self.now()

    def begin_task(self, deadline: float) -> None:
        """Start a task that must end by ``deadline`` (forgets the previous task's item times)."""
        self.deadline = deadline
        self._item_started = None
        self._item_seconds = []
        self._task_errors = 0

    def next_item(self, weight: float = 1.0) -> None:
        """Call before each measurement item; raises :class:`OutOfBudget` when it would not fit.

        The guess for the next item is the median time of the items so far in this task, times ``weight``
        (a benchmark passes a larger weight for an item it knows to be heavier, e.g. a longer sequence).
        """
        now = self.now()
        if self._item_started is not None:
            self._item_seconds.append(now - self._item_started)
        guess = statistics.median(self._item_seconds) * weight if self._item_seconds else 0.0
        if now + guess > self.deadline:
            raise OutOfBudget(f"{self.deadline - now:.1f} s left, next item needs ~{guess:.1f} s")
        self._item_started = now

    @contextmanager
    def item(self, what: str) -> Iterator[None]:
        """Run one measurement item; a failure of that item is logged and recorded, not raised.

        A bad shape (out of memory, a kernel that refuses it) must not cost the rest of the run. Errors
        that poison the CUDA context make the following items fail too; the task then ends as failed
        when more than :data:`MAX_ITEM_ERRORS` items have failed.
        """
        try:
            yield
        except OutOfBudget:
            raise
        except Exception as exc:
            errors = self.notes.setdefault("errors", [])
            message = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            errors.append(message[:300])
            self.log(f"  item failed: {message[:300]}")
            self.release(collect=True)
            self._task_errors += 1
            if self._task_errors > MAX_ITEM_ERRORS:
                raise RuntimeError(
                    f"more than {MAX_ITEM_ERRORS} items failed; last: {message[:200]}"
                ) from exc

    # ---- device helpers ---------------------------------------------------------------------------
    @property
    def is_cuda(self) -> bool:
        """Whether the run measures a CUDA GPU."""
        return self.device.type == "cuda"

    def sync(self) -> None:
        """Wait for the device."""
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def rand(self, *shape: int, dtype: Any = None, scale: float = 1.0) -> Any:
        """A random normal tensor on the device (``dtype`` defaults to bf16; fp8 is cast from bf16)."""
        torch = self.torch
        dtype = dtype or torch.bfloat16
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            out = torch.randn(*shape, device=self.device, dtype=dtype)
            return out.mul_(scale) if scale != 1.0 else out
        return (torch.randn(*shape, device=self.device, dtype=torch.bfloat16) * scale).to(dtype)

    def copies_for(self, nbytes: int, cap: int = 64) -> int:
        """How many copies of an operand of ``nbytes`` to rotate so that the set exceeds twice the L2."""
        if not self.is_cuda or nbytes <= 0:
            return 1
        return max(1, min(cap, math.ceil(2 * self.l2_bytes / nbytes) + 1))

    def free_memory(self) -> int:
        """Free device memory in bytes (the host's available memory on the CPU)."""
        if self.is_cuda:
            free, _ = self.torch.cuda.mem_get_info(self.device)
            return int(free)
        import os

        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):  # pragma: no cover - non-POSIX hosts
            return 8 * 1024**3

    def release(self, collect: bool = False) -> None:
        """Return cached device memory between items; ``collect`` also runs the garbage collector (slow)."""
        if collect:
            import gc

            gc.collect()
        if self.is_cuda:
            self.torch.cuda.empty_cache()

    # ---- timing -----------------------------------------------------------------------------------
    def measure(
        self,
        fn: Callable[[int], Any],
        *,
        warmup: int = 2,
        min_reps: int = 5,
        max_reps: int = 25,
        target_s: float = 0.05,
        queue_ahead: bool = True,
        host_s_per_rep: float = 30e-6,
    ) -> float:
        """Median milliseconds of ``fn(rep)`` (``rep`` lets ``fn`` rotate buffers).

        The repeat count adapts to the call's duration: enough repeats to fill ``target_s``, within
        ``[min_reps, max_reps]``. ``queue_ahead=False`` times calls as served, launch gaps included;
        ``host_s_per_rep`` is the host time one call takes to queue (how long the GPU is held asleep).
        """
        if self.quick:
            warmup, min_reps, max_reps, target_s = min(warmup, 1), min(min_reps, 3), min(max_reps, 5), 0.01
        for i in range(warmup):
            fn(i)
        self.sync()
        if not self.is_cuda:
            return self._measure_host(fn, min_reps, max_reps, target_s)
        torch = self.torch
        probe_start = torch.cuda.Event(enable_timing=True)
        probe_end = torch.cuda.Event(enable_timing=True)
        probe_start.record()
        fn(warmup)
        probe_end.record()
        torch.cuda.synchronize()
        probe_ms = max(probe_start.elapsed_time(probe_end), 1e-3)
        reps = int(min(max_reps, max(min_reps, target_s * 1e3 / probe_ms)))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        if queue_ahead and hasattr(torch.cuda, "_sleep"):
            # The GPU sleeps as long as the host needs to queue every repeat, so that none waits on the host.
            torch.cuda._sleep(int(min(reps * host_s_per_rep, 0.05) * _ASSUMED_CLOCK_HZ))
        for i in range(reps):
            starts[i].record()
            fn(i + warmup + 1)
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))

    def _measure_host(self, fn: Callable[[int], Any], min_reps: int, max_reps: int, target_s: float) -> float:
        t0 = self.now()
        fn(0)
        probe = max(self.now() - t0, 1e-7)
        reps = int(min(max_reps, max(min_reps, target_s / probe)))
        times = []
        for i in range(reps):
            t0 = self.now()
            fn(i + 1)
            times.append((self.now() - t0) * 1e3)
        return statistics.median(times)
