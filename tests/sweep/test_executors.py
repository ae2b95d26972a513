"""Executors: the same sweep gives the same table inline, in a process pool and on Ray."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from kvsim.core.errors import UserInputError
from kvsim.sweep import load_sweep, run_sweep
from kvsim.sweep.executors import InlineExecutor, LocalExecutor, make_executor

#: 4 configurations x 2 rates = 8 tiny simulations.
EIGHT_RUNS = """\
sweep:
  grid:
    gpu: [H20, H100]
    server.schedule_policy: [fcfs, lpm]
    workload.request_rate: [2, 16]
slo: {p90_ttft_ms: 200}
cost: {gpu_hour: {H20: 1.0, H100: 2.25}}
"""

HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray sized for this machine's CI (2 CPUs, no dashboard), shut down after the module."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'kvsim[dist]')")
    import ray

    # address="local": a Ray of its own even where `ray start` left a cluster (or its address file).
    # On a loaded 2-core machine Ray's node can miss its own startup deadline once; a second start is
    # what an operator would do, and the tests below still judge the sweep, not Ray's boot time.
    for attempt in range(2):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    yield
    ray.shutdown()


def test_make_executor_picks_by_name_and_jobs() -> None:
    assert isinstance(make_executor("local", 1), InlineExecutor)
    pool = make_executor("local", 2)
    assert isinstance(pool, LocalExecutor)
    pool.close()
    with pytest.raises(UserInputError, match=r"^--executor: 'dask' is not one of local, ray$"):
        make_executor("dask")
    with pytest.raises(UserInputError, match=r"^--address is for --executor ray$"):
        make_executor("local", 2, "auto")
    with pytest.raises(UserInputError, match=r"^--jobs: must be >= 1, got 0$"):
        make_executor("local", 0)


def test_process_pool_and_inline_give_identical_tables(
    sweep_file: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = load_sweep(sweep_file(EIGHT_RUNS))
    pool = run_sweep(spec, tmp_path / "pool", jobs=2, plots=False)
    inline = run_sweep(spec, tmp_path / "inline", jobs=1, plots=False)
    assert pool.simulated == inline.simulated == len(pool.table) == 8
    pd.testing.assert_frame_equal(pool.table, inline.table, check_exact=True)
    assert (tmp_path / "pool" / "sweep.parquet").read_bytes() == (
        tmp_path / "inline" / "sweep.parquet"
    ).read_bytes()


def test_local_and_ray_give_identical_tables(
    sweep_file: Callable[[str], Path], tmp_path: Path, ray_session: None
) -> None:
    spec = load_sweep(sweep_file(EIGHT_RUNS))
    local = run_sweep(spec, tmp_path / "local", executor="local", jobs=2, plots=False)
    on_ray = run_sweep(spec, tmp_path / "ray", executor="ray", plots=False)
    assert local.simulated == on_ray.simulated == len(local.table) == 8
    assert list(local.table["status"]) == ["ok"] * 8
    pd.testing.assert_frame_equal(local.table, on_ray.table, check_exact=True)
    assert (tmp_path / "local" / "sweep.parquet").read_bytes() == (
        tmp_path / "ray" / "sweep.parquet"
    ).read_bytes()
    assert local.recommendation == on_ray.recommendation


def test_ray_runs_stub_simulators_and_failures(
    sweep_file: Callable[[str], Path], tmp_path: Path, ray_session: None
) -> None:
    body = (
        "sweep:\n  grid: {gpu: [H20, H100]}\n  goodput: {low: 0.5, high: 64, max_steps: 4}\n"
        "slo: {p90_ttft_ms: 1 s}\n"
    )
    spec = load_sweep(sweep_file(body))
    stub = "tests.sweep.stubs:fails_on_h100"
    on_ray = run_sweep(spec, tmp_path / "ray", executor="ray", plots=False, simulator=stub)
    inline = run_sweep(spec, tmp_path / "inline", jobs=1, plots=False, simulator=stub)
    pd.testing.assert_frame_equal(on_ray.table, inline.table, check_exact=True)
    assert list(on_ray.table["status"]) == ["ok"] * 4 + ["failed"]
