"""SGLang's decode CUDA graphs: which batch sizes it captures, and how a decode batch is padded to one.

SGLang captures one CUDA graph per batch size in a fixed list and replays the smallest graph that holds
the decode batch; the padding requests run through every GEMM and elementwise kernel (their rows are
computed and discarded) but read no KV cache. Decode batches above the largest captured size run
eagerly, kernel by kernel. The rules below follow ``ServerArgs`` of recent SGLang releases
(``_generate_cuda_graph_batch_sizes`` and the GPU-memory defaults of ``cuda_graph_max_bs``):

- captured sizes: ``[1, 2, 4, 8, 12] + range(16, 257, 8) + range(272, 512, 16) + range(512, max + 1, 32)``,
  keeping those ``<= cuda_graph_max_bs``;
- default ``cuda_graph_max_bs`` from the GPU's memory: < 35 GiB: 24 (80 at TP >= 4); < 60 GiB: 32 (160);
  < 160 GiB (H100, H20, H200): 256 (512 at TP >= 4); larger: 512.
"""

from __future__ import annotations

from bisect import bisect_left


def default_cuda_graph_max_bs(memory_gib: float, tp: int) -> int:
    """SGLang's default ``--cuda-graph-max-bs`` for a GPU with ``memory_gib`` of memory at TP ``tp``."""
    mib = memory_gib * 1024
    big_tp = tp >= 4
    if mib < 20 * 1024:
        return 8
    if mib < 35 * 1024:
        return 80 if big_tp else 24
    if mib < 60 * 1024:
        return 160 if big_tp else 32
    if mib < 160 * 1024:
        return 512 if big_tp else 256
    return 512


def cuda_graph_batch_sizes(max_bs: int) -> tuple[int, ...]:
    """The decode batch sizes SGLang captures CUDA graphs for, up to ``max_bs`` (no speculative decoding)."""
    sizes = [1, 2, 4, 8, 12, *range(16, 257, 8), *range(272, 512, 16), *range(512, max_bs + 1, 32)]
    return tuple(size for size in sizes if size <= max_bs)


def padded_batch_size(batch: int, sizes: tuple[int, ...]) -> int | None:
    """The captured size a decode batch of ``batch`` requests replays, or ``None`` when it runs eagerly."""
    index = bisect_left(sizes, batch)
    return sizes[index] if index < len(sizes) else None


__all__ = ["cuda_graph_batch_sizes", "default_cuda_graph_max_bs", "padded_batch_size"]
