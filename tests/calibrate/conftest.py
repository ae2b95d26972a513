"""Fixtures for the calibration tests: Triton runs in its CPU interpreter, torch and triton may be absent.

``TRITON_INTERPRET`` must be set before :mod:`kvsim.calibrate.kernels` is imported (Triton reads it when
the kernels are decorated), so it is set here, at collection time.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None

requires_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="torch is not installed (CI installs torch==2.13.0, the CPU build)"
)
requires_triton = pytest.mark.skipif(
    not (HAS_TORCH and HAS_TRITON),
    reason="triton is not installed: the Triton kernels cannot run in the interpreter here",
)
