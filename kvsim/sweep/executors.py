"""Executors: where a sweep's runs execute.

Every executor takes tasks one at a time (:meth:`Executor.submit`) and hands finished records back in
completion order (:meth:`Executor.next_result`), because a goodput search decides its next rate from
the previous one: the sweep keeps every worker busy with whichever configurations have a run ready.
Results never depend on the executor: each run is a pure function of its task, and the sweep orders
its table by configuration and probe, not by completion.

- ``inline``: runs in this process (``--jobs 1``; notebooks, debugging).
- ``local``: a process pool of ``jobs`` workers (default: one per CPU). Workers start from a fork
  server that has already imported the simulator, so a worker costs a fork, not an interpreter start.
- ``ray``: Ray tasks, one CPU each, on a local Ray started for the sweep (``num_cpus=jobs``) or on the
  cluster at ``address`` (``auto`` or ``HOST:PORT``). Install with ``pip install 'kvsim[dist]'``.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from kvsim.core.errors import UserInputError
from kvsim.sweep.worker import failed_record, run_task

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs tasks (dicts with a ``run_id``) and returns their records as they finish."""

    name: str

    def submit(self, task: Mapping[str, Any]) -> None:
        """Start ``task``."""
        ...

    def next_result(self) -> dict[str, Any]:
        """Block until a submitted task finishes; its record."""
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...


class InlineExecutor:
    """Runs each task in this process when its result is asked for."""

    name = "inline"

    def __init__(self) -> None:
        self._queue: deque[Mapping[str, Any]] = deque()

    def submit(self, task: Mapping[str, Any]) -> None:
        """Queue ``task``."""
        self._queue.append(task)

    def next_result(self) -> dict[str, Any]:
        """Run the oldest queued task."""
        return run_task(self._queue.popleft())

    def close(self) -> None:
        """Nothing to release."""
        self._queue.clear()


class LocalExecutor:
    """A process pool of ``jobs`` workers."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # A fork server forks workers from a clean process that has imported the simulator once: safe
        # beside the progress bar's thread (plain fork is not) and cheaper than spawning interpreters.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["kvsim.sweep.worker", "kvsim.engines.experiment"])
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
        self._futures: dict[Any, str] = {}

    def submit(self, task: Mapping[str, Any]) -> None:
        """Send ``task`` to the pool."""
        self._futures[self._pool.submit(run_task, dict(task))] = task["run_id"]

    def next_result(self) -> dict[str, Any]:
        """The first task to finish."""
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        future = min(done, key=lambda f: self._futures[f])  # any of them; min keeps it reproducible
        run_id = self._futures.pop(future)
        try:
            return future.result()  # type: ignore[no-any-return]
        except Exception as exc:  # the worker process died (killed, out of memory): the run failed
            return failed_record(run_id, f"worker failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop the workers, cancelling what has not started."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()


class RayExecutor:
    """Ray tasks on a local Ray (``num_cpus=jobs``) or a running cluster (``address``)."""

    name = "ray"

    def __init__(self, jobs: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise UserInputError("--executor ray needs Ray: pip install 'kvsim[dist]'") from None
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            import logging

            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            options["logging_level"] = logging.WARNING
            if address is None:
                # "local" starts a Ray for this sweep even where `ray start` left a cluster running.
                ray.init(address="local", num_cpus=jobs, **options)
            else:
                try:
                    ray.init(address=address, **options)
                except ConnectionError as exc:
                    raise UserInputError(f"--address {address}: no Ray cluster there ({exc})") from None
            self._owned = True
        # Ray retries a task whose worker died; a run that raised is already a record, not an error.
        self._remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
        self._refs: dict[Any, str] = {}

    def submit(self, task: Mapping[str, Any]) -> None:
        """Start ``task`` as a Ray task."""
        self._refs[self._remote.remote(dict(task))] = task["run_id"]

    def next_result(self) -> dict[str, Any]:
        """The first task to finish."""
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        run_id = self._refs.pop(ref)
        try:
            return self._ray.get(ref)  # type: ignore[no-any-return]
        except Exception as exc:  # a lost worker or node
            return failed_record(run_id, f"ray task failed: {type(exc).__name__}: {exc}".splitlines()[0])

    def close(self) -> None:
        """Shut Ray down if this executor started it (a Ray the caller started stays up)."""
        self._refs.clear()
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
            self._owned = False


def default_jobs() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_executor(name: str, jobs: int | None = None, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``) with ``jobs`` workers.

    ``local`` with one job runs inline (no worker processes). ``address`` is for ``ray`` only.
    """
    if name not in EXECUTORS:
        raise UserInputError(f"--executor: {name!r} is not one of {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise UserInputError(f"--jobs: must be >= 1, got {jobs}")
    if address is not None and name != "ray":
        raise UserInputError("--address is for --executor ray")
    workers = jobs or default_jobs()
    if name == "ray":
        return RayExecutor(workers, address)
    return InlineExecutor() if workers == 1 else LocalExecutor(workers)
