"""Seeded randomness: one ``numpy.random.Generator`` per run, passed down explicitly.

Nothing in kvsim uses the global ``random`` or ``numpy.random`` state. A run creates its generator with
:func:`make_rng` and hands it (or independent children from :func:`spawn_rng`) to each component, so
the same seed always gives the same results regardless of which components are present.
"""

from __future__ import annotations

import numpy as np


def make_rng(seed: int) -> np.random.Generator:
    """Return the run's generator for ``seed`` (PCG64)."""
    if seed < 0:
        raise ValueError(f"seed(={seed}) must be >= 0")
    return np.random.Generator(np.random.PCG64(seed))


def spawn_rng(seed: int, stream: str) -> np.random.Generator:
    """Return an independent generator for a named stream of the run seeded with ``seed``.

    The stream name is hashed stably (not with Python's salted ``hash``), so a component's random
    draws do not change when another component is added to the run.
    """
    if seed < 0:
        raise ValueError(f"seed(={seed}) must be >= 0")
    key = [int(b) for b in stream.encode("utf-8")]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *key])))
