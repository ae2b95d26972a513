"""Device check (needs torch and a CUDA GPU): is the H200 tables' ~20 us floor a timing artifact?

The H200 calibration timed each kernel alone between two CUDA events. This script times the same cuBLAS
GEMMs (and torch SDPA prefill attention) three ways: alone between events (the calibration's method),
back to back (many calls between two events, rotating weight copies so that L2 does not serve them), and
replayed from a CUDA graph (how SGLang runs decode). It also times a GEMM-only Qwen3-8B decode skeleton
(36 layers of qkv/o/gate_up/down plus the LM head, replayed from a CUDA graph) and a GEMM + SDPA prefill
skeleton, so that ``scripts/validate_step_time.py`` can compare them with the predictor.

It also times fused decode attention (torch SDPA with one query token over a contiguous GQA cache)
from CUDA graphs, the nearest thing to SGLang's paged decode kernel that plain torch offers.

    python scripts/check_timing_floor.py [gemm] [skeleton] [decode]

Writes ``$OUT/timing_floor.csv``, ``$OUT/skeleton.csv`` and ``$OUT/decode_sdpa.csv``. Not a test.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F

OUT = os.environ.get("OUT", ".")
DEV = "cuda"
BF16 = torch.bfloat16
SHAPES = [(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288), (151936, 4096)]
MS = [1, 8, 32, 128, 512, 2048, 8192]


def events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def time_single(fn, reps: int = 20) -> float:
    samples = []
    for _ in range(reps):
        s, e = events()
        s.record()
        fn(0)
        e.record()
        torch.cuda.synchronize()
        samples.append(s.elapsed_time(e))
    return statistics.median(samples)


def time_loop(fn, calls: int) -> float:
    fn(0)
    torch.cuda.synchronize()
    s, e = events()
    s.record()
    for i in range(calls):
        fn(i)
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / calls


def time_graph(fn, calls: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        s, e = events()
        s.record()
        graph.replay()
        e.record()
        torch.cuda.synchronize()
        samples.append(s.elapsed_time(e) / calls)
    return statistics.median(samples)


def gemm_rows() -> list[dict[str, object]]:
    rows = []
    for n, k in SHAPES:
        size = n * k * 2
        copies = max(1, math.ceil(256e6 / size))
        weights = [torch.randn(n, k, device=DEV, dtype=BF16) for _ in range(copies)]
        for m in MS:
            x = torch.randn(m, k, device=DEV, dtype=BF16)

            def fn(i: int, x=x, weights=weights) -> torch.Tensor:
                return F.linear(x, weights[i % len(weights)])

            calls = max(copies, 20)
            rows.append(
                {
                    "kind": "gemm",
                    "m": m,
                    "n": n,
                    "k": k,
                    "single_ms": time_single(fn),
                    "loop_ms": time_loop(fn, calls),
                    "graph_ms": time_graph(fn, calls),
                }
            )
        del weights
        torch.cuda.empty_cache()
    for seq in (256, 1024, 4096, 16384):
        q = torch.randn(1, 32, seq, 128, device=DEV, dtype=BF16)
        kv = [torch.randn(1, 8, seq, 128, device=DEV, dtype=BF16) for _ in range(2)]

        def attn(i: int, q=q, kv=kv) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, kv[0], kv[1], is_causal=True, enable_gqa=True)

        rows.append(
            {
                "kind": "prefill_attention",
                "m": seq,
                "n": 32,
                "k": 8,
                "single_ms": time_single(attn),
                "loop_ms": time_loop(attn, 20),
                "graph_ms": float("nan"),
            }
        )
    return rows


def skeleton_rows() -> list[dict[str, object]]:
    layers, h, inter, vocab = 36, 4096, 12288, 151936
    shapes = [(6144, h), (h, 4096), (2 * inter, h), (h, inter)]
    weights = [[torch.randn(n, k, device=DEV, dtype=BF16) for n, k in shapes] for _ in range(layers)]
    head = torch.randn(vocab, h, device=DEV, dtype=BF16)
    rows = []

    def decode(x: torch.Tensor) -> torch.Tensor:
        for qkv, o, gate_up, down in weights:
            F.linear(x, qkv)
            y = F.linear(x, o)
            F.linear(y, gate_up)
            x = F.linear(torch.empty(x.shape[0], inter, device=DEV, dtype=BF16), down)
        return F.linear(x, head)

    for batch in (1, 8, 32, 64, 128, 256):
        x = torch.randn(batch, h, device=DEV, dtype=BF16)
        rows.append(
            {"kind": "decode_gemms", "tokens": batch, "graph_ms": time_graph(lambda i, x=x: decode(x), 1)}
        )

    def prefill(x: torch.Tensor, seq: int) -> torch.Tensor:
        for qkv, o, gate_up, down in weights:
            a = F.linear(x, qkv)
            q = a[:, :4096].view(seq, 32, 128).transpose(0, 1).unsqueeze(0)
            k = a[:, 4096:5120].view(seq, 8, 128).transpose(0, 1).unsqueeze(0)
            v = a[:, 5120:].view(seq, 8, 128).transpose(0, 1).unsqueeze(0)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            y = F.linear(att.squeeze(0).transpose(0, 1).reshape(seq, 4096), o)
            g = F.linear(y, gate_up)
            x = F.linear(g[:, :inter], down)
        return F.linear(x[-1:], head)

    for seq in (2048, 4096, 8192, 16384):
        x = torch.randn(seq, h, device=DEV, dtype=BF16)
        rows.append(
            {
                "kind": "prefill_gemms_sdpa",
                "tokens": seq,
                "loop_ms": time_loop(lambda i, x=x, s=seq: prefill(x, s), 3),
            }
        )
    return rows


def decode_rows() -> list[dict[str, object]]:
    """Fused decode attention (torch SDPA, one query token, contiguous GQA cache) from CUDA graphs."""
    rows = []
    shapes = [(1, 1024), (1, 4096), (16, 4096), (64, 2048), (128, 1024), (32, 16384), (8, 8192), (256, 2048)]
    for batch, length in shapes:
        size = 2 * batch * 8 * length * 128 * 2
        copies = max(1, math.ceil(256e6 / size))
        q = torch.randn(batch, 32, 1, 128, device=DEV, dtype=BF16)
        caches = [
            tuple(torch.randn(batch, 8, length, 128, device=DEV, dtype=BF16) for _ in range(2))
            for _ in range(copies)
        ]

        def attn(i: int, q=q, caches=caches) -> torch.Tensor:
            k, v = caches[i % len(caches)]
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

        calls = max(copies, 10)
        rows.append(
            {
                "kind": "decode_sdpa",
                "batch": batch,
                "kv_len": length,
                "single_ms": time_single(attn),
                "graph_ms": time_graph(attn, calls),
                "kv_bytes": size,
            }
        )
        del caches
        torch.cuda.empty_cache()
    return rows


def write(name: str, rows: list[dict[str, object]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(os.path.join(OUT, name), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name(), file=sys.stderr)
    torch.backends.cuda.matmul.allow_tf32 = False
    parts = sys.argv[1:] or ["gemm", "skeleton", "decode"]
    outputs = {"gemm": ("timing_floor.csv", gemm_rows), "skeleton": ("skeleton.csv", skeleton_rows)}
    outputs["decode"] = ("decode_sdpa.csv", decode_rows)
    for part in parts:
        name, make = outputs[part]
        write(name, make())
        with open(os.path.join(OUT, name)) as handle:
            print(handle.read())
