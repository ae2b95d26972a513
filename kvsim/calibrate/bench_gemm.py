"""GEMM microbenchmarks: the projection shapes of every bundled model and TP degree, over a log grid of M.

bf16 GEMMs run ``torch.nn.functional.linear`` (cuBLAS): ``x[M, K] @ W[N, K]^T``, as SGLang's unquantized
linear layers do. fp8 GEMMs (GPUs with compute capability 8.9 or newer, and the CPU in ``--quick``) run
``torch._scaled_mm`` with per-tensor scales and a bf16 output; SGLang's fp8 checkpoints use 128x128
block scales through DeepGEMM or Triton kernels, which run at about the same tensor-core rate, so this is
the closest stock-torch stand-in (``meta.json`` says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvsim.calibrate.context import BenchContext
from kvsim.calibrate.shapes import (
    CORE_MODELS,
    M_GRID,
    QUICK_M_GRID,
    QUICK_MODEL,
    QUICK_TP_DEGREES,
    GemmShape,
    bundled_specs,
    gemm_shapes,
)
from kvsim.calibrate.tables import TableWriter
from kvsim.models.spec import model_names


def core_shapes(ctx: BenchContext) -> list[GemmShape]:
    """Shapes measured first: Qwen3-8B and Qwen3-32B at every TP degree, bf16."""
    if ctx.quick:
        return gemm_shapes([QUICK_MODEL], QUICK_TP_DEGREES)
    return gemm_shapes(bundled_specs(CORE_MODELS))


def rest_shapes(ctx: BenchContext) -> list[GemmShape]:
    """Every other bundled model's shapes (bf16), then fp8 shapes where the device has fp8."""
    if ctx.quick:
        if not ctx.fp8:
            return []
        from dataclasses import replace

        return gemm_shapes([replace(QUICK_MODEL, quantization="fp8")], QUICK_TP_DEGREES, fp8=True)
    done = {(s.n, s.k, s.dtype) for s in core_shapes(ctx)}
    specs = bundled_specs(model_names())
    shapes = [s for s in gemm_shapes(specs) if (s.n, s.k, s.dtype) not in done]
    if ctx.fp8:
        shapes += [s for s in gemm_shapes(specs, fp8=True) if s.dtype == "fp8"]
    return shapes


def _m_grid(ctx: BenchContext) -> Sequence[int]:
    return QUICK_M_GRID if ctx.quick else M_GRID


def run_core(ctx: BenchContext, table: TableWriter) -> None:
    """Measure the core shapes."""
    measure_shapes(ctx, table, core_shapes(ctx))


def run_rest(ctx: BenchContext, table: TableWriter) -> None:
    """Measure the remaining shapes."""
    measure_shapes(ctx, table, rest_shapes(ctx))


def measure_shapes(ctx: BenchContext, table: TableWriter, shapes: Sequence[GemmShape]) -> None:
    """Measure every shape over the M grid, writing one row per (M, shape)."""
    for shape in shapes:
        ctx.next_item()
        with ctx.item(f"gemm {shape.shape_of} {shape.dtype} n={shape.n} k={shape.k}"):
            _measure_shape(ctx, table, shape)
        ctx.release()


def _measure_shape(ctx: BenchContext, table: TableWriter, shape: GemmShape) -> None:
    if shape.dtype == "fp8" and not ctx.fp8:
        return
    weight_bytes = shape.n * shape.k * (1 if shape.dtype == "fp8" else 2)
    weights = _weights(ctx, shape, ctx.copies_for(weight_bytes))
    if shape.dtype == "fp8":
        # One refusal (a torch or GPU without fp8 GEMMs) ends fp8 for the run, not every shape one by one.
        try:
            _gemm_fn(ctx.torch, shape, _activation(ctx, shape, 16), weights)(0)
            ctx.sync()
        except RuntimeError as exc:
            ctx.fp8 = False
            ctx.notes["fp8_gemm"] = f"skipped: torch._scaled_mm refused ({str(exc).splitlines()[0][:200]})"
            ctx.log(f"  fp8 GEMMs skipped: {ctx.notes['fp8_gemm']}")
            return
    for m in _m_grid(ctx):
        x = _activation(ctx, shape, m)
        ms = ctx.measure(_gemm_fn(ctx.torch, shape, x, weights))
        table.add(
            {
                "m": m,
                "n": shape.n,
                "k": shape.k,
                "dtype": shape.dtype,
                "latency_ms": ms,
                "shape_of": shape.shape_of,
            }
        )
        _track_peak(ctx, shape.dtype, 2.0 * m * shape.n * shape.k / (ms * 1e-3))


def _weights(ctx: BenchContext, shape: GemmShape, copies: int) -> list[Any]:
    torch = ctx.torch
    scale = shape.k**-0.5
    if shape.dtype == "fp8":
        # _scaled_mm wants the second operand column-major: a transposed [N, K] row-major tensor.
        return [ctx.rand(shape.n, shape.k, dtype=torch.float8_e4m3fn).t() for _ in range(copies)]
    return [ctx.rand(shape.n, shape.k, scale=scale) for _ in range(copies)]


def _activation(ctx: BenchContext, shape: GemmShape, m: int) -> Any:
    if shape.dtype == "fp8":
        return ctx.rand(m, shape.k, dtype=ctx.torch.float8_e4m3fn)
    return ctx.rand(m, shape.k)


def _gemm_fn(torch: Any, shape: GemmShape, x: Any, weights: list[Any]) -> Any:
    count = len(weights)
    if shape.dtype == "fp8":
        one = torch.ones((), device=x.device, dtype=torch.float32)

        def fp8(i: int) -> Any:
            return torch._scaled_mm(x, weights[i % count], scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        return fp8
    linear = torch.nn.functional.linear

    def bf16(i: int) -> Any:
        return linear(x, weights[i % count])

    return bf16


def _track_peak(ctx: BenchContext, dtype: str, flops: float) -> None:
    peaks = ctx.notes.setdefault("peak_tflops_measured", {})
    peaks[dtype] = float(f"{max(peaks.get(dtype, 0.0), flops / 1e12):.4g}")


def fp8_supported(torch: Any, device: Any) -> bool:
    """Whether ``torch._scaled_mm`` runs on ``device`` (compute capability 8.9+ on CUDA; probed on CPU)."""
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device)) >= (8, 9)
    try:
        a = torch.ones(16, 16, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True
