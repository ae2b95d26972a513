"""Fleets of simulated engines: N SGLang instances on one clock behind a router (``cluster:`` section).

:mod:`kvsim.cluster.fleet` runs the fleet, :mod:`kvsim.cluster.routers` picks an instance per request,
:mod:`kvsim.cluster.output` writes the run directory. See docs/cluster.md.
"""

from kvsim.cluster.fleet import ClusterResult, ClusterSection, Fleet, parse_cluster_section, run_cluster
from kvsim.cluster.routers import ROUTERS, make_router

__all__ = [
    "ROUTERS",
    "ClusterResult",
    "ClusterSection",
    "Fleet",
    "make_router",
    "parse_cluster_section",
    "run_cluster",
]
