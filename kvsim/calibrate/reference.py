"""Plain-torch references of the calibration kernels (importable without triton).

The Triton kernels of :mod:`kvsim.calibrate.kernels` are checked against these, and the end-to-end model
falls back to them when Triton is absent (``--quick`` on a machine without it).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def paged_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    page_size: int,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """The same attention in plain torch (float32 math), one request at a time."""
    batch, num_heads, head_dim = q.shape
    group = num_heads // k_cache.shape[1]
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q)
    for b in range(batch):
        length = int(seq_lens[b])
        pos = torch.arange(length, device=q.device)
        slots = block_table[b, pos // page_size].long() * page_size + pos % page_size
        k = k_cache[slots].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v_cache[slots].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].float(), k) * scale
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm in float32 torch ops."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """The same in torch ops."""
    d = x.shape[-1] // 2
    return (torch.nn.functional.silu(x[:, :d].float()) * x[:, d:].float()).to(x.dtype)


def max_abs_error(a: Any, b: Any) -> float:
    """Largest absolute difference of two tensors, in float32."""
    return float((a.float() - b.float()).abs().max())
