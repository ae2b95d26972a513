"""Scripted storage faults: outages and slowdowns of an L3 storage during a simulated run.

An experiment's ``faults:`` section lists what goes wrong and when::

    faults:
      probe_period: 5          # seconds between KVCM's storage probes (default 5)
      events:
        - {storage: nfs_01, kind: unavailable, start: 60, end: 120}
        - {storage: nfs_01, kind: slow, start: 150, end: 200, bandwidth_factor: 0.5}

``storage`` names a storage of the ``kvcm:`` section (``--hicache-storage-backend kvcm``) or, for a
plain ``file``/``mooncake`` store, its tier (``--hicache-storage-tier``). Times are seconds of simulated
time from the start of the run; ``end`` is when the storage is back.

* **unavailable**: from ``start`` the storage is down. Reads of its pages fail (a prefetch stops at the
  first page held there, so the rest is recomputed) and writes to it fail. With KVCM the manager also
  probes its storages every ``probe_period`` (:mod:`kvsim.cache.health`): after the first failed probe
  it stops handing out the storage's locations and sends new writes to another candidate (if the group
  has one); once the storage is back, its locations return after ``recover_after`` good probes, as
  ``kvsim serve`` does with a real mount. A plain store simply misses and refuses writes while down.
* **slow**: from ``start`` to ``end`` the tier's read and write bandwidth is multiplied by
  ``bandwidth_factor`` (0.5 = halved), transfers in flight included.

The L3 controller turns each event into two timed actions (:meth:`L3Controller.schedule_faults`), so
faults happen in time order with every transfer and query.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvsim.cache.health import DEFAULT_PROBE_PERIOD_S
from kvsim.core.errors import ConfigError

#: What a fault may do.
FAULT_KINDS = ("unavailable", "slow")
#: Keys of the ``faults:`` section and of one event.
FAULTS_KEYS = ("probe_period", "events")
EVENT_KEYS = ("storage", "kind", "start", "end", "bandwidth_factor")
#: A slowdown's default bandwidth factor.
DEFAULT_BANDWIDTH_FACTOR = 0.5


@dataclass(frozen=True, slots=True)
class StorageFault:
    """One scripted fault.

    Attributes:
        storage: the storage (KVCM storage name, or a plain store's tier name).
        kind: ``unavailable`` or ``slow``.
        start_s: when it begins (simulated seconds).
        end_s: when it ends.
        bandwidth_factor: a slowdown's bandwidth multiplier (1.0 for an outage).
    """

    storage: str
    kind: str
    start_s: float
    end_s: float
    bandwidth_factor: float = 1.0


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The resolved ``faults:`` section."""

    events: tuple[StorageFault, ...] = ()
    probe_period_s: float = DEFAULT_PROBE_PERIOD_S

    def __bool__(self) -> bool:
        return bool(self.events)

    def to_dict(self) -> dict[str, Any]:
        """The section as resolved (reads back as the same plan)."""
        return {
            "probe_period": self.probe_period_s,
            "events": [
                {
                    "storage": f.storage,
                    "kind": f.kind,
                    "start": f.start_s,
                    "end": f.end_s,
                    **({"bandwidth_factor": f.bandwidth_factor} if f.kind == "slow" else {}),
                }
                for f in self.events
            ],
        }


NO_FAULTS = FaultPlan()


def _seconds(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def parse_faults(body: Any) -> FaultPlan:
    """Validate a ``faults:`` section (storage names are checked later, against the run's storages).

    Raises:
        ConfigError: one line naming the bad key or value.
    """
    if body is None:
        return NO_FAULTS
    if not isinstance(body, Mapping):
        raise ConfigError("faults: must be a mapping with keys probe_period, events")
    for key in body:
        if key not in FAULTS_KEYS:
            raise ConfigError(f"faults: unknown key {key!r}; valid: {', '.join(FAULTS_KEYS)}")
    period = _seconds(body.get("probe_period", DEFAULT_PROBE_PERIOD_S), "faults.probe_period", positive=True)
    raw = body.get("events") or []
    if not isinstance(raw, list):
        raise ConfigError("faults.events: must be a list of events")
    events: list[StorageFault] = []
    for index, entry in enumerate(raw):
        where = f"faults.events[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a mapping with keys {', '.join(EVENT_KEYS)}")
        for key in entry:
            if key not in EVENT_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r}; valid: {', '.join(EVENT_KEYS)}")
        storage = entry.get("storage")
        if not isinstance(storage, str) or not storage:
            raise ConfigError(f"{where}.storage: must name a storage, got {storage!r}")
        kind = entry.get("kind")
        if kind not in FAULT_KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if "start" not in entry or "end" not in entry:
            raise ConfigError(f"{where}: needs start and end (seconds)")
        start = _seconds(entry["start"], f"{where}.start")
        end = _seconds(entry["end"], f"{where}.end")
        if end <= start:
            raise ConfigError(f"{where}: end {end:g} must be after start {start:g}")
        factor = 1.0
        if kind == "slow":
            factor = entry.get("bandwidth_factor", DEFAULT_BANDWIDTH_FACTOR)
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
                raise ConfigError(f"{where}.bandwidth_factor: must be a number in (0, 1], got {factor!r}")
            factor = float(factor)
        elif "bandwidth_factor" in entry:
            raise ConfigError(f"{where}.bandwidth_factor: only a slow fault has one")
        events.append(StorageFault(storage, str(kind), start, end, factor))
    _check_overlaps(events)
    return FaultPlan(tuple(events), period)


def _check_overlaps(events: Sequence[StorageFault]) -> None:
    """Two faults of one kind on one storage may not overlap: their ends would undo each other."""
    by_target: dict[tuple[str, str], list[StorageFault]] = {}
    for fault in events:
        by_target.setdefault((fault.storage, fault.kind), []).append(fault)
    for (storage, kind), faults in by_target.items():
        faults.sort(key=lambda f: f.start_s)
        for before, after in itertools.pairwise(faults):
            if after.start_s < before.end_s:
                raise ConfigError(
                    f"faults: two {kind} faults of storage {storage!r} overlap "
                    f"({before.start_s:g}-{before.end_s:g} s and {after.start_s:g}-{after.end_s:g} s)"
                )


def check_storages(plan: FaultPlan, known: Sequence[str]) -> None:
    """Refuse faults of storages the run does not have.

    Raises:
        ConfigError: names the unknown storage and the known ones.
    """
    for index, fault in enumerate(plan.events):
        if fault.storage not in known:
            raise ConfigError(
                f"faults.events[{index}].storage: unknown storage {fault.storage!r}; "
                f"this run's storages: {', '.join(known) or 'none (no L3 storage backend)'}"
            )


__all__ = [
    "DEFAULT_BANDWIDTH_FACTOR",
    "EVENT_KEYS",
    "FAULTS_KEYS",
    "FAULT_KINDS",
    "NO_FAULTS",
    "FaultPlan",
    "StorageFault",
    "check_storages",
    "parse_faults",
]
