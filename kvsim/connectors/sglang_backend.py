"""The class SGLang's dynamic storage-backend loader instantiates: :class:`KvsimHiCacheStorage`.

This module imports SGLang (its ``HiCacheStorage`` base class, which the loader requires), so only SGLang
imports it; everything else uses :mod:`kvsim.connectors.sglang_adapter`, which does not need SGLang.
See that module for the extra-config keys and the command line.
"""

from __future__ import annotations

from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

from kvsim.connectors.sglang_adapter import KvsimHiCache


class KvsimHiCacheStorage(KvsimHiCache, HiCacheStorage):
    """SGLang's ``HiCacheStorage`` implemented by :class:`KvsimHiCache` on a KVCM server."""

    # KvsimHiCache comes first in the MRO, so its methods implement HiCacheStorage's abstract ones and
    # its register_mem_pool_host (which registers the instance) replaces the base class's.


__all__ = ["KvsimHiCacheStorage"]
