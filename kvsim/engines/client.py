"""bench_serving's client as a simpy process: the arrival schedule behind a concurrency semaphore.

Requests are issued at their arrival times; with ``max_concurrency`` a request whose turn comes while
every slot is taken waits and is *sent* when a slot frees, as ``bench_serving``'s semaphore does, so its
latencies count from that moment. A single engine's driver and a fleet's router share this one client.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

import simpy

from kvsim.workloads.base import Request


class BenchClient:
    """Issues ``requests`` on ``env``'s clock through ``deliver``, at most ``max_concurrency`` at once."""

    def __init__(
        self,
        env: simpy.Environment,
        requests: Sequence[Request],
        deliver: Callable[[Request], None],
        max_concurrency: int | None = None,
        on_arrivals_done: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.requests = requests
        self.deliver = deliver
        self.max_concurrency = max_concurrency
        self.on_arrivals_done = on_arrivals_done
        self.in_flight = 0
        self.pending: deque[Request] = deque()
        self.arrivals_done = False

    def process(self) -> Iterator[simpy.Event]:
        """The simpy process: wait for each arrival, then send or queue the request."""
        env = self.env
        for req in self.requests:
            delay = req.arrival_s - env.now
            if delay > 0:
                yield env.timeout(delay)
            if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
                self.pending.append(req)
            else:
                self._send(req)
        self.arrivals_done = True
        if self.on_arrivals_done is not None:
            self.on_arrivals_done()

    def finished(self) -> None:
        """A request completed: its slot goes to the next queued request at once."""
        self.in_flight -= 1
        if self.pending:
            self._send(self.pending.popleft())

    @property
    def drained(self) -> bool:
        """Every request has been sent."""
        return self.arrivals_done and not self.pending

    def _send(self, req: Request) -> None:
        self.in_flight += 1
        self.deliver(req)
