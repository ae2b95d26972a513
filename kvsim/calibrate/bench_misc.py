"""Elementwise ops, host<->device copies and launch overheads.

* ``elementwise.csv``: ``rmsnorm`` (fused Triton kernel; width = hidden size, and head_dim for the
  per-head q/k norm with ``tokens`` = token x heads rows), ``silu_and_mul`` (fused Triton kernel; width =
  the intermediate size per GPU), ``rope`` (neox-style rotation of q and k in torch ops; width = (heads +
  KV heads) x head_dim), ``embedding`` (``F.embedding``; width = hidden size) and ``sampling`` (softmax at
  temperature 0.7 and ``torch.multinomial`` over the vocabulary; tokens = batch). Without Triton the two
  fused ops fall back to torch ops and ``meta.json`` says so.
* ``copy.csv``: pinned host memory with ``non_blocking`` copies; ``pages`` copies ``chunks`` equal pieces
  at scattered offsets, one copy call each (how a paged KV cache moves between tiers without a gather
  kernel); ``d2d`` is a device-to-device copy (read plus write). On the CPU (``--quick``) every
  direction is a host memcpy.
* ``launch.csv``: ``launch_host`` (host time to launch one tiny kernel), ``kernel_tiny_gpu`` (GPU time
  of one tiny kernel queued back to back), ``eager_tiny_per_kernel`` (wall time per tiny kernel in an
  eager stream of 1000, launch gaps included), ``graph_replay_1`` and ``graph_replay_per_kernel`` (a CUDA
  graph of 1 and of 1000 tiny kernels: the fixed replay cost and the per-node cost).
"""

from __future__ import annotations

from typing import Any

from kvsim.calibrate.context import BenchContext
from kvsim.calibrate.shapes import CORE_MODELS, QUICK_MODEL, bundled_specs
from kvsim.calibrate.tables import TableWriter
from kvsim.models.spec import ModelSpec

TOKENS = tuple(2**i for i in range(15))  # 1 .. 16384
SAMPLING_BATCHES = (1, 8, 32, 64, 128, 256)
QUICK_TOKENS = (1, 16)


# ---- elementwise ------------------------------------------------------------------------------------
def run_elementwise(ctx: BenchContext, table: TableWriter) -> None:
    """Fused norms and activations, RoPE, embedding lookup and sampling for the core models."""
    specs = [QUICK_MODEL] if ctx.quick else bundled_specs(CORE_MODELS)
    tokens = QUICK_TOKENS if ctx.quick else TOKENS
    impl = ctx.notes.setdefault("backends", {}).setdefault("elementwise", {})
    fused = _fused_ops(ctx)
    impl.update({"rmsnorm": fused[2], "silu_and_mul": fused[2], "rope": "torch", "embedding": "torch"})
    impl["sampling"] = "torch softmax + multinomial"
    done: set[tuple[str, int, int]] = set()
    shared: dict[str, Any] = {}  # tables reused across token counts (an embedding table is 1.5 GB)
    for spec in specs:
        for op, width in _op_widths(spec):
            if (op, width, 0) in done:
                continue
            done.add((op, width, 0))
            ctx.next_item()
            with ctx.item(f"elementwise {op} width={width}"):
                rows = (QUICK_TOKENS if ctx.quick else SAMPLING_BATCHES) if op == "sampling" else tokens
                for count in rows:
                    fn = _op_fn(ctx, spec, op, count, width, fused, shared)
                    ms = ctx.measure(fn)
                    table.add(
                        {
                            "op": op,
                            "tokens": count,
                            "width": width,
                            "dtype": "bf16",
                            "latency_ms": ms,
                            "bytes": op_bytes(spec, op, count, width),
                        }
                    )
            ctx.release()


def _op_widths(spec: ModelSpec) -> list[tuple[str, int]]:
    return [
        ("rmsnorm", spec.hidden_size),
        ("rmsnorm", spec.head_dim),
        ("silu_and_mul", spec.intermediate_size),
        ("rope", (spec.num_attention_heads + spec.num_key_value_heads) * spec.head_dim),
        ("embedding", spec.hidden_size),
        ("sampling", spec.vocab_size),
    ]


def op_bytes(spec: ModelSpec, op: str, tokens: int, width: int) -> int:
    """Bytes one call reads and writes (the predictor's elementwise tables are keyed by bytes moved)."""
    if op == "rmsnorm":  # read and write the rows, read the weight
        return 2 * tokens * width * 2 + width * 2
    if op == "silu_and_mul":  # read gate and up, write the product
        return 3 * tokens * width * 2
    if op == "rope":  # read and write q and k, read a float32 cos and sin row per token for each
        return 2 * tokens * width * 2 + 2 * 2 * tokens * (spec.head_dim // 2) * 4
    if op == "embedding":  # read the rows, write them, read the ids
        return 2 * tokens * width * 2 + 8 * tokens
    if op == "sampling":  # float32 logits: softmax reads and writes, multinomial reads
        return 3 * tokens * width * 4
    raise ValueError(f"unknown elementwise op {op!r}")


def _fused_ops(ctx: BenchContext) -> tuple[Any, Any, str]:
    if ctx.has_triton:
        from kvsim.calibrate import kernels

        return kernels.rmsnorm, kernels.silu_and_mul, "triton"
    torch = ctx.torch

    def rms(x: Any, w: Any) -> Any:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, 1e-6)

    def silu(x: Any) -> Any:
        d = x.shape[-1] // 2
        return torch.nn.functional.silu(x[:, :d]) * x[:, d:]

    return rms, silu, "torch"


def _op_fn(
    ctx: BenchContext,
    spec: ModelSpec,
    op: str,
    count: int,
    width: int,
    fused: tuple[Any, Any, str],
    shared: dict[str, Any],
) -> Any:
    torch = ctx.torch
    rms, silu, _ = fused
    if op == "rmsnorm":
        x, w = ctx.rand(count, width), ctx.rand(width)
        return lambda _: rms(x, w)
    if op == "silu_and_mul":
        x = ctx.rand(count, 2 * width)
        return lambda _: silu(x)
    if op == "rope":
        heads, kv, dim = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        q, k = ctx.rand(count, heads, dim), ctx.rand(count, kv, dim)
        if f"rope{dim}" not in shared:
            shared[f"rope{dim}"] = rope_tables(torch, ctx.device, 1 << 15, dim)
        cos, sin = shared[f"rope{dim}"]
        positions = torch.randint(0, 1 << 15, (count,), device=ctx.device)
        return lambda _: (
            apply_rope(torch, q, cos, sin, positions),
            apply_rope(torch, k, cos, sin, positions),
        )
    if op == "embedding":
        key = f"embedding{spec.vocab_size}x{width}"
        if key not in shared:
            shared.clear()  # keep one table at a time
            shared[key] = ctx.rand(spec.vocab_size, width)
        weight = shared[key]
        ids = torch.randint(0, spec.vocab_size, (count,), device=ctx.device)
        return lambda _: torch.nn.functional.embedding(ids, weight)
    if op == "sampling":
        logits = ctx.rand(count, width, dtype=torch.float32)
        return lambda _: torch.multinomial(torch.softmax(logits / 0.7, dim=-1), 1)
    raise ValueError(f"unknown elementwise op {op!r}")


def rope_tables(torch: Any, device: Any, max_pos: int, dim: int, theta: float = 1e6) -> tuple[Any, Any]:
    """Cos and sin tables ``[max_pos, dim / 2]`` in float32 (Qwen3's rope_theta is 1e6)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(torch: Any, x: Any, cos: Any, sin: Any, positions: Any) -> Any:
    """Neox-style rotary embedding of ``x [tokens, heads, dim]`` at ``positions``."""
    half = x.shape[-1] // 2
    c = cos.index_select(0, positions).unsqueeze(1)
    s = sin.index_select(0, positions).unsqueeze(1)
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


# ---- copies -----------------------------------------------------------------------------------------
COPY_SIZES = tuple(16384 * 4**i for i in range(8))  # 16 KiB .. 256 MiB
PAGE_COPIES = ((4 * 1024**2, 16), (16 * 1024**2, 64), (64 * 1024**2, 256), (64 * 1024**2, 1024))
QUICK_COPY_SIZES = (16384, 262144)


def run_copy(ctx: BenchContext, table: TableWriter) -> None:
    """Host<->device copies, contiguous and page by page, plus one device-to-device copy."""
    torch = ctx.torch
    sizes = QUICK_COPY_SIZES if ctx.quick else COPY_SIZES
    largest = max(sizes)
    pin = ctx.is_cuda
    host = torch.empty(largest, dtype=torch.uint8, pin_memory=pin)
    host.random_(1, 255)
    dev = torch.empty(largest, dtype=torch.uint8, device=ctx.device)
    dev.random_(1, 255)
    bandwidth = ctx.notes.setdefault("bandwidth_summary_GBps", {})
    for size in sizes:
        ctx.next_item()
        with ctx.item(f"copy {size} B"):
            for direction, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
                ms = ctx.measure(
                    lambda _, d=dst, s=src, n=size: d[:n].copy_(s[:n], non_blocking=True), queue_ahead=False
                )
                table.add(
                    {
                        "direction": direction,
                        "bytes": size,
                        "pattern": "contiguous",
                        "chunks": 1,
                        "latency_ms": ms,
                    }
                )
                bandwidth[direction] = round(max(bandwidth.get(direction, 0.0), size / (ms * 1e-3) / 1e9), 1)
    pages = ((16384, 4), (65536, 16)) if ctx.quick else PAGE_COPIES
    for total, chunks in pages:
        if total > largest:
            continue
        ctx.next_item()
        with ctx.item(f"copy pages {total} B x{chunks}"):
            piece = total // chunks
            # Scattered source pages (every other page of the buffer), packed destination.
            offsets = [(2 * i * piece) % (largest - piece) for i in range(chunks)]
            for direction, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
                ms = ctx.measure(_paged_copy(dst, src, offsets, piece), queue_ahead=False)
                table.add(
                    {
                        "direction": direction,
                        "bytes": total,
                        "pattern": "pages",
                        "chunks": chunks,
                        "latency_ms": ms,
                    }
                )
    ctx.next_item()
    with ctx.item("copy d2d"):
        size = largest if ctx.quick else 1024**3
        a = torch.empty(size, dtype=torch.uint8, device=ctx.device).random_(1, 255)
        b = torch.empty_like(a)
        ms = ctx.measure(lambda _: b.copy_(a), queue_ahead=False)
        table.add({"direction": "d2d", "bytes": size, "pattern": "contiguous", "chunks": 1, "latency_ms": ms})
        bandwidth["d2d_read_plus_write"] = round(2 * size / (ms * 1e-3) / 1e9, 1)
    del host, dev
    ctx.release()


def _paged_copy(dst: Any, src: Any, offsets: list[int], piece: int) -> Any:
    """One copy call per page: scattered ``offsets`` of ``src`` into consecutive pieces of ``dst``."""

    def paged(_: int) -> None:
        for i, off in enumerate(offsets):
            dst[i * piece : (i + 1) * piece].copy_(src[off : off + piece], non_blocking=True)

    return paged


# ---- launch -----------------------------------------------------------------------------------------
def run_launch(ctx: BenchContext, table: TableWriter) -> None:
    """Kernel launch and CUDA-graph replay overheads (host-side rows only on the CPU)."""
    torch = ctx.torch
    x = ctx.rand(1, dtype=torch.float32)
    count = 100 if ctx.quick else 1000

    def eager(n: int) -> None:
        for _ in range(n):
            x.add_(1e-3)

    ctx.next_item()
    eager(10)
    ctx.sync()
    t0 = ctx.now()
    eager(count)
    host_s = ctx.now() - t0
    ctx.sync()
    wall_s = ctx.now() - t0
    table.add({"what": "launch_host", "latency_ms": host_s / count * 1e3})
    table.add({"what": "eager_tiny_per_kernel", "latency_ms": wall_s / count * 1e3})
    if not ctx.is_cuda:
        return
    ctx.next_item()
    table.add(
        {
            "what": "kernel_tiny_gpu",
            "latency_ms": ctx.measure(lambda _: eager(100), host_s_per_rep=1e-3) / 100,
        }
    )
    ctx.next_item()
    graphs = {}
    for n in (1, count):
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            eager(3)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            eager(n)
        graphs[n] = graph
    replay = {n: _wall_ms(ctx, graphs[n].replay) for n in graphs}
    table.add({"what": "graph_replay_1", "latency_ms": replay[1]})
    table.add(
        {"what": "graph_replay_per_kernel", "latency_ms": max(replay[count] - replay[1], 0.0) / (count - 1)}
    )
    del graphs


def _wall_ms(ctx: BenchContext, fn: Any, reps: int = 50) -> float:
    """Median wall milliseconds of ``fn()`` followed by a synchronize (launch to completion)."""
    import statistics

    fn()
    ctx.sync()
    times = []
    for _ in range(reps):
        t0 = ctx.now()
        fn()
        ctx.sync()
        times.append((ctx.now() - t0) * 1e3)
    return statistics.median(times)
