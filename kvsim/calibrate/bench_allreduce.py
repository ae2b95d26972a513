"""All-reduce over tensor-parallel groups of 2, 4 and 8 GPUs (NCCL), when the machine has several GPUs.

Each group size runs in its own set of processes (``torch.multiprocessing.spawn``, one per GPU),
rendezvousing through a file. Rank 0 times each bf16 all-reduce with CUDA events (median of repeats
after warm-up, a barrier before each) and writes the rows to a JSON file that the parent reads back.
The same code runs over gloo on the CPU, which is how the tests exercise it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from kvsim.calibrate.context import BenchContext
from kvsim.calibrate.tables import TableWriter

SIZES = tuple(4096 * 4**i for i in range(9))  # 4 KiB .. 256 MiB
QUICK_SIZES = (4096, 65536)


def tp_groups(device_count: int) -> list[int]:
    """Group sizes worth measuring on a machine with ``device_count`` GPUs."""
    return [tp for tp in (2, 4, 8) if tp <= device_count]


def run_allreduce(ctx: BenchContext, table: TableWriter) -> None:
    """Measure every group size the machine allows."""
    torch = ctx.torch
    count = torch.cuda.device_count() if ctx.is_cuda else 1
    groups = tp_groups(count)
    if not groups:
        ctx.notes["allreduce"] = "skipped: one device"
        return
    for tp in groups:
        ctx.next_item()
        with ctx.item(f"allreduce tp={tp}"):
            for row in measure_group(tp, SIZES, backend="nccl", reps=20):
                table.add(row)


def measure_group(tp: int, sizes: tuple[int, ...], backend: str, reps: int) -> list[dict[str, Any]]:
    """Spawn ``tp`` processes, all-reduce each size, return rank 0's rows (``tp, bytes, latency_ms``)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="kvsim-allreduce-") as tmp:
        rendezvous = Path(tmp) / "rendezvous"
        result = Path(tmp) / "rows.json"
        mp.spawn(_worker, args=(tp, sizes, backend, reps, str(rendezvous), str(result)), nprocs=tp, join=True)
        return list(json.loads(result.read_text(encoding="utf-8")))


def _worker(
    rank: int, tp: int, sizes: tuple[int, ...], backend: str, reps: int, rendezvous: str, result: str
) -> None:
    import torch
    import torch.distributed as dist

    from kvsim.core.timer import PerfTimer

    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=tp)
    timer = PerfTimer()
    rows = []
    try:
        for size in sizes:
            x = torch.randn(size // 2, device=device, dtype=torch.bfloat16)
            for _ in range(3):
                dist.all_reduce(x)
            times = []
            for _ in range(reps):
                dist.barrier()
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    dist.all_reduce(x)
                    end.record()
                    torch.cuda.synchronize()
                    times.append(start.elapsed_time(end))
                else:
                    t0 = timer.monotonic()
                    dist.all_reduce(x)
                    times.append((timer.monotonic() - t0) * 1e3)
            rows.append({"tp": tp, "bytes": size, "dtype": "bf16", "latency_ms": statistics.median(times)})
        if rank == 0:
            Path(result).write_text(json.dumps(rows), encoding="utf-8")
    finally:
        dist.destroy_process_group()
