"""Storage probes with a deadline, so a hung mount cannot stall the service.

The cache runs its probes synchronously from ``poll`` (:mod:`kvsim.cache.health`). In a live server a
probe of an NFS mount whose server went away can block for minutes, and ``poll`` runs on the event loop
that serves every request. :class:`DeadlineProber` runs each backend's probe on a thread of its own and
waits at most ``timeout_s``: a probe that is late has failed. A backend whose previous probe is still
stuck is not probed again (that would only pile up blocked threads); it fails at once until the stuck
probe returns. The threads are daemons, so a probe stuck in the kernel on a dead mount never keeps the
process from exiting after SIGTERM (a thread pool's workers are joined at exit).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from kvsim.cache.backends.base import StorageBackend
from kvsim.cache.health import DEFAULT_PROBE_BYTES, ProbeResult
from kvsim.core import PerfTimer, Timer


class DeadlineProber:
    """A cache prober (``CacheManager(prober=...)``) that gives each probe ``timeout_s`` seconds.

    Args:
        timeout_s: how long a probe may take.
        probe_bytes: size of the round-trip file of file-system probes.
        timer: measures the probes' latency.
    """

    def __init__(
        self, timeout_s: float, probe_bytes: int = DEFAULT_PROBE_BYTES, timer: Timer | None = None
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        self._timeout_s = timeout_s
        self._probe_bytes = probe_bytes
        self._timer: Timer = timer or PerfTimer()
        self._stuck: dict[str, Future[ProbeResult]] = {}

    def __call__(self, backend: StorageBackend) -> ProbeResult:
        """Probe ``backend``; a failed result when it does not answer within the deadline."""
        name = backend.name
        stuck = self._stuck.get(name)
        if stuck is not None:
            if not stuck.done():
                return ProbeResult(
                    False, error=f"storage {name!r}: an earlier probe has not returned yet (hung storage?)"
                )
            del self._stuck[name]
        future: Future[ProbeResult] = Future()

        def run() -> None:
            try:
                future.set_result(backend.probe(self._timer, self._probe_bytes))
            except BaseException as exc:  # handed to the caller, who counts a failed probe
                future.set_exception(exc)

        threading.Thread(target=run, name=f"kvsim-probe-{name}", daemon=True).start()
        try:
            return future.result(timeout=self._timeout_s)
        except FutureTimeout:
            self._stuck[name] = future
            return ProbeResult(
                False,
                self._timeout_s,
                error=f"storage {name!r}: probe did not answer within {self._timeout_s:g} s",
            )


__all__ = ["DeadlineProber"]
