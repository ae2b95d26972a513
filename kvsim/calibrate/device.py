"""Finding torch, triton and the device, and describing them for ``meta.json``.

Missing pieces become one-line :class:`~kvsim.core.errors.UserInputError` messages (the CLI prints them
and exits 2): no torch, no CUDA GPU without ``--quick``, no triton for a GPU run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import subprocess
from typing import Any

from kvsim.core.errors import UserInputError

TORCH_HINT = "install it with `pip install torch` (see docs/calibration.md)"


def import_torch() -> Any:
    """Import torch or explain how to install it."""
    if importlib.util.find_spec("torch") is None:
        raise UserInputError(f"kvsim calibrate needs torch, which is not installed; {TORCH_HINT}")
    return importlib.import_module("torch")


def triton_available() -> bool:
    """Whether triton imports (a broken install counts as missing)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # any import failure means the kernels cannot run
        return False
    return True


def pick_device(torch: Any, quick: bool) -> Any:
    """The CPU for ``--quick``; the first CUDA GPU otherwise (a one-line error when there is none)."""
    if quick:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = torch.version.cuda or "CPU-only"
        raise UserInputError(
            f"no CUDA GPU is visible to torch {torch.__version__} (build: {build}); calibration measures "
            "a GPU. Use --quick to check the pipeline on the CPU"
        )
    return torch.device("cuda", 0)


def _nvidia_smi() -> dict[str, str]:
    """Driver, clocks and power limit as found, from ``nvidia-smi`` (empty when it is unavailable)."""
    fields = (
        "driver_version",
        "clocks.sm",
        "clocks.max.sm",
        "clocks.mem",
        "clocks.max.mem",
        "power.limit",
        "temperature.gpu",
        "persistence_mode",
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.strip().splitlines()[0].split(",")] if out.strip() else []
    return dict(zip(fields, values, strict=False))


def describe_device(torch: Any, device: Any) -> dict[str, Any]:
    """GPU name, SMs, memory, L2, compute capability, driver, clocks and library versions."""
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        try:
            triton_version = importlib.import_module("triton").__version__
        except Exception:
            triton_version = "broken"
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "numpy": importlib.import_module("numpy").__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        smi = _nvidia_smi()
        info.update(
            {
                "device": "cuda",
                "gpu": props.name,
                "sms": int(props.multi_processor_count),
                "memory_gib": round(props.total_memory / 1024**3, 1),
                "l2_mb": round(getattr(props, "L2_cache_size", 0) / 1e6, 1),
                "compute_capability": f"{props.major}.{props.minor}",
                "device_count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
                "driver": smi.get("driver_version"),
                "clocks": {k: v for k, v in smi.items() if k != "driver_version"},
                "clock_note": "clocks and power limit as found (not locked); see clocks",
            }
        )
    else:
        info.update(
            {
                "device": "cpu",
                "gpu": f"CPU ({platform.processor() or platform.machine()}, quick pipeline check)",
                "sms": os.cpu_count() or 1,
                "memory_gib": round(_host_memory() / 1024**3, 1),
                "l2_mb": 0.0,
                "compute_capability": None,
                "device_count": 1,
                "cuda": None,
                "driver": None,
                "clocks": {},
                "clock_note": "CPU run: tiny shapes, not a GPU profile",
            }
        )
    return info


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        return 16 * 1024**3
