"""A simulated SGLang server: its server arguments, KV pool with radix prefix cache, and scheduler."""

from kvsim.engines.sglang.config import ResolvedServer, ServerArgs, resolve_server
from kvsim.engines.sglang.scheduler import ScheduledBatch, SGLangScheduler, SimulationError

__all__ = [
    "ResolvedServer",
    "SGLangScheduler",
    "ScheduledBatch",
    "ServerArgs",
    "SimulationError",
    "resolve_server",
]
