"""kvsim.cache.optimizer: trace replay of KV-cache behaviour, hit-rate and capacity curves.

The offline counterpart of KVCM's Optimizer (reference study §5), answering "how much capacity, on
which tier, under which eviction policy, buys what hit rate":

- :mod:`.trace`: read any supported trace (Mooncake, Qwen-Bailian, KVCM event logs, optimizer-schema,
  hisim collection) into a time-sorted :class:`Trace` of dense block ids;
- :mod:`.policies`: ``lru``, ``random_lru``, ``leaf_aware_lru``, ``lfu``, ``ttl``, ``s3fifo`` and
  ``opt`` (Belady's bound) at block granularity;
- :mod:`.replay`: one policy at one capacity, per the documented replay semantics;
- :mod:`.curve`: exact LRU results for every capacity from one stack-distance pass;
- :mod:`.config`: KVCM optimizer configs (instance groups, quotas, eviction modes);
- :mod:`.logged`: a cache event log replayed as it happened;
- :mod:`.sweep`: parallel capacity sweeps, storage tiers, smallest capacity for a target hit rate;
- :mod:`.output`: per-read CSVs, ``summary.json`` and plots.

``kvsim.cache`` never imports this package (it needs trace readers from ``kvsim.workloads``).
"""

from kvsim.cache.optimizer.config import OptimizerConfig, load_config, parse_config, replay_config
from kvsim.cache.optimizer.curve import StackProfile, lru_curve, smallest_lru_capacity, stack_profile
from kvsim.cache.optimizer.logged import LoggedStats, replay_logged
from kvsim.cache.optimizer.policies import POLICIES, PolicyParams, ReplayPolicy, make_policy
from kvsim.cache.optimizer.replay import ReplayResult, Timeline, replay
from kvsim.cache.optimizer.sweep import (
    Job,
    parse_tiers,
    run_jobs,
    smallest_capacity,
    tier_levels,
    tier_results,
)
from kvsim.cache.optimizer.trace import FORMATS, Trace, build_trace, load_trace

__all__ = [
    "FORMATS",
    "POLICIES",
    "Job",
    "LoggedStats",
    "OptimizerConfig",
    "PolicyParams",
    "ReplayPolicy",
    "ReplayResult",
    "StackProfile",
    "Timeline",
    "Trace",
    "build_trace",
    "load_config",
    "load_trace",
    "lru_curve",
    "make_policy",
    "parse_config",
    "parse_tiers",
    "replay",
    "replay_config",
    "replay_logged",
    "run_jobs",
    "smallest_capacity",
    "smallest_lru_capacity",
    "stack_profile",
    "tier_levels",
    "tier_results",
]
