"""kvsim: simulation-first LLM inference with a global KV cache.

The package holds a discrete-event simulator of serving engines on calibrated GPU profiles
(``kvsim.engines``, ``kvsim.perf``), the KV-cache-manager logic of Tair KVCM (``kvsim.cache``)
and a live service around that same logic (``kvsim.serve``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kvsim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
