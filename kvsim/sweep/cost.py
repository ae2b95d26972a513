"""The cost model of a sweep: dollars per hour of a configuration.

The ``cost:`` section prices GPUs by the hour and storage by the GB-month::

    cost:
      gpu_hour: {H20: 1.00, H100: 2.25}            # $ per GPU-hour, by the experiment's gpu names
      storage_gb_month: {host_dram: 0.15, nfs: 0.05}  # $ per GB-month (1 GB = 1e9 bytes), by storage tier

A configuration costs ``GPUs x $/GPU-hour + sum over tiers of GB x $/GB-month / 730`` per hour (730 hours
in a month: 8760 / 12). GPUs are ``server.tp x cluster.instances`` (one instance without a ``cluster:``
section). Storage is what the run provisions (:func:`kvsim.sweep.worker.simulate_experiment`): the L2
host pool of every GPU (tier ``host_dram``), the KVCM group's quota per instance (at the dearest tier
among its storages: a conservative price when KVCM may place blocks on any of them) or, for a plain
``file``/``mooncake`` store, the bytes it holds at the end of the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvsim.core.errors import ConfigError, UserInputError

COST_KEYS = ("gpu_hour", "storage_gb_month")
HOURS_PER_MONTH = 730.0
#: The storage tier the L2 host pool (HiCache) is priced as.
L2_TIER = "host_dram"


@dataclass(frozen=True, slots=True)
class CostModel:
    """Prices: $ per GPU-hour by GPU name, $ per GB-month by storage tier."""

    gpu_hour: Mapping[str, float]
    storage_gb_month: Mapping[str, float]

    def check_gpus(self, gpus: Iterable[str]) -> None:
        """Refuse a GPU type without a price, naming the priced ones."""
        for gpu in gpus:
            if gpu not in self.gpu_hour:
                priced = ", ".join(self.gpu_hour) or "none"
                raise UserInputError(f"cost.gpu_hour: no price for GPU {gpu!r}; priced: {priced}")

    def storage_price(self, tier: str) -> float:
        """$ per GB-month of ``tier``; a tier without a price is a one-line error."""
        if tier not in self.storage_gb_month:
            priced = ", ".join(self.storage_gb_month) or "none"
            raise UserInputError(
                f"cost.storage_gb_month: no price for storage tier {tier!r}; priced: {priced}"
            )
        return self.storage_gb_month[tier]

    def breakdown(self, gpu: str, gpus: int, storage: Mapping[str, float]) -> dict[str, float]:
        """``gpu_cost_per_hour``, ``storage_cost_per_hour`` and their sum ``cost_per_hour`` ($/h) of
        ``gpus`` GPUs of type ``gpu`` and ``storage`` bytes per tier."""
        self.check_gpus([gpu])
        gpu_cost = gpus * self.gpu_hour[gpu]
        storage_cost = sum(
            (
                nbytes / 1e9 * self.storage_price(tier) / HOURS_PER_MONTH
                for tier, nbytes in storage.items()
                if nbytes
            ),
            0.0,
        )
        return {
            "gpu_cost_per_hour": gpu_cost,
            "storage_cost_per_hour": storage_cost,
            "cost_per_hour": gpu_cost + storage_cost,
        }

    def dearest(self, tiers: Iterable[str]) -> str:
        """The tier with the highest price among ``tiers`` (ties: the first)."""
        names = list(tiers)
        return max(names, key=lambda tier: (self.storage_price(tier), -names.index(tier)))


def _prices(data: Any, where: str) -> dict[str, float]:
    # Names are not checked against a list: GPU profiles and storage tiers can be the user's own. A
    # name that a configuration needs and the section lacks is refused when it is needed, naming the
    # priced ones.
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of name to price, e.g. {{H20: 1.0}}")
    prices = {}
    for name, price in data.items():
        if (
            isinstance(price, bool)
            or not isinstance(price, int | float)
            or price < 0
            or not math.isfinite(price)
        ):
            raise ConfigError(f"{where}.{name}: expected a price >= 0, got {price!r}")
        prices[str(name)] = float(price)
    return prices


def parse_cost(data: Any) -> CostModel | None:
    """Parse the ``cost:`` section (None when absent).

    Raises:
        ConfigError: an unknown key (naming the valid ones) or a price that is not a number >= 0.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigError("cost: expected a mapping with keys gpu_hour and storage_gb_month")
    unknown = sorted(set(data) - set(COST_KEYS))
    if unknown:
        raise ConfigError(f"cost: unknown key {unknown[0]!r}; valid: {', '.join(COST_KEYS)}")
    return CostModel(
        _prices(data.get("gpu_hour"), "cost.gpu_hour"),
        _prices(data.get("storage_gb_month"), "cost.storage_gb_month"),
    )
