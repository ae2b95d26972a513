"""PD disaggregation's settings and its KV transfer network (``cluster.pd``).

A PD fleet splits its instances into a prefill pool and a decode pool (prefill instances first, by
index); :mod:`kvsim.cluster.pd_fleet` runs it. This module holds what needs no engine: the validated
``cluster.pd`` section and :class:`TransferNetwork`, the network the prompts' KV crosses.

Transfer cost. A request's KV is ``prompt tokens x KV bytes per token`` (what its decode server
holds: every layer's keys and values of the whole prompt). A transfer first waits
``transfer_latency_us`` (the RDMA round trip and the transfer engine's submit and completion poll;
it uses no bandwidth), then moves its bytes. Each GPU has one RDMA NIC of the GPU profile's
``interconnect.network`` bandwidth (or ``transfer_bandwidth``): an instance's egress and ingress
each carry ``NIC bandwidth x TP size``, and one transfer uses as many NICs as the smaller side has
(``NIC bandwidth x min(prefill TP, decode TP)``). Alone on its link, ``2000`` tokens of Qwen3-8B
(147,456 B each, 294,912,000 B) at 50 GB/s with 20 us latency take ``20 us + 5.89824 ms``.

Sharing. Transfers in flight at once share the instances' NICs max-min fairly (the fluid model of
many RDMA flows): every transfer gets the same rate unless a NIC it does not saturate lets it go
faster, and each is capped by its own link. Two transfers out of one prefill instance each move at
half its egress; when one ends, the other speeds up at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvsim.cluster.routers import make_router
from kvsim.core.errors import ConfigError
from kvsim.core.units import parse_bandwidth
from kvsim.engines.sglang.scheduler import NUM_RESERVED_DECODE_TOKENS

#: The keys of ``cluster.pd``.
PD_KEYS = (
    "prefill_instances",
    "decode_instances",
    "transfer_bandwidth",
    "transfer_latency_us",
    "num_reserved_decode_tokens",
    "prefill_router",
    "prefill_router_params",
    "decode_router",
    "decode_router_params",
)
#: Default fixed cost of one KV transfer: an RDMA write's round trip plus the transfer engine's submit
#: and completion poll (kvsim estimate; set ``cluster.pd.transfer_latency_us`` to a measured value).
DEFAULT_TRANSFER_LATENCY_US = 20.0
#: Bytes below which a transfer counts as finished (absorbs rounding of the shared rates).
_DONE_BYTES = 1e-3
#: Relative slack when comparing fair shares (rates of equal flows computed along different paths).
_RATE_SLACK = 1e-12


@dataclass(frozen=True, slots=True)
class PDSection:
    """The validated ``cluster.pd`` section."""

    prefill_instances: int
    decode_instances: int
    #: bytes/s of one GPU's NIC; None: each instance's GPU profile ``interconnect.network``
    transfer_bandwidth: float | None = None
    transfer_latency_us: float = DEFAULT_TRANSFER_LATENCY_US
    num_reserved_decode_tokens: int = NUM_RESERVED_DECODE_TOKENS
    prefill_router: str = "round_robin"
    prefill_router_params: Mapping[str, Any] = field(default_factory=dict)
    decode_router: str = "round_robin"
    decode_router_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def transfer_latency_s(self) -> float:
        """The fixed cost of one transfer in seconds."""
        return self.transfer_latency_us / 1e6

    @property
    def instances(self) -> int:
        """Prefill plus decode instances."""
        return self.prefill_instances + self.decode_instances

    def to_dict(self) -> dict[str, Any]:
        """The section as ``config.resolved.yaml`` shows it (the bandwidth in GB/s, None: profile)."""
        return {
            "prefill_instances": self.prefill_instances,
            "decode_instances": self.decode_instances,
            "transfer_bandwidth": (
                None if self.transfer_bandwidth is None else f"{self.transfer_bandwidth / 1e9:g} GB/s"
            ),
            "transfer_latency_us": self.transfer_latency_us,
            "num_reserved_decode_tokens": self.num_reserved_decode_tokens,
            "prefill_router": self.prefill_router,
            "prefill_router_params": dict(self.prefill_router_params),
            "decode_router": self.decode_router,
            "decode_router_params": dict(self.decode_router_params),
        }


def _count(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"cluster.pd.{key}: must be an integer >= 1, got {value!r}")
    return value


def parse_pd_section(
    body: Any, *, router: str = "round_robin", router_params: Mapping[str, Any] | None = None
) -> PDSection:
    """Validate ``cluster.pd``; the prefill router defaults to ``cluster.router`` and its parameters.

    Raises:
        ConfigError: a non-mapping, an unknown key (the valid ones listed), or a bad value.
    """
    if not isinstance(body, Mapping):
        raise ConfigError("cluster.pd: must be a mapping with prefill_instances and decode_instances")
    for key in body:
        if key not in PD_KEYS:
            raise ConfigError(f"cluster.pd: unknown key {key!r}; valid: {', '.join(PD_KEYS)}")
    prefill = _count(body, "prefill_instances")
    decode = _count(body, "decode_instances")
    bandwidth = None
    if body.get("transfer_bandwidth") is not None:
        bandwidth = parse_bandwidth(body["transfer_bandwidth"], "cluster.pd.transfer_bandwidth")
        if not bandwidth > 0:
            shown = body["transfer_bandwidth"]
            raise ConfigError(f"cluster.pd.transfer_bandwidth: must be > 0, got {shown!r}")
    latency = body.get("transfer_latency_us", DEFAULT_TRANSFER_LATENCY_US)
    if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency >= 0:
        raise ConfigError(f"cluster.pd.transfer_latency_us: must be a number >= 0, got {latency!r}")
    reserved = body.get("num_reserved_decode_tokens", NUM_RESERVED_DECODE_TOKENS)
    if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
        raise ConfigError(f"cluster.pd.num_reserved_decode_tokens: must be an integer >= 0, got {reserved!r}")
    routers: dict[str, tuple[str, dict[str, Any]]] = {}
    defaults = {"prefill": (router, router_params), "decode": ("round_robin", None)}
    for side, (default_name, default_params) in defaults.items():
        name = body.get(f"{side}_router") or default_name
        params = body.get(f"{side}_router_params")
        if params is None:
            params = default_params or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"cluster.pd.{side}_router_params: must be a mapping")
        make_router(str(name), params, prefix=f"cluster.pd.{side}_")  # refuse bad names before a run
        routers[side] = (str(name), dict(params))
    return PDSection(
        prefill,
        decode,
        bandwidth,
        float(latency),
        reserved,
        routers["prefill"][0],
        routers["prefill"][1],
        routers["decode"][0],
        routers["decode"][1],
    )


def transfer_seconds(nbytes: float, bandwidth: float, latency_s: float) -> float:
    """Time of one transfer alone on its link: ``latency + bytes / bandwidth``."""
    return latency_s + nbytes / bandwidth


@dataclass(eq=False, slots=True)
class KVTransfer:
    """One transfer of KV from a prefill instance (``src``) to a decode instance (``dst``)."""

    src: int
    dst: int
    nbytes: float
    #: bytes/s this transfer's own link carries at most (the NICs of the smaller side)
    rate_cap: float
    submit_s: float
    #: when the latency has passed and the bytes start to move
    join_s: float
    on_done: Callable[[KVTransfer, float], None]
    seq: int
    remaining: float = 0.0
    rate: float = 0.0
    done_s: float | None = None


class TransferNetwork:
    """Every instance's NICs and the KV transfers in flight on them, advanced lazily in time order.

    ``egress[i]``/``ingress[i]`` are instance ``i``'s outgoing and incoming NIC bandwidths (bytes/s).
    :meth:`submit` adds a transfer, :meth:`next_event_s` says when the next one starts moving or ends,
    and :meth:`advance` runs every start and end up to a time, calling each finished transfer's
    ``on_done(transfer, time)`` in time order (ties: submission order). Rates change only at those
    events, so the work is proportional to the events, never to the time elapsed.
    """

    def __init__(self, egress: Sequence[float], ingress: Sequence[float]) -> None:
        self.egress = list(egress)
        self.ingress = list(ingress)
        self._pending: list[KVTransfer] = []  # in their latency, by (join time, seq)
        self._active: list[KVTransfer] = []  # moving bytes, by seq
        self._now = 0.0
        self._seq = 0
        self._advancing = False
        #: bytes moved and transfers submitted, for the run's metrics
        self.moved_bytes = 0.0
        self.transfers = 0

    def submit(
        self,
        src: int,
        dst: int,
        nbytes: float,
        rate_cap: float,
        latency_s: float,
        now: float,
        on_done: Callable[[KVTransfer, float], None],
    ) -> KVTransfer:
        """Start sending ``nbytes`` from ``src`` to ``dst`` at ``now`` (after everything due by then)."""
        if not (rate_cap > 0 and self.egress[src] > 0 and self.ingress[dst] > 0):
            raise ValueError(f"transfer {src}->{dst}: its link and both NICs need a positive bandwidth")
        self.advance(now)
        transfer = KVTransfer(src, dst, float(nbytes), rate_cap, now, now + latency_s, on_done, self._seq)
        transfer.remaining = float(nbytes)
        self._seq += 1
        self.transfers += 1
        self._pending.append(transfer)
        self._pending.sort(key=lambda t: (t.join_s, t.seq))
        if transfer.join_s <= now:
            self._step_to(now)
        return transfer

    @property
    def in_flight(self) -> int:
        """Transfers submitted and not finished."""
        return len(self._pending) + len(self._active)

    def next_event_s(self) -> float | None:
        """When the next transfer starts moving bytes or finishes, or None when none is in flight."""
        times = [self._pending[0].join_s] if self._pending else []
        for transfer in self._active:
            if transfer.rate > 0:
                times.append(self._now + max(transfer.remaining, 0.0) / transfer.rate)
        return min(times) if times else None

    def advance(self, now: float) -> None:
        """Run every event up to ``now`` in time order, then move the transfers' bytes on to ``now``."""
        assert not self._advancing, "a transfer's on_done must not advance the network"
        self._advancing = True
        try:
            while True:
                event = self.next_event_s()
                if event is None or event > now:
                    break
                self._step_to(event)
            self._move(now)
        finally:
            self._advancing = False

    def _move(self, now: float) -> None:
        """Move every active transfer's bytes on to ``now`` at its current rate."""
        if now <= self._now:
            return
        elapsed = now - self._now
        for transfer in self._active:
            moved = transfer.rate * elapsed
            transfer.remaining -= moved
            self.moved_bytes += moved
        self._now = now

    def _step_to(self, event: float) -> None:
        """Move to ``event``; finish the transfers done by then, start those whose latency ended there."""
        self._move(event)
        finished = [t for t in self._active if t.remaining <= _DONE_BYTES]
        if finished:
            self._active = [t for t in self._active if t.remaining > _DONE_BYTES]
        while self._pending and self._pending[0].join_s <= event:
            self._active.append(self._pending.pop(0))
        self._active.sort(key=lambda t: t.seq)
        self._share()
        for transfer in finished:
            self.moved_bytes += transfer.remaining  # the rounding left over
            transfer.remaining = 0.0
            transfer.rate = 0.0
            transfer.done_s = event
            transfer.on_done(transfer, event)

    def _share(self) -> None:
        """Max-min fair rates (progressive filling): raise every unfixed transfer's rate together until a
        NIC or a transfer's own link is full; fix the transfers it bottlenecks; repeat with the rest."""
        unfixed = list(self._active)
        left: dict[tuple[str, int], float] = {}
        for transfer in unfixed:
            left[("out", transfer.src)] = self.egress[transfer.src]
            left[("in", transfer.dst)] = self.ingress[transfer.dst]
        while unfixed:
            users: dict[tuple[str, int], int] = {}
            for transfer in unfixed:
                for nic in (("out", transfer.src), ("in", transfer.dst)):
                    users[nic] = users.get(nic, 0) + 1
            level = min(
                min(left[nic] / count for nic, count in users.items()),
                min(transfer.rate_cap for transfer in unfixed),
            )
            level = max(level, 0.0)
            bound = level * (1 + _RATE_SLACK)
            full = {nic for nic, count in users.items() if left[nic] / count <= bound}
            fixed = [
                t for t in unfixed if t.rate_cap <= bound or ("out", t.src) in full or ("in", t.dst) in full
            ]
            for transfer in fixed:
                transfer.rate = level
                left[("out", transfer.src)] -= level
                left[("in", transfer.dst)] -= level
            unfixed = [t for t in unfixed if t not in fixed]
