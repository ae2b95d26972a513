"""End-to-end forward steps of a random-weight Qwen3-shaped model: every profile's own accuracy check.

The model is a real Qwen3 layer stack (no checkpoint is loaded, so nothing is downloaded): embedding;
per layer RMSNorm, the fused QKV projection, per-head q/k RMSNorm, neox RoPE (theta 1e6), attention,
the O projection, a residual add, RMSNorm, gate/up, SiLU-and-mul, down, a residual add; then the final
norm, the LM head on each request's last token, and greedy sampling. Keys and values are written into a
paged KV pool (page size 1, SGLang's default) at shuffled slots.

* ``prefill`` rows run one request of ``extend_len`` new tokens eagerly (attention by torch SDPA, causal),
  as SGLang runs prefill; the events bracket the whole step, launch gaps included.
* ``decode`` rows run ``batch`` requests of one new token over ``past_len`` cached tokens each, captured
  once per point in a CUDA graph and replayed (attention by the Triton paged kernel), as SGLang runs
  decode. On the CPU (``--quick``) decode runs eagerly.

Compare these rows with ``kvsim step-time --model <model> --gpu <profile> --batch 1x<extend>:0`` and
``--batch <batch>x1:<past>`` (``calibration/check_e2e.py`` does so for every row).
"""

from __future__ import annotations

from typing import Any

from kvsim.calibrate.bench_misc import apply_rope, rope_tables
from kvsim.calibrate.context import BenchContext
from kvsim.calibrate.shapes import QUICK_MODEL
from kvsim.calibrate.tables import TableWriter
from kvsim.models.spec import ModelSpec, load_model_spec

E2E_MODEL = "Qwen3-8B"
PREFILL_LENS = (2048, 4096, 8192, 16384)
DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
DECODE_PASTS = (1024, 4096, 16384)
#: Device memory kept free besides the KV pool (activations of a 16k-token prefill, graph pools, workspaces).
RESERVE_BYTES = 10 * 1024**3
MAX_POOL_TOKENS = 1 << 20


class RandomQwen3:
    """A Qwen3-shaped decoder with random weights and a paged KV pool, on ``ctx.device``."""

    def __init__(self, ctx: BenchContext, spec: ModelSpec, pool_tokens: int, max_positions: int) -> None:
        self.ctx = ctx
        self.spec = spec
        torch = ctx.torch
        self.torch = torch
        heads, kv, dim, hidden = (
            spec.num_attention_heads,
            spec.num_key_value_heads,
            spec.head_dim,
            spec.hidden_size,
        )
        inter = spec.intermediate_size

        def norm(width: int) -> Any:
            return 1.0 + 0.1 * ctx.rand(width)

        self.layers = [
            {
                "qkv": ctx.rand((heads + 2 * kv) * dim, hidden, scale=hidden**-0.5),
                "o": ctx.rand(hidden, heads * dim, scale=(heads * dim) ** -0.5),
                "gate_up": ctx.rand(2 * inter, hidden, scale=hidden**-0.5),
                "down": ctx.rand(hidden, inter, scale=inter**-0.5),
                "in_norm": norm(hidden),
                "post_norm": norm(hidden),
                "q_norm": norm(dim),
                "k_norm": norm(dim),
            }
            for _ in range(spec.num_layers)
        ]
        self.embed = ctx.rand(spec.vocab_size, hidden)
        self.final_norm = norm(hidden)
        self.lm_head = ctx.rand(spec.vocab_size, hidden, scale=hidden**-0.5)
        self.cos, self.sin = rope_tables(torch, ctx.device, max_positions, dim)
        shape = (spec.num_layers, pool_tokens, kv, dim)
        self.k_pool = torch.empty(shape, device=ctx.device, dtype=torch.bfloat16)
        self.v_pool = torch.empty(shape, device=ctx.device, dtype=torch.bfloat16)
        for layer in range(spec.num_layers):  # layer by layer: no pool-sized temporary
            self.k_pool[layer].normal_()
            self.v_pool[layer].normal_()
        self.kernels: Any = None
        if ctx.has_triton:
            from kvsim.calibrate import kernels

            self.kernels = kernels
        if ctx.has_triton and ctx.is_cuda:
            self.rms = kernels.rmsnorm
            self.silu = kernels.silu_and_mul
        else:
            # On the CPU the Triton interpreter runs one program at a time: far too slow for every norm.
            self.rms = lambda x, w: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, 1e-6)
            self.silu = lambda x: torch.nn.functional.silu(x[:, : x.shape[1] // 2]) * x[:, x.shape[1] // 2 :]

    def forward(self, ids: Any, positions: Any, slots: Any, attend: Any, last: Any) -> Any:
        """One step over ``ids [T]``; ``attend(layer, q, k, v) -> [T, H*D]``; returns sampled ids."""
        torch, spec = self.torch, self.spec
        linear = torch.nn.functional.linear
        heads, kv, dim = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        tokens = ids.shape[0]
        h = torch.nn.functional.embedding(ids, self.embed)
        for index, w in enumerate(self.layers):
            x = self.rms(h, w["in_norm"])
            qkv = linear(x, w["qkv"])
            q, k, v = qkv.split([heads * dim, kv * dim, kv * dim], dim=-1)
            q = self.rms(q.reshape(-1, dim), w["q_norm"]).view(tokens, heads, dim)
            k = self.rms(k.reshape(-1, dim), w["k_norm"]).view(tokens, kv, dim)
            q = apply_rope(torch, q, self.cos, self.sin, positions)
            k = apply_rope(torch, k, self.cos, self.sin, positions)
            v = v.reshape(tokens, kv, dim)
            self.k_pool[index].index_copy_(0, slots, k)
            self.v_pool[index].index_copy_(0, slots, v)
            h = h + linear(attend(index, q, k, v), w["o"])
            x = self.rms(h, w["post_norm"])
            h = h + linear(self.silu(linear(x, w["gate_up"])), w["down"])
        final = self.rms(h.index_select(0, last), self.final_norm)
        return linear(final, self.lm_head).argmax(dim=-1)

    # ---- attention -----------------------------------------------------------------------------------
    def prefill_attention(self, layer: int, q: Any, k: Any, v: Any) -> Any:
        """Causal attention of one request's new tokens (no prefix)."""
        torch = self.torch
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            is_causal=True,
            enable_gqa=True,
        )
        return out.squeeze(0).transpose(0, 1).reshape(q.shape[0], -1)

    def decode_attention(self, block_table: Any, seq_lens: Any, splits: int) -> Any:
        """An ``attend`` over the pool for one new token per request (Triton when present)."""
        kernels = self.kernels

        def attend(layer: int, q: Any, k: Any, v: Any) -> Any:
            if kernels is not None:
                out = kernels.paged_decode_attention(
                    q, self.k_pool[layer], self.v_pool[layer], block_table, seq_lens, 1, splits
                )
                return out.reshape(q.shape[0], -1)
            # Without Triton: gather each request's KV (page size 1, equal lengths), then SDPA; no host
            # syncs, so it still captures into a CUDA graph.
            slots = block_table.long()
            keys = self.k_pool[layer][slots].transpose(1, 2)  # [B, KVH, L, D]
            values = self.v_pool[layer][slots].transpose(1, 2)
            out = self.torch.nn.functional.scaled_dot_product_attention(
                q.unsqueeze(2), keys, values, enable_gqa=True
            )
            return out.reshape(q.shape[0], -1)

        return attend


def kv_bytes_per_token(spec: ModelSpec) -> int:
    """Pool bytes per token (keys and values of every layer, bf16)."""
    return 2 * spec.num_layers * spec.num_key_value_heads * spec.head_dim * 2


def plan_points(spec: ModelSpec, pool_tokens: int, quick: bool) -> list[tuple[str, int, int, int]]:
    """``(phase, batch, extend_len, past_len)`` points whose tokens fit in the pool."""
    if quick:
        return [("prefill", 1, 16, 0), ("prefill", 1, 32, 0), ("decode", 1, 1, 8), ("decode", 2, 1, 16)]
    points = [("prefill", 1, n, 0) for n in PREFILL_LENS if n <= pool_tokens]
    points += [
        ("decode", b, 1, p) for p in DECODE_PASTS for b in DECODE_BATCHES if b * (p + 1) <= pool_tokens
    ]
    return points


def run_e2e(ctx: BenchContext, table: TableWriter) -> None:
    """Build the model, then time prefill and decode steps (most informative points first)."""
    spec = QUICK_MODEL if ctx.quick else load_model_spec(E2E_MODEL)
    ctx.next_item()
    if ctx.quick:
        pool = 64
    else:
        weights = 2 * (spec.num_params)
        free = ctx.free_memory() - weights - RESERVE_BYTES
        pool = int(min(MAX_POOL_TOKENS, max(free, 0) // kv_bytes_per_token(spec)))
    points = plan_points(spec, pool, ctx.quick)
    if not points:
        raise RuntimeError(f"not enough device memory for a {spec.name} KV pool ({pool} tokens)")
    max_positions = max(e + p for _, _, e, p in points) + 1
    model = RandomQwen3(ctx, spec, pool, max_positions)
    ctx.notes["e2e"] = {
        "model": spec.name,
        "layers": spec.num_layers,
        "weights": "random bf16",
        "pool_tokens": pool,
        "prefill": "eager; attention torch SDPA (causal, GQA)",
        "decode": ("CUDA graph per point; " if ctx.is_cuda else "eager; ")
        + (
            "attention Triton split-KV paged kernel, page_size 1"
            if ctx.has_triton
            else "attention: KV gathered per request, then torch SDPA (no Triton)"
        ),
        "sampling": "greedy (argmax) on each request's last token",
    }
    # Short prefills, then decodes, then long prefills: a short budget still measures both phases.
    ordered = sorted(
        points, key=lambda p: (p[0] == "prefill" and p[2] > 4096, p[0] == "decode" and p[3] > 4096)
    )
    checked = False
    for phase, batch, extend, past in ordered:
        ctx.next_item(weight=4.0 if extend > 4096 else 1.0)
        with ctx.item(f"e2e {phase} batch={batch} extend={extend} past={past}"):
            if phase == "prefill":
                fn = _prefill_fn(ctx, model, extend)
            else:
                fn = _decode_fn(ctx, model, batch, past, pool)
            if not checked:
                out = fn(0)
                ctx.sync()
                if not bool((out >= 0).all()) or not bool((out < spec.vocab_size).all()):
                    raise RuntimeError("e2e model sampled token ids outside the vocabulary")
                checked = True
            ms = ctx.measure(fn, warmup=1, min_reps=3, max_reps=10, target_s=0.2, queue_ahead=False)
            table.add(
                {
                    "model": spec.name,
                    "phase": phase,
                    "batch": batch,
                    "extend_len": extend,
                    "past_len": past,
                    "latency_ms": ms,
                }
            )
            del fn
        ctx.release()
    del model
    ctx.release(collect=True)


def _prefill_fn(ctx: BenchContext, model: RandomQwen3, tokens: int) -> Any:
    torch = ctx.torch
    ids = torch.randint(0, model.spec.vocab_size, (tokens,), device=ctx.device)
    positions = torch.arange(tokens, device=ctx.device)
    slots = torch.randperm(tokens, device=ctx.device)
    last = torch.tensor([tokens - 1], device=ctx.device)
    return lambda _: model.forward(ids, positions, slots, model.prefill_attention, last)


def _decode_fn(ctx: BenchContext, model: RandomQwen3, batch: int, past: int, pool: int) -> Any:
    torch = ctx.torch
    gen = torch.Generator(device="cpu").manual_seed(batch * 100003 + past)
    table = torch.randperm(pool, generator=gen)[: batch * (past + 1)].view(batch, past + 1)
    block_table = table.to(torch.int32).to(ctx.device)
    slots = table[:, past].to(ctx.device)
    seq_lens = torch.full((batch,), past + 1, dtype=torch.int32, device=ctx.device)
    ids = torch.randint(0, model.spec.vocab_size, (batch,), device=ctx.device)
    positions = torch.full((batch,), past, dtype=torch.long, device=ctx.device)
    last = torch.arange(batch, device=ctx.device)
    splits = 1
    if model.kernels is not None:
        splits = model.kernels.decode_splits(batch, model.spec.num_key_value_heads, past + 1, ctx.sms)
    attend = model.decode_attention(block_table, seq_lens, splits)

    def step(_: int = 0) -> Any:
        return model.forward(ids, positions, slots, attend, last)

    if not ctx.is_cuda:
        return step
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compiles the Triton kernels and settles cuBLAS before capture
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay(_: int) -> Any:
        graph.replay()
        return out

    return replay
