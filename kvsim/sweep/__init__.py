"""Capacity-planning sweeps: grids over experiment settings, SLO goodput, cost and Pareto fronts.

``kvsim sweep FILE.yaml`` and, from Python::

    from kvsim.sweep import load_sweep, run_sweep

    spec = load_sweep("experiments/sweeps/mooncake_capacity.yaml", {"workload.num_prompts": 200})
    result = run_sweep(spec, "runs/sweep-small", jobs=1)
    result.table        # one row per run (pandas), as in sweep.parquet
    result.configs      # one row per configuration: goodput, cost, Pareto front
    print(result.recommendation.text)

See docs/sweep.md for the file format, the goodput and cost definitions and the executors.
"""

from kvsim.sweep.runner import SweepResult, run_sweep
from kvsim.sweep.spec import Configuration, SweepSpec, load_sweep
from kvsim.sweep.table import Recommendation

__all__ = ["Configuration", "Recommendation", "SweepResult", "SweepSpec", "load_sweep", "run_sweep"]
