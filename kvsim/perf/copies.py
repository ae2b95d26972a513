"""Host-device and device-device copies: how long moving KV blocks between tiers takes on a GPU.

The profile's ``host_copy`` family serves these times: a measured copy table (``copy.csv``: direction,
bytes, pattern, chunks) interpolated in log space and guided by the fitted ``copy_v1`` model, the fitted
model alone (``t0 + (chunks - 1) * chunk + bytes / (bw * e)``, PCIe for ``h2d``/``d2h``, HBM for ``d2d``
with read and write bytes), or the roofline (``bytes / (pcie * pcie_efficiency)`` plus one kernel latency).
Table and table-fitted times drop the tables' timing floor, as step times do. Engines use this for
HiCache loads and backups; it is not part of a forward step.
"""

from __future__ import annotations

from kvsim.core.errors import UserInputError
from kvsim.hardware.profile import GpuProfile
from kvsim.perf.calibration import fitted_params, pick, row_guide, table_lookups
from kvsim.perf.families import copy_time

DIRECTIONS = ("h2d", "d2h", "d2d")


class HostCopyModel:
    """Copy times on one GPU profile (seconds)."""

    def __init__(self, gpu: GpuProfile) -> None:
        self.gpu = gpu
        self.source = gpu.sources["host_copy"]
        self._params = None
        self._floor = 0.0
        self._lookups = {}
        if "host_copy" in gpu.fitted:
            _, self._params, entry = fitted_params(gpu, "host_copy")
            self._floor = float(entry.get("timing_floor_us", 0.0)) * 1e-6
        if self.source == "table":
            self._lookups = table_lookups(gpu.tables["host_copy"], guide=row_guide(gpu, "host_copy"))

    def seconds(self, direction: str, nbytes: float, chunks: int = 1) -> float:
        """Time to copy ``nbytes`` in ``chunks`` pieces (``direction``: h2d, d2h or d2d)."""
        if direction not in DIRECTIONS:
            raise UserInputError(f"copy direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if nbytes <= 0 or chunks < 1:
            raise UserInputError(f"copy of {nbytes} bytes in {chunks} chunks: both must be positive")
        gpu = self.gpu
        model = None
        if self._params is not None:
            prm = pick(self._params, direction, f"profile {gpu.name} fitted host_copy")
            d2d = direction == "d2d"
            path = gpu.memory_bandwidth if d2d else gpu.pcie_bandwidth
            model = copy_time(nbytes * (2 if d2d else 1), chunks, path, prm)
        pattern = "contiguous" if chunks == 1 else "pages"
        lookup = self._lookups.get((direction, pattern))
        if lookup is not None:
            measured = lookup(float(chunks), float(nbytes), float(nbytes), model)
            return max(measured - gpu.table_timing_floor_s, gpu.roofline.kernel_latency_s)
        if model is not None and self.source != "roofline":
            return max(model - self._floor, gpu.roofline.kernel_latency_s)
        roof = gpu.roofline
        if direction == "d2d":
            return 2 * nbytes / (gpu.memory_bandwidth * roof.memory_efficiency) + roof.kernel_latency_s
        return nbytes / (gpu.pcie_bandwidth * roof.pcie_efficiency) + chunks * roof.kernel_latency_s


__all__ = ["DIRECTIONS", "HostCopyModel"]
