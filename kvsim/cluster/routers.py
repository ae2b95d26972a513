"""Request routers of a fleet: which engine instance serves each request.

A router sees every instance through an :class:`InstanceView` (its load and what its own radix tree
holds) and picks one instance index per request at the moment the client sends it. Routers are
deterministic: ties always go to the lowest instance index, so a run is reproducible.

``round_robin``
    Instances in turn.
``least_load``
    The instance with the least outstanding work, :meth:`InstanceView.load_tokens`: prompt plus output
    tokens of the requests sent to it and not finished (running, waiting or mid-prefill).
``session_affinity``
    ``session_id mod N`` when the request carries a session id; otherwise a CRC32 of its first
    ``block_tokens`` prompt tokens (default 512, the Mooncake trace's block), mod N. Requests of one
    conversation, or sharing a first block, always land on the same instance.
``cache_aware``
    ``score = hit_weight * (device_hit + host_weight * host_hit + l3_weight * l3_extra)
    - load_weight * load_tokens`` and the highest score wins. ``device_hit``/``host_hit`` are the
    prompt tokens (whole pages, the last prompt token excluded, as the engine matches) the instance
    holds in device and only-host memory, from the router's own index of the engines' KV cache events
    (:mod:`kvsim.cluster.kv_events`; the events reach it ``event_lag_s`` after they happen, as over
    Dynamo's or llm-d's event bus). ``l3_extra`` is what KVCM holds of the prompt beyond that: the
    router asks the instance's KVCM (the shared one in a global fleet) for the L3 prefix only, with one
    ``GetCacheLocation`` prefix match per request and KVCM, and counts the tokens past the instance's
    device and host hit (a prefetch from storage saves prefill too, at storage speed).
    ``load_tokens`` is ``least_load``'s load. Defaults ``hit_weight=1.0``, ``host_weight=0.8`` (a host
    hit still costs a load-back over PCIe), ``l3_weight=0.5`` (a storage read is slower still),
    ``load_weight=0.1`` (a token of outstanding work weighs a tenth of a prompt token saved),
    ``event_lag_s=0.01``; all set in ``cluster.router_params``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from kvsim.core.errors import ConfigError
from kvsim.workloads.base import Request

ROUTERS = ("round_robin", "least_load", "session_affinity", "cache_aware")


class InstanceView(Protocol):
    """What a router may know about one engine instance."""

    def load_tokens(self) -> int:
        """Outstanding work: prompt plus output tokens of requests sent to the instance, not finished."""
        ...

    def prefix_hit(self, req: Request) -> tuple[int, int]:
        """Prompt tokens of ``req`` cached on the instance: ``(device, host-only)``, whole pages."""
        ...

    def l3_hit(self, req: Request) -> int:
        """Prompt tokens of ``req`` the instance's KVCM holds (0 without a KVCM L3)."""
        ...


class Router(Protocol):
    """Picks the instance that serves a request."""

    name: str

    def choose(self, req: Request, instances: Sequence[InstanceView]) -> int:
        """The index into ``instances`` that serves ``req``."""
        ...


class RoundRobinRouter:
    """Instances in turn, starting with instance 0."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, req: Request, instances: Sequence[InstanceView]) -> int:
        """The next instance in turn."""
        index = self._next % len(instances)
        self._next = index + 1
        return index


class LeastLoadRouter:
    """The instance with the least outstanding tokens (ties: lowest index)."""

    name = "least_load"

    def choose(self, req: Request, instances: Sequence[InstanceView]) -> int:
        """The least loaded instance."""
        loads = [view.load_tokens() for view in instances]
        return loads.index(min(loads))


class SessionAffinityRouter:
    """A conversation (or a shared first prompt block) always goes to the same instance."""

    name = "session_affinity"

    def __init__(self, block_tokens: int = 512) -> None:
        if block_tokens <= 0:
            raise ConfigError(f"cluster.router_params.block_tokens: must be > 0, got {block_tokens}")
        self.block_tokens = block_tokens

    def choose(self, req: Request, instances: Sequence[InstanceView]) -> int:
        """``session_id mod N``, else a CRC32 of the first prompt block mod N."""
        if req.session_id is not None:
            return int(req.session_id) % len(instances)
        # CRC32 over the int64 bytes: stable across processes, unlike Python's salted str hash.
        block = np.ascontiguousarray(req.token_ids[: self.block_tokens], dtype=np.int64)
        return zlib.crc32(block.tobytes()) % len(instances)


class CacheAwareRouter:
    """Expected prefill saved on each instance's own radix tree, minus a load penalty (module doc)."""

    name = "cache_aware"

    def __init__(
        self,
        hit_weight: float = 1.0,
        host_weight: float = 0.8,
        load_weight: float = 0.1,
        l3_weight: float = 0.5,
        event_lag_s: float = 0.01,
    ) -> None:
        for key, value in (
            ("hit_weight", hit_weight),
            ("host_weight", host_weight),
            ("load_weight", load_weight),
            ("l3_weight", l3_weight),
            ("event_lag_s", event_lag_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ConfigError(f"cluster.router_params.{key}: must be a finite number >= 0, got {value!r}")
        self.hit_weight = float(hit_weight)
        self.host_weight = float(host_weight)
        self.load_weight = float(load_weight)
        self.l3_weight = float(l3_weight)
        #: how long the engines' KV cache events take to reach the router's index
        self.event_lag_s = float(event_lag_s)

    def score(self, req: Request, view: InstanceView) -> float:
        """``hit_weight * (device + host_weight * host + l3_weight * l3_extra) - load_weight * load``."""
        device, host = view.prefix_hit(req)
        saved = device + self.host_weight * host
        if self.l3_weight:
            l3 = view.l3_hit(req)
            if l3 > device + host:
                saved += self.l3_weight * (l3 - device - host)
        return self.hit_weight * saved - self.load_weight * view.load_tokens()

    def choose(self, req: Request, instances: Sequence[InstanceView]) -> int:
        """The highest score (ties: lowest index)."""
        scores = [self.score(req, view) for view in instances]
        return scores.index(max(scores))


_FACTORIES: dict[str, Any] = {
    "round_robin": RoundRobinRouter,
    "least_load": LeastLoadRouter,
    "session_affinity": SessionAffinityRouter,
    "cache_aware": CacheAwareRouter,
}
_PARAMS: dict[str, tuple[str, ...]] = {
    "round_robin": (),
    "least_load": (),
    "session_affinity": ("block_tokens",),
    "cache_aware": ("hit_weight", "host_weight", "load_weight", "l3_weight", "event_lag_s"),
}


def make_router(name: str, params: Mapping[str, Any] | None = None, prefix: str = "cluster.") -> Router:
    """The router called ``name`` with ``params`` (``cluster.router_params``); unknown names or
    parameters are a :class:`~kvsim.core.errors.ConfigError` listing the valid ones. ``prefix`` names
    the keys in errors: ``cluster.pd.decode_`` for a PD fleet's decode router."""
    if name not in _FACTORIES:
        raise ConfigError(f"{prefix}router: unknown router {name!r}; valid: {', '.join(ROUTERS)}")
    params = dict(params or {})
    for key in params:
        if key not in _PARAMS[name]:
            valid = ", ".join(_PARAMS[name]) or "none"
            raise ConfigError(f"{prefix}router_params.{key}: not a parameter of {name}; valid: {valid}")
    router: Router = _FACTORIES[name](**params)
    return router
