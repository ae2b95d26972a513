"""Storage status: probing backends, deciding when one is unavailable, and its water level.

The reference promises "real-time monitoring of storage backend availability and water levels" but
reports every backend healthy with a usage ratio of 0. kvsim measures both:

* **Probes.** Every ``period_s`` of clock time the manager's ``poll`` asks an injected :data:`Prober`
  about each open backend. The default prober is the backend's own :meth:`StorageBackend.probe`: a
  file or 3FS root must exist and be writable, a small file must survive a write/read/delete round
  trip (its latency is reported), and the filesystem's free and total bytes are read; a Mooncake
  client must answer; a simulated tier reports what its fault model says.
* **Hysteresis.** ``fail_after`` failed probes in a row make a backend unavailable (writes stop going
  to it, reads stop returning its locations); ``recover_after`` good probes in a row bring it back. A
  single bad probe changes nothing, so a slow moment does not flap the selection. An operator's
  ``EnableStorage`` forces the backend healthy again at once (the probes then start counting afresh);
  ``DisableStorage`` keeps it out whatever the probes say.
* **Water levels.** A backend's usage ratio is the larger of what the filesystem reports (bytes used by
  anyone over its size) and kvsim's own accounting (bytes it allocated over the configured capacity).
  At ``high_water`` the backend receives no new writes; above ``reclaim_water`` the reclaimer frees
  kvsim's blocks on it until the ratio is back under that level.

Nothing here reads a clock: the manager passes "now", and probe latencies come from the injected
:class:`~kvsim.core.Timer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from kvsim.cache.errors import invalid

#: Default seconds between probe rounds.
DEFAULT_PROBE_PERIOD_S = 5.0
#: Default failed probes in a row that make a backend unavailable.
DEFAULT_FAIL_AFTER = 1
#: Default good probes in a row that make it available again.
DEFAULT_RECOVER_AFTER = 3
#: Default usage ratio at which a backend receives no more writes.
DEFAULT_HIGH_WATER = 0.95
#: Default usage ratio above which the reclaimer frees blocks on a backend.
DEFAULT_RECLAIM_WATER = 0.90
#: Default size of the probe's round-trip file.
DEFAULT_PROBE_BYTES = 4096
#: Largest accepted round-trip file (a probe must stay cheap).
MAX_PROBE_BYTES = 1 << 20
#: Largest accepted hysteresis count.
MAX_STREAK = 1000


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """How storages are probed and where their water levels lie.

    Attributes:
        period_s: clock seconds between probe rounds (> 0).
        fail_after: failed probes in a row that make a backend unavailable (1..1000).
        recover_after: good probes in a row that make it available again (1..1000).
        high_water: usage ratio at which writes skip the backend (0 < reclaim_water <= high_water <= 1).
        reclaim_water: usage ratio above which the reclaimer frees blocks on the backend.
        probe_bytes: size of the file written and read back by a file-system probe (1..1 MiB).
    """

    period_s: float = DEFAULT_PROBE_PERIOD_S
    fail_after: int = DEFAULT_FAIL_AFTER
    recover_after: int = DEFAULT_RECOVER_AFTER
    high_water: float = DEFAULT_HIGH_WATER
    reclaim_water: float = DEFAULT_RECLAIM_WATER
    probe_bytes: int = DEFAULT_PROBE_BYTES

    def __post_init__(self) -> None:
        check_probe_settings(self)


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STREAK:
        raise invalid(f"storage_probe.{name}", f"must be an integer in 1..{MAX_STREAK}, got {value!r}")


def _ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise invalid(f"storage_probe.{name}", f"must be a number in (0, 1], got {value!r}")
    return float(value)


def check_probe_settings(settings: ProbeSettings) -> None:
    """Refuse out-of-range probe settings.

    Raises:
        CacheError: INVALID_ARGUMENT naming the setting and its range.
    """
    period = settings.period_s
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not math.isfinite(period)
        or period <= 0
    ):
        raise invalid("storage_probe.period_s", f"must be a finite number > 0, got {period!r}")
    _count("fail_after", settings.fail_after)
    _count("recover_after", settings.recover_after)
    high = _ratio("high_water", settings.high_water)
    low = _ratio("reclaim_water", settings.reclaim_water)
    if low > high:
        raise invalid("storage_probe.reclaim_water", f"must be <= high_water {high:g}, got {low:g}")
    size = settings.probe_bytes
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PROBE_BYTES:
        raise invalid(
            "storage_probe.probe_bytes", f"must be an integer in 1..{MAX_PROBE_BYTES}, got {size!r}"
        )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe of one backend found.

    Attributes:
        ok: the backend answered and its round trip (where it has one) succeeded.
        latency_s: seconds the probe took (its round trip), 0 when it has none.
        used_bytes: bytes in use on the underlying storage (by anyone), None when it cannot say.
        total_bytes: the underlying storage's size, None when it cannot say.
        error: why the probe failed ("" when ok).
    """

    ok: bool
    latency_s: float = 0.0
    used_bytes: int | None = None
    total_bytes: int | None = None
    error: str = ""

    @property
    def usage_ratio(self) -> float | None:
        """``used / total`` as the storage itself reports it, None when unknown."""
        if self.used_bytes is None or not self.total_bytes:
            return None
        return self.used_bytes / self.total_bytes


#: Probes one backend (the argument is a :class:`~kvsim.cache.backends.base.StorageBackend`).
Prober = Callable[..., ProbeResult]


class StorageHealth:
    """Probe history and the resulting availability of one backend.

    Args:
        fail_after: failed probes in a row that make it unhealthy.
        recover_after: good probes in a row that make it healthy again.
    """

    __slots__ = ("_fail_after", "_recover_after", "failures", "healthy", "last", "probes", "successes")

    def __init__(self, fail_after: int, recover_after: int) -> None:
        self._fail_after = fail_after
        self._recover_after = recover_after
        self.healthy = True
        self.failures = 0  # consecutive failed probes
        self.successes = 0  # consecutive good probes
        self.probes = 0
        self.last: ProbeResult | None = None

    def record(self, result: ProbeResult) -> bool:
        """Count one probe; True when it flipped the backend's health."""
        self.probes += 1
        self.last = result
        if result.ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self._recover_after:
                self.healthy = True
                return True
            return False
        self.successes = 0
        self.failures += 1
        if self.healthy and self.failures >= self._fail_after:
            self.healthy = False
            return True
        return False

    def force_healthy(self) -> bool:
        """An operator vouches for the backend (EnableStorage): healthy now, streaks reset; True when
        that changed its health."""
        changed = not self.healthy
        self.healthy = True
        self.failures = self.successes = 0
        return changed

    def storage_ratio(self) -> float | None:
        """The usage ratio the last probe reported for the underlying storage (None: unknown)."""
        return None if self.last is None else self.last.usage_ratio


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """What the manager knows of one storage's state (``CacheManager.storage_status``).

    Attributes:
        name: the storage's ``global_unique_name``.
        available: it takes writes and serves reads (open, enabled and healthy).
        enabled: the operator's flag (Enable/DisableStorage).
        healthy: by its probes (always True without probing).
        consecutive_failures: failed probes in a row.
        probes: probes run so far.
        usage_ratio: how full it is (filesystem or accounting, whichever is higher).
        at_high_water: writes skip it.
        last_error: why the last probe failed ("" when it passed or none ran).
        last_latency_s: the last probe's latency.
    """

    name: str
    available: bool
    enabled: bool
    healthy: bool
    consecutive_failures: int
    probes: int
    usage_ratio: float
    at_high_water: bool
    last_error: str
    last_latency_s: float


def excess_bytes(used: int, total: int, level: float) -> int:
    """Bytes to free so that ``used / total`` is no longer above ``level`` (0 when it is not)."""
    if total <= 0 or used <= 0:
        return 0
    keep = math.floor(level * total)
    return max(0, used - keep)


__all__ = [
    "DEFAULT_FAIL_AFTER",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_PROBE_BYTES",
    "DEFAULT_PROBE_PERIOD_S",
    "DEFAULT_RECLAIM_WATER",
    "DEFAULT_RECOVER_AFTER",
    "MAX_PROBE_BYTES",
    "ProbeResult",
    "ProbeSettings",
    "Prober",
    "StorageHealth",
    "StorageStatus",
    "check_probe_settings",
    "excess_bytes",
]
