"""Transfers to and from storage tiers, sharing each tier's bandwidth among the transfers using it.

Each (tier, direction) is one *channel* with the tier's read or write bandwidth. A transfer first
waits the tier's latency (one storage operation's round trip; it uses no bandwidth meanwhile), then
joins the channel, where every transfer present gets an equal share of the bandwidth (processor
sharing, the fluid model of many streams over one link). A transfer alone moves at the full rate; two
at once each get half, and the first to finish hands its share back to the others.

The state is advanced lazily: :meth:`TransferIO.next_event_s` says when the next transfer joins a
channel or finishes, :meth:`TransferIO.step` moves time there and returns the transfers that finished,
and :meth:`TransferIO.advance` moves the fluid state to a time before the next event. Callers (the L3
controller) interleave these steps with their own timed events so that everything happens in time
order. The work per step is proportional to the transfers in flight, never to the time elapsed.
A scripted slowdown (:meth:`TransferIO.scale_bandwidth`) changes a tier's rate from the current time on.

A fleet with shared tiers (``cluster.shared_tiers``) gives every engine's L3 controller one
``TransferIO(track_owners=True)``: a tier's bandwidth is then shared by every transfer of every engine
on it, and each transfer's ``owner`` (the engine's index) keeps per-engine bytes and busy time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from kvsim.hardware.storage import StorageTier

#: Bytes below which a transfer counts as finished (absorbs floating-point rounding of the shares).
_DONE_BYTES = 1e-3


@dataclass(eq=False, slots=True)
class Transfer:
    """One transfer: ``nbytes`` over ``channel`` after ``latency_s``; ``on_done(time)`` when it ends."""

    channel: tuple[str, str]
    nbytes: float
    on_done: Callable[[float], None]
    remaining: float = 0.0
    seq: int = 0
    started_s: float = 0.0
    done_s: float | None = None
    cancelled: bool = False
    owner: int = 0  # the engine that submitted it (a shared IO's per-engine totals)


@dataclass(slots=True)
class _Channel:
    bandwidth: float
    base_bandwidth: float
    last_s: float = 0.0
    transfers: list[Transfer] = field(default_factory=list)
    busy_s: float = 0.0
    moved_bytes: float = 0.0
    #: per owner: bytes moved and seconds with at least one of its transfers moving (None: not kept)
    owner_bytes: dict[int, float] | None = None
    owner_busy_s: dict[int, float] | None = None

    def advance(self, now: float) -> None:
        """Move every transfer on the channel forward to ``now`` at its equal share of the bandwidth."""
        if now <= self.last_s:
            return
        if self.transfers:
            share = self.bandwidth * (now - self.last_s) / len(self.transfers)
            for transfer in self.transfers:
                transfer.remaining -= share
            self.busy_s += now - self.last_s
            self.moved_bytes += share * len(self.transfers)
            if self.owner_bytes is not None and self.owner_busy_s is not None:
                owners = set()
                for transfer in self.transfers:
                    self.owner_bytes[transfer.owner] = self.owner_bytes.get(transfer.owner, 0.0) + share
                    owners.add(transfer.owner)
                for owner in owners:
                    self.owner_busy_s[owner] = self.owner_busy_s.get(owner, 0.0) + now - self.last_s
        self.last_s = now

    def next_done_s(self) -> float | None:
        if not self.transfers:
            return None
        least = min(t.remaining for t in self.transfers)
        return self.last_s + max(least, 0.0) * len(self.transfers) / self.bandwidth


class TransferIO:
    """Every storage channel of one engine (or, shared, of a fleet) and the transfers in flight on them.

    Args:
        track_owners: keep bytes and busy time per transfer owner (a shared IO's per-engine totals).
    """

    def __init__(self, *, track_owners: bool = False) -> None:
        self._channels: dict[tuple[str, str], _Channel] = {}
        self._joining: list[tuple[float, int, Transfer]] = []  # (join time, seq, transfer)
        self._seq = 0
        self._now = 0.0
        self.track_owners = track_owners
        # tier name -> bandwidth multiplier of a scripted slowdown (kvsim.engines.sglang.faults)
        self._factors: dict[str, float] = {}
        #: called after a transfer is cancelled: the others on its channel now move faster, so engines
        #: waiting on them may have to wake earlier than they planned (set by a shared group)
        self.on_cancel: Callable[[], None] | None = None

    def channel(self, tier: StorageTier, direction: str) -> tuple[str, str]:
        """The channel of ``tier`` in ``direction`` (``read`` or ``write``), created on first use."""
        key = (tier.name, direction)
        if key not in self._channels:
            bandwidth = tier.read_bandwidth if direction == "read" else tier.write_bandwidth
            channel = _Channel(bandwidth * self._factors.get(tier.name, 1.0), bandwidth, self._now)
            if self.track_owners:
                channel.owner_bytes, channel.owner_busy_s = {}, {}
            self._channels[key] = channel
        return key

    def submit(
        self,
        tier: StorageTier,
        direction: str,
        nbytes: float,
        now: float,
        on_done: Callable[[float], None],
        owner: int = 0,
    ) -> Transfer:
        """Start a transfer of ``nbytes`` at ``now`` for ``owner``: it joins the channel after the tier's
        latency."""
        key = self.channel(tier, direction)
        latency = tier.read_latency_s if direction == "read" else tier.write_latency_s
        self._seq += 1
        transfer = Transfer(key, float(nbytes), on_done, float(nbytes), self._seq, now, owner=owner)
        heapq.heappush(self._joining, (now + latency, self._seq, transfer))
        return transfer

    def scale_bandwidth(self, tier_name: str, factor: float) -> None:
        """From now on, ``tier_name``'s read and write bandwidth is ``factor`` times the tier's (1.0:
        back to normal). Transfers in flight keep what they moved so far and go on at the new rate."""
        if not factor > 0:
            raise ValueError(f"factor: must be > 0, got {factor}")
        self._factors[tier_name] = factor
        for (name, _), channel in self._channels.items():
            if name == tier_name:
                channel.advance(self._now)
                channel.bandwidth = channel.base_bandwidth * factor

    def cancel(self, transfer: Transfer) -> None:
        """Stop a transfer: it gives its bandwidth share back and ``on_done`` is never called."""
        if transfer.cancelled or transfer.done_s is not None:
            return
        transfer.cancelled = True
        channel = self._channels[transfer.channel]
        if transfer in channel.transfers:
            channel.advance(self._now)
            channel.transfers.remove(transfer)
        if self.on_cancel is not None:
            self.on_cancel()

    def next_event_s(self) -> float | None:
        """When the next transfer joins a channel or finishes (None when nothing is in flight)."""
        while self._joining and self._joining[0][2].cancelled:
            heapq.heappop(self._joining)
        times = [self._joining[0][0]] if self._joining else []
        for channel in self._channels.values():
            done = channel.next_done_s()
            if done is not None:
                times.append(done)
        return min(times) if times else None

    def advance(self, now: float) -> None:
        """Move the fluid state to ``now``, which must not pass :meth:`next_event_s`."""
        if now <= self._now:
            return
        for channel in self._channels.values():
            channel.advance(now)
        self._now = now

    def step(self) -> tuple[float, list[Transfer]]:
        """Go to the next event; return its time and the transfers that finished then, in start order.

        Transfers joining at that time join their channels (a transfer of zero bytes finishes as it
        joins). Callers run each finished transfer's ``on_done``; they may submit new transfers.
        """
        t = self.next_event_s()
        assert t is not None, "step() with nothing in flight"
        finished: list[Transfer] = []
        for channel in self._channels.values():
            if not channel.transfers:
                channel.advance(t)
                continue
            # The channel whose next completion defines this event finishes its least-remaining
            # transfers exactly now, whatever floating-point rounding the shares leave over.
            defines = channel.next_done_s() == t
            least = min(x.remaining for x in channel.transfers)
            first = [x for x in channel.transfers if x.remaining <= least + _DONE_BYTES] if defines else []
            channel.advance(t)
            keep: list[Transfer] = []
            for transfer in channel.transfers:
                if transfer.remaining <= _DONE_BYTES or any(transfer is x for x in first):
                    finished.append(transfer)
                else:
                    keep.append(transfer)
            channel.transfers = keep
        self._now = max(self._now, t)
        while self._joining and self._joining[0][0] <= t:
            _, _, transfer = heapq.heappop(self._joining)
            if transfer.cancelled:
                continue
            if transfer.remaining <= _DONE_BYTES:
                finished.append(transfer)
            else:
                self._channels[transfer.channel].transfers.append(transfer)
        for transfer in finished:
            transfer.done_s = t
            transfer.remaining = 0.0
        finished.sort(key=lambda x: x.seq)
        return t, finished

    def busy_seconds(self, direction: str, owner: int | None = None) -> float:
        """Seconds during which some transfer (of ``owner``, when given: needs ``track_owners``) moved
        bytes in ``direction``, summed over tiers."""
        if owner is None:
            return sum(c.busy_s for (_, d), c in self._channels.items() if d == direction)
        return sum(
            (c.owner_busy_s or {}).get(owner, 0.0) for (_, d), c in self._channels.items() if d == direction
        )

    def moved_bytes(self, direction: str, owner: int | None = None) -> float:
        """Bytes moved in ``direction`` (finished and cancelled transfers' progress included), by
        ``owner`` when given (needs ``track_owners``)."""
        if owner is None:
            return sum(c.moved_bytes for (_, d), c in self._channels.items() if d == direction)
        return sum(
            (c.owner_bytes or {}).get(owner, 0.0) for (_, d), c in self._channels.items() if d == direction
        )


__all__ = ["Transfer", "TransferIO"]
