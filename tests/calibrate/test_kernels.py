"""The Triton kernels equal their torch references (Triton's CPU interpreter, as in CI)."""

from __future__ import annotations

import pytest

from tests.calibrate.conftest import requires_torch, requires_triton

pytestmark = requires_triton

CASES = [
    # batch, heads, kv_heads, head_dim, page_size, lengths, splits
    (3, 8, 2, 16, 1, [17, 64, 5], 1),
    (3, 8, 2, 16, 1, [17, 64, 5], 3),
    (2, 4, 4, 32, 4, [33, 7], 8),  # more splits than some requests have blocks: empty splits
    (1, 12, 2, 16, 16, [100], 2),  # group of 6: padded to 16 query rows
    (2, 2, 1, 16, 3, [1, 50], 4),  # a page size that does not divide the lengths; a 1-token request
]


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "dim", "page", "lengths", "splits"), CASES)
def test_paged_decode_matches_reference(
    batch: int, heads: int, kv_heads: int, dim: int, page: int, lengths: list[int], splits: int
) -> None:
    import torch

    from kvsim.calibrate import kernels

    assert kernels.INTERPRETING
    gen = torch.Generator().manual_seed(7)
    pages_per = -(-max(lengths) // page)
    num_pages = batch * pages_per + 5  # spare pages that no request uses
    k = torch.randn(num_pages * page, kv_heads, dim, generator=gen).to(torch.bfloat16)
    v = torch.randn(num_pages * page, kv_heads, dim, generator=gen).to(torch.bfloat16)
    table = (
        torch.randperm(num_pages, generator=gen)[: batch * pages_per].view(batch, pages_per).to(torch.int32)
    )
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    q = torch.randn(batch, heads, dim, generator=gen).to(torch.bfloat16)
    out = kernels.paged_decode_attention(q, k, v, table, seq_lens, page, splits, block_n=16)
    want = kernels.paged_decode_reference(q, k, v, table, seq_lens, page)
    assert out.shape == (batch, heads, dim) and out.dtype == torch.bfloat16
    assert kernels.max_abs_error(out, want) < 0.02


def test_decode_reads_only_its_pages() -> None:
    """Poisoning every page outside the block table leaves the output unchanged."""
    import torch

    from kvsim.calibrate import kernels

    gen = torch.Generator().manual_seed(3)
    k = torch.randn(40, 2, 16, generator=gen).to(torch.bfloat16)
    v = torch.randn(40, 2, 16, generator=gen).to(torch.bfloat16)
    table = torch.tensor([[5, 9, 2]], dtype=torch.int32)  # page size 4: slots 20-23, 36-39, 8-9
    seq_lens = torch.tensor([10], dtype=torch.int32)
    q = torch.randn(1, 4, 16, generator=gen).to(torch.bfloat16)
    before = kernels.paged_decode_attention(q, k, v, table, seq_lens, 4, 2, block_n=16)
    used = torch.tensor([20, 21, 22, 23, 36, 37, 38, 39, 8, 9])
    mask = torch.ones(40, dtype=torch.bool)
    mask[used] = False
    k[mask], v[mask] = float("nan"), float("nan")
    after = kernels.paged_decode_attention(q, k, v, table, seq_lens, 4, 2, block_n=16)
    assert torch.equal(before, after)


def test_decode_splits() -> None:
    from kvsim.calibrate.kernels import decode_splits

    assert decode_splits(1, 8, 4096, 132) == 32  # 2 x 132 SMs / 8 programs = 33, capped at 32
    assert decode_splits(1, 8, 100, 132) == 2  # no more splits than 64-token blocks
    assert decode_splits(256, 8, 4096, 132) == 1


def test_rmsnorm_and_silu_and_mul() -> None:
    import torch

    from kvsim.calibrate import kernels

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 40, generator=gen).to(torch.bfloat16)
    w = torch.randn(40, generator=gen).to(torch.bfloat16)
    assert kernels.max_abs_error(kernels.rmsnorm(x, w), kernels.rmsnorm_reference(x, w)) < 0.05
    y = torch.randn(3, 80, generator=gen).to(torch.bfloat16)
    assert kernels.max_abs_error(kernels.silu_and_mul(y), kernels.silu_and_mul_reference(y)) < 0.05
    with pytest.raises(ValueError, match="unit stride"):
        kernels.rmsnorm(x.t(), w)


@requires_torch
def test_reference_is_plain_softmax_attention() -> None:
    """The reference itself, against a hand-written dense computation for one request."""
    import torch

    from kvsim.calibrate.reference import paged_decode_reference

    gen = torch.Generator().manual_seed(5)
    k = torch.randn(6, 1, 8, generator=gen)
    v = torch.randn(6, 1, 8, generator=gen)
    q = torch.randn(1, 2, 8, generator=gen)
    table = torch.tensor([[2, 0]], dtype=torch.int32)  # page size 3: pages 2 (slots 6-8) and 0 (slots 0-2)
    k_pages = torch.cat([k, torch.randn(3, 1, 8, generator=gen)])  # 9 slots = 3 pages of 3
    v_pages = torch.cat([v, torch.randn(3, 1, 8, generator=gen)])
    out = paged_decode_reference(q, k_pages, v_pages, table, torch.tensor([5]), 3)
    slots = torch.tensor([6, 7, 8, 0, 1])
    keys, values = k_pages[slots, 0], v_pages[slots, 0]
    want = torch.softmax(q[0] @ keys.T / 8**0.5, dim=-1) @ values
    assert torch.allclose(out[0], want, atol=1e-5)
