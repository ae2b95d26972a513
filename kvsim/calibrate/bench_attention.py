"""Attention microbenchmarks: prefill (causal, GQA), extend (new tokens over a cached prefix), decode.

* Prefill: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)`` on
  ``[batch, heads, seq, head_dim]``, FlashAttention backend first (torch's default choice otherwise).
* Extend: the same call with a bottom-right causal mask (``causal_lower_right``): each of the
  ``extend_len`` new tokens sees the whole prefix and the new tokens before it. Where torch's flash
  kernel cannot take GQA with that mask, K/V are expanded to every query head beforehand (outside the
  timing); ``meta.json`` records which.
* Decode: one new token per request over a paged KV cache, with the Triton split-KV kernel of
  :mod:`kvsim.calibrate.kernels` (backend ``triton``, the predictor's name for SGLang's Triton backend;
  other page sizes than 1 as ``triton_page16`` and so on; pages in shuffled order, as a long-running
  server's allocator leaves them), the plain-torch contiguous-cache matmul the committed H200 table used
  (``torch_contiguous``), and FlashInfer's paged decode when the package is installed (``flashinfer``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kvsim.calibrate.context import BenchContext
from kvsim.calibrate.shapes import CORE_MODELS, QUICK_MODEL, HeadConfig, bundled_specs, head_configs
from kvsim.calibrate.tables import TableWriter
from kvsim.models.spec import model_names

PREFILL_SEQS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_BATCHED = ((4, 512), (4, 2048), (16, 512), (16, 2048))
EXTEND_LENS = (128, 512, 2048, 8192)
EXTEND_PREFIXES = (1024, 4096, 16384, 32768)
DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_KV_LENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
#: Most cached tokens one decode point may hold (bounds memory: 8 GiB for 8 KV heads of 128).
DECODE_MAX_TOKENS = 2**21


def _configs(ctx: BenchContext) -> list[HeadConfig]:
    if ctx.quick:
        return head_configs([QUICK_MODEL], (1,))
    return head_configs(bundled_specs(model_names()))


def _core_configs(ctx: BenchContext) -> list[HeadConfig]:
    if ctx.quick:
        return _configs(ctx)
    return head_configs(bundled_specs(CORE_MODELS), (1,))


# ---- prefill ----------------------------------------------------------------------------------------
def run_prefill(ctx: BenchContext, table: TableWriter) -> None:
    """Causal GQA prefill over (batch, seq) for every head configuration (core models first)."""
    core = _core_configs(ctx)
    configs = core + [c for c in _configs(ctx) if c not in core]
    for config in configs:
        ctx.next_item()
        points = [(1, s) for s in ((16, 64) if ctx.quick else PREFILL_SEQS)]
        if config in core:
            points += [(2, 16)] if ctx.quick else list(PREFILL_BATCHED)
        with ctx.item(f"prefill {config.label}"):
            for batch, seq in points:
                q = ctx.rand(batch, config.num_heads, seq, config.head_dim)
                k = ctx.rand(batch, config.num_kv_heads, seq, config.head_dim)
                v = ctx.rand(batch, config.num_kv_heads, seq, config.head_dim)
                fn = _sdpa_fn(ctx, q, k, v, "prefill_attention", is_causal=True, enable_gqa=True)
                ms = ctx.measure(fn, min_reps=3, max_reps=15)
                table.add(
                    {
                        "batch": batch,
                        "seq_len": seq,
                        "num_heads": config.num_heads,
                        "num_kv_heads": config.num_kv_heads,
                        "head_dim": config.head_dim,
                        "causal": 1,
                        "dtype": "bf16",
                        "latency_ms": ms,
                    }
                )
        ctx.release()


def _sdpa_fn(ctx: BenchContext, q: Any, k: Any, v: Any, table: str, **kwargs: Any) -> Any:
    """An SDPA call pinned to the FlashAttention backend when it takes the inputs (else torch's choice)."""
    torch = ctx.torch
    sdpa = torch.nn.functional.scaled_dot_product_attention
    backends = ctx.notes.setdefault("backends", {})
    if ctx.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                sdpa(q, k, v, **kwargs)

            def flash(_: int) -> Any:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return sdpa(q, k, v, **kwargs)

            backends.setdefault(table, "torch_sdpa_flash")
            return flash
        except RuntimeError:
            backends[table] = "torch_sdpa_default (flash refused some shapes)"
    else:
        backends.setdefault(table, "torch_sdpa_default")
    return lambda _: sdpa(q, k, v, **kwargs)


# ---- extend -----------------------------------------------------------------------------------------
def run_extend(ctx: BenchContext, table: TableWriter) -> None:
    """New tokens attending to a cached prefix plus themselves (bottom-right causal)."""
    from torch.nn.attention.bias import causal_lower_right

    lens = (4, 16) if ctx.quick else EXTEND_LENS
    prefixes = (8, 32) if ctx.quick else EXTEND_PREFIXES
    for config in _core_configs(ctx):
        for extend in lens:
            ctx.next_item()
            with ctx.item(f"extend {config.label} extend={extend}"):
                for prefix in prefixes:
                    total = prefix + extend
                    q = ctx.rand(1, config.num_heads, extend, config.head_dim)
                    k = ctx.rand(1, config.num_kv_heads, total, config.head_dim)
                    v = ctx.rand(1, config.num_kv_heads, total, config.head_dim)
                    gqa = _flash_takes_gqa(ctx, q, k, v)
                    if not gqa:
                        group = config.num_heads // config.num_kv_heads
                        k = k.repeat_interleave(group, dim=1)
                        v = v.repeat_interleave(group, dim=1)
                    ctx.notes.setdefault("backends", {})["extend_attention"] = (
                        "torch_sdpa_causal_lower_right" + ("_gqa" if gqa else "_expanded_kv")
                    )
                    fn = _extend_fn(ctx, q, k, v, causal_lower_right(extend, total), gqa)
                    ms = ctx.measure(fn, min_reps=3, max_reps=15)
                    table.add(
                        {
                            "batch": 1,
                            "extend_len": extend,
                            "prefix_len": prefix,
                            "num_heads": config.num_heads,
                            "num_kv_heads": config.num_kv_heads,
                            "head_dim": config.head_dim,
                            "dtype": "bf16",
                            "latency_ms": ms,
                        }
                    )
            ctx.release()


def _extend_fn(ctx: BenchContext, q: Any, k: Any, v: Any, mask: Any, gqa: bool) -> Any:
    sdpa = ctx.torch.nn.functional.scaled_dot_product_attention
    return lambda _: sdpa(q, k, v, attn_mask=mask, enable_gqa=gqa)


def _flash_takes_gqa(ctx: BenchContext, q: Any, k: Any, v: Any) -> bool:
    """Whether torch's flash kernel accepts these GQA inputs (else the mask path would fall back to math)."""
    if not ctx.is_cuda:
        return True  # the CPU math path handles GQA; tiny shapes only
    try:
        from torch.backends.cuda import SDPAParams, can_use_flash_attention

        return bool(can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, False, True)))
    except (TypeError, RuntimeError, ImportError):
        return False


# ---- decode -----------------------------------------------------------------------------------------
def decode_points(quick: bool, kv_heads: int, head_dim: int, reduced: bool = False) -> list[tuple[int, int]]:
    """(batch, kv_len) points measured for one head configuration, bounded by cached tokens."""
    if quick:
        return [(1, 17), (3, 64)] if not reduced else [(2, 40)]
    batches = (1, 32, 128) if reduced else DECODE_BATCHES
    lens = (1024, 4096, 16384) if reduced else DECODE_KV_LENS
    budget = DECODE_MAX_TOKENS * 8 * 128 // max(kv_heads * head_dim, 1)
    return [(b, n) for b in batches for n in lens if b * n <= budget]


def run_decode(ctx: BenchContext, table: TableWriter) -> None:
    """Decode attention: the Triton paged kernel first, then torch's contiguous form and FlashInfer."""
    core = _core_configs(ctx)
    plan: list[tuple[str, HeadConfig, int, bool]] = []
    if ctx.has_triton:
        plan += [("triton", c, 1, False) for c in core]
    plan += [("torch_contiguous", core[0], 1, False)]
    if ctx.has_triton:
        plan += [("triton", core[0], page, True) for page in ((4,) if ctx.quick else (16, 64))]
        plan += [("triton", c, 1, True) for c in _configs(ctx) if c not in core]
    if _flashinfer() is not None and ctx.is_cuda:
        plan += [("flashinfer", c, 1, False) for c in core]
    used = ctx.notes.setdefault("backends", {}).setdefault("decode_attention", [])
    for backend, config, page_size, reduced in plan:
        ctx.next_item()
        with ctx.item(f"decode {backend} {config.label} page={page_size}"):
            for batch, kv_len in decode_points(ctx.quick, config.num_kv_heads, config.head_dim, reduced):
                fn = _decode_fn(ctx, backend, config, batch, kv_len, page_size)
                ms = ctx.measure(fn)
                table.add(
                    {
                        "batch": batch,
                        "kv_len": kv_len,
                        "num_heads": config.num_heads,
                        "num_kv_heads": config.num_kv_heads,
                        "head_dim": config.head_dim,
                        "dtype": "bf16",
                        "latency_ms": ms,
                        "backend": backend_name(backend, page_size),
                        "page_size": page_size,
                    }
                )
                del fn
            if backend_name(backend, page_size) not in used:
                used.append(backend_name(backend, page_size))
        ctx.release()


def backend_name(backend: str, page_size: int) -> str:
    """The ``backend`` column: the predictor keys decode rows by backend, so each page size gets its own."""
    return backend if page_size == 1 else f"{backend}_page{page_size}"


def paged_cache(
    ctx: BenchContext, batch: int, kv_len: int, kv_heads: int, head_dim: int, page_size: int
) -> tuple[Any, Any, Any, Any]:
    """A random paged cache holding ``batch`` requests of ``kv_len`` tokens: (k, v, block_table, seq_lens).

    Pages are handed out in a shuffled order (seeded), as a long-running server's allocator leaves them.
    """
    torch = ctx.torch
    pages_per = math.ceil(kv_len / page_size)
    num_pages = batch * pages_per
    k = ctx.rand(num_pages * page_size, kv_heads, head_dim)
    v = ctx.rand(num_pages * page_size, kv_heads, head_dim)
    gen = torch.Generator(device="cpu").manual_seed(1234)
    order = torch.randperm(num_pages, generator=gen).to(torch.int32)
    block_table = order.view(batch, pages_per).to(ctx.device)
    seq_lens = torch.full((batch,), kv_len, dtype=torch.int32, device=ctx.device)
    return k, v, block_table, seq_lens


def _decode_fn(
    ctx: BenchContext, backend: str, config: HeadConfig, batch: int, kv_len: int, page_size: int
) -> Any:
    torch = ctx.torch
    heads, kv_heads, dim = config.num_heads, config.num_kv_heads, config.head_dim
    if backend == "torch_contiguous":
        # q[B, kvh, group, d] @ K^T, softmax, @ V over a contiguous [B, kvh, C, d] cache (the H200 table).
        group = heads // kv_heads
        q = ctx.rand(batch, kv_heads, group, dim)
        k = ctx.rand(batch, kv_heads, kv_len, dim)
        v = ctx.rand(batch, kv_heads, kv_len, dim)
        scale = dim**-0.5

        def contiguous(_: int) -> Any:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
            return torch.matmul(scores.softmax(-1), v)

        return contiguous
    k, v, block_table, seq_lens = paged_cache(ctx, batch, kv_len, kv_heads, dim, page_size)
    q = ctx.rand(batch, heads, dim)
    if backend == "triton":
        from kvsim.calibrate import kernels

        splits = kernels.decode_splits(batch, kv_heads, kv_len, ctx.sms)
        out = kernels.paged_decode_attention(q, k, v, block_table, seq_lens, page_size, splits)
        _check_decode(ctx, out, kernels.paged_decode_reference, q, k, v, block_table, seq_lens, page_size)
        return lambda _: kernels.paged_decode_attention(
            q, k, v, block_table, seq_lens, page_size, splits, out=out
        )
    if backend == "flashinfer":
        return _flashinfer_fn(ctx, q, k, v, block_table, seq_lens, page_size, kv_len)
    raise ValueError(f"unknown decode backend {backend!r}")


def _check_decode(ctx: BenchContext, out: Any, reference: Any, *args: Any) -> None:
    """Compare the kernel with the torch reference once per configuration (small batches only: it is slow)."""
    q = args[0]
    if q.shape[0] > 8 or int(args[4].max()) > 4096:
        return
    want = reference(*args)
    err = float((out.float() - want.float()).abs().max())
    checks = ctx.notes.setdefault("decode_kernel_max_abs_error", 0.0)
    ctx.notes["decode_kernel_max_abs_error"] = max(checks, err)
    if not err < 0.05:
        raise RuntimeError(f"the Triton decode kernel differs from the torch reference by {err:.4f}")


def _flashinfer() -> Any:
    try:
        import flashinfer  # type: ignore[import-not-found]
    except Exception:  # absent or broken installs both mean "no FlashInfer"
        return None
    return flashinfer


def _flashinfer_fn(
    ctx: BenchContext, q: Any, k: Any, v: Any, block_table: Any, seq_lens: Any, page_size: int, kv_len: int
) -> Any:
    """FlashInfer's paged decode (``BatchDecodeWithPagedKVCacheWrapper``, NHD layout)."""
    torch = ctx.torch
    flashinfer = _flashinfer()
    batch, heads, dim = q.shape
    kv_heads = k.shape[1]
    pages_per = block_table.shape[1]
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=ctx.device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    indptr = torch.arange(0, batch + 1, dtype=torch.int32, device=ctx.device) * pages_per
    indices = block_table.reshape(-1).contiguous()
    last = kv_len - (pages_per - 1) * page_size
    last_page_len = torch.full((batch,), last, dtype=torch.int32, device=ctx.device)
    wrapper.plan(indptr, indices, last_page_len, heads, kv_heads, dim, page_size, data_type=torch.bfloat16)
    k_pages = k.view(-1, page_size, kv_heads, dim)
    v_pages = v.view(-1, page_size, kv_heads, dim)
    return lambda _: wrapper.run(q, (k_pages, v_pages))


def planned_decode_backends(has_triton: bool, cuda: bool) -> Sequence[str]:
    """Backends a decode run measures, for the plan printout."""
    names = ["triton"] if has_triton else []
    names.append("torch_contiguous")
    if cuda and _flashinfer() is not None:
        names.append("flashinfer")
    return names
