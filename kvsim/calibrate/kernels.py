"""Triton kernels written for calibration, each with a plain-torch reference it is checked against.

* :func:`paged_decode_attention`: decode attention (one new token per request) over a paged KV cache,
  in the split-KV ("flash-decoding") form SGLang's Triton backend uses: stage 1 runs one program per
  (request, KV head, split), loading every query head of that KV head's group at once (GQA) and gathering
  keys and values through the page table; stage 2 merges the splits by their log-sum-exp.
* :func:`rmsnorm` and :func:`silu_and_mul`: the fused elementwise kernels a serving engine runs instead of
  chains of torch ops.

Importing this module imports triton; the caller decides beforehand whether ``TRITON_INTERPRET=1`` is set
(it is read when the kernels are decorated), which is how ``--quick`` and the tests run them on the CPU.

Cache layout: ``k_cache``/``v_cache`` are ``[num_pages * page_size, num_kv_heads, head_dim]`` (SGLang's
token-slot pool; with ``page_size == 1`` a page is one token slot). ``block_table[b, i]`` is the page
holding request ``b``'s tokens ``i * page_size ... (i + 1) * page_size - 1``; ``seq_lens[b]`` counts
request ``b``'s cached tokens, the new one included.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from kvsim.calibrate.reference import (
    max_abs_error,
    paged_decode_reference,
    rmsnorm_reference,
    silu_and_mul_reference,
)

__all__ = [
    "INTERPRETING",
    "decode_splits",
    "max_abs_error",
    "paged_decode_attention",
    "paged_decode_reference",
    "rmsnorm",
    "rmsnorm_reference",
    "silu_and_mul",
    "silu_and_mul_reference",
]


def _fix_interpreter_scalars() -> None:
    """Let Triton's CPU interpreter run loops with run-time bounds under NumPy >= 2.4.

    The interpreter (triton 3.6) turns its one-element scalar tensors into loop bounds with
    ``int(array)``, which NumPy 2.4 refuses for arrays with a dimension. This wraps the interpreter's
    patching hook so that ``__index__`` takes the single element instead. It changes nothing when the
    kernels are compiled for a GPU, and nothing on a triton whose interpreter lacks the hook.
    """
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - triton without an interpreter
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_kvsim_scalar_fix", False):
        return

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._kvsim_scalar_fix = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


_fix_interpreter_scalars()

#: Whether the kernels run in Triton's CPU interpreter. Its ``tl.dot`` mishandles bf16 operands (it
#: multiplies their bit patterns), so interpreted kernels upcast to float32 before each dot; compiled
#: kernels keep 16-bit tensor-core dots.
INTERPRETING = bool(getattr(getattr(getattr(triton, "knobs", None), "runtime", None), "interpret", False))


def _next_pow2(value: int) -> int:
    return 1 << max(0, (int(value) - 1).bit_length())


@triton.jit
def _decode_stage1(
    Q,
    K,
    V,
    BlockTable,
    SeqLens,
    MidO,
    MidLse,
    sm_scale,
    stride_qb,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_mob,
    stride_moh,
    stride_mos,
    stride_mlb,
    stride_mlh,
    num_splits,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(SeqLens + b)
    # Splits are whole blocks so that only the last block of a request needs a mask.
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_g = offs_g < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kv_head * GROUP + offs_g
    q = tl.load(
        Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=mask_g[:, None] & mask_d[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        mask_n = pos < end
        page = tl.load(BlockTable + b * stride_bt + pos // PAGE_SIZE, mask=mask_n, other=0)
        slot = page.to(tl.int64) * PAGE_SIZE + pos % PAGE_SIZE
        mask_kv = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            K + slot[:, None] * stride_ks + kv_head * stride_kh + offs_d[None, :], mask=mask_kv, other=0.0
        )
        if DOT_F32:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k)) * sm_scale
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + slot[:, None] * stride_vs + kv_head * stride_vh + offs_d[None, :], mask=mask_kv, other=0.0
        )
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # An empty split (short request, many splits) writes weight zero: lse = -inf, output 0.
    has = l_i > 0
    l_safe = tl.where(has, l_i, 1.0)
    lse = tl.where(has, m_i + tl.log(l_safe), float("-inf"))
    out = acc / l_safe[:, None]
    tl.store(
        MidO + b * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :],
        out,
        mask=mask_g[:, None] & mask_d[None, :],
    )
    tl.store(MidLse + b * stride_mlb + heads * stride_mlh + split, lse, mask=mask_g)


@triton.jit
def _decode_stage2(
    MidO,
    MidLse,
    Out,
    stride_mob,
    stride_moh,
    stride_mos,
    stride_mlb,
    stride_mlh,
    stride_ob,
    stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < num_splits
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(MidLse + b * stride_mlb + h * stride_mlh + offs_s, mask=mask_s, other=float("-inf"))
    top = tl.max(lse, 0)
    weight = tl.exp(lse - top)
    part = tl.load(
        MidO + b * stride_mob + h * stride_moh + offs_s[:, None] * stride_mos + offs_d[None, :],
        mask=mask_s[:, None] & mask_d[None, :],
        other=0.0,
    )
    out = tl.sum(weight[:, None] * part, 0) / tl.sum(weight, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=mask_d)


def decode_splits(batch: int, num_kv_heads: int, max_len: int, sms: int, block_n: int = 64) -> int:
    """KV splits per request: enough programs to fill ``sms`` twice, never more than the blocks there are."""
    wanted = math.ceil(2 * max(sms, 1) / max(batch * num_kv_heads, 1))
    return max(1, min(wanted, math.ceil(max_len / block_n), 32))


def smoke_test(device: Any) -> str | None:
    """Compile and run every kernel once on ``device`` against its reference; ``None`` or what went wrong.

    Triton compiles on first use (it needs a C compiler for its launcher); a failure here lets a GPU run
    fall back to torch for the Triton parts instead of failing every Triton item one by one.
    """
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        k = torch.randn(64, 2, 128, generator=gen).to(device=device, dtype=torch.bfloat16)
        v = torch.randn(64, 2, 128, generator=gen).to(device=device, dtype=torch.bfloat16)
        q = torch.randn(2, 8, 128, generator=gen).to(device=device, dtype=torch.bfloat16)
        table = torch.randperm(64, generator=gen).view(2, 32).to(device=device, dtype=torch.int32)
        lens = torch.tensor([32, 17], dtype=torch.int32, device=device)
        errors = {
            "paged_decode_attention": max_abs_error(
                paged_decode_attention(q, k, v, table, lens, 1, 2),
                paged_decode_reference(q, k, v, table, lens, 1),
            ),
            "rmsnorm": max_abs_error(rmsnorm(q[0], k[0, 0]), rmsnorm_reference(q[0], k[0, 0])),
            "silu_and_mul": max_abs_error(silu_and_mul(q[0]), silu_and_mul_reference(q[0])),
        }
    except Exception as exc:  # any failure (no compiler, driver, codegen) means the kernels cannot run
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    bad = {name: err for name, err in errors.items() if not err < 0.05}
    return f"kernels differ from their references: {bad}" if bad else None


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    num_splits: int,
    sm_scale: float | None = None,
    out: torch.Tensor | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """Decode attention of ``q [B, H, D]`` over a paged cache; returns ``[B, H, D]`` in ``q``'s dtype.

    ``num_splits`` is fixed by the caller (see :func:`decode_splits`) so that one CUDA graph can serve
    every sequence length of its batch size.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    mid_o = torch.empty(batch, num_heads, num_splits, head_dim, device=q.device, dtype=torch.float32)
    mid_lse = torch.empty(batch, num_heads, num_splits, device=q.device, dtype=torch.float32)
    if out is None:
        out = torch.empty_like(q)
    block_d = max(16, _next_pow2(head_dim))
    # tl.dot needs every dimension >= 16 on GPUs; padded query rows are masked out.
    group_pad = max(16, _next_pow2(group))
    _decode_stage1[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_table,
        seq_lens,
        mid_o,
        mid_lse,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        block_table.stride(0),
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        num_splits,
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        PAGE_SIZE=page_size,
        DOT_F32=INTERPRETING,
        num_warps=4,
        num_stages=2,
    )
    _decode_stage2[(batch, num_heads)](
        mid_o,
        mid_lse,
        out,
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        out.stride(0),
        out.stride(1),
        num_splits,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        SPLITS_PAD=max(2, _next_pow2(num_splits)),
        num_warps=4,
    )
    return out


@triton.jit
def _rmsnorm_kernel(X, W, Y, stride_x, stride_y, width, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, 0) / width + eps)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (x * inv * w).to(Y.dtype.element_ty), mask=mask)


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Fused RMSNorm over the last dimension of a 2-D ``x [rows, width]`` (rows may be strided)."""
    rows, width = x.shape
    if x.stride(1) != 1:
        raise ValueError("rmsnorm needs unit stride along the normalized dimension")
    out = torch.empty(rows, width, device=x.device, dtype=x.dtype) if out is None else out
    block = _next_pow2(width)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _rmsnorm_kernel[(rows,)](
        x, weight, out, x.stride(0), out.stride(0), width, eps, BLOCK=block, num_warps=warps
    )
    return out


@triton.jit
def _silu_and_mul_kernel(X, Y, stride_x, stride_y, d, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    gate = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + d + offs, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x[:, :d]) * x[:, d:]`` for ``x [rows, 2d]``, fused into one kernel."""
    rows, width = x.shape
    d = width // 2
    out = torch.empty(rows, d, device=x.device, dtype=x.dtype) if out is None else out
    block = min(1024, _next_pow2(d))
    _silu_and_mul_kernel[(rows, triton.cdiv(d, block))](x, out, x.stride(0), out.stride(0), d, BLOCK=block)
    return out
