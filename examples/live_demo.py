"""A live KVCM deployment without a GPU: ``kvsim serve`` plus a small CPU "engine" that shares KV pages.

    python examples/live_demo.py            # starts kvsim serve on free loopback ports, runs, stops it

The engine is a few transformer layers with random weights in torch on the CPU, with a KV cache cut into
pages of ``--page`` tokens. It serves two requests that share a prefix:

1. request A is computed from scratch; its full pages are written to the storage KVCM allocates
   (StartWriteCache, real files under the server's data folder, FinishWriteCache);
2. request B asks KVCM for its prefix (GetCacheLocation), loads the pages A wrote instead of recomputing
   them, computes only its own suffix, and checks that its logits equal a full recomputation.

The script prints what moved, where, and how long it took. ``--address`` uses a running server instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from kvsim.cache import ModelDeployment
from kvsim.connectors import (
    KvcmScheduler,
    LocalServe,
    ManagerConnection,
    TransferClient,
    make_registration,
    spec_uris,
)


class TinyModel:
    """A decoder-only transformer with random weights; ``forward`` takes and returns the KV cache.

    The KV of a request is one tensor ``[layers, 2, tokens, heads, head_dim]``; a page is a slice of
    ``page`` tokens of it, made contiguous.
    """

    def __init__(self, layers: int, d_model: int, heads: int, vocab: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.layers, self.d_model, self.heads = layers, d_model, heads
        self.head_dim = d_model // heads

        def weight(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen) / math.sqrt(shape[0])

        self.embed = torch.randn(vocab, d_model, generator=gen)
        self.wqkv = [weight(d_model, 3 * d_model) for _ in range(layers)]
        self.wo = [weight(d_model, d_model) for _ in range(layers)]
        self.w1 = [weight(d_model, 4 * d_model) for _ in range(layers)]
        self.w2 = [weight(4 * d_model, d_model) for _ in range(layers)]
        self.unembed = weight(d_model, vocab)

    def forward(self, tokens: list[int], past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last token, and the KV of past + tokens ``[layers, 2, n, heads, head_dim]``."""
        start = 0 if past is None else past.shape[2]
        x = self.embed[torch.tensor(tokens)]
        n, h, d = len(tokens), self.heads, self.head_dim
        kv_out = []
        for layer in range(self.layers):
            q, k, v = (x @ self.wqkv[layer]).split(self.d_model, dim=-1)
            q, k, v = (t.reshape(n, h, d) for t in (q, k, v))
            if past is not None:
                k = torch.cat([past[layer, 0], k])
                v = torch.cat([past[layer, 1], v])
            kv_out.append(torch.stack([k, v]))
            # Causal attention of the new tokens over every earlier token.
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
            mask = torch.arange(start + n)[None, :] > torch.arange(start, start + n)[:, None]
            attn = scores.masked_fill(mask, float("-inf")).softmax(-1)
            x = x + torch.einsum("hqk,khd->qhd", attn, v).reshape(n, self.d_model) @ self.wo[layer]
            x = x + torch.relu(x @ self.w1[layer]) @ self.w2[layer]
        return x[-1] @ self.unembed, torch.stack(kv_out)


def kib(n: int) -> str:
    """Bytes as KiB or MiB."""
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def run(address: str, data_root: Path | None, args: argparse.Namespace) -> int:
    """Serve the two requests through the KVCM server at ``address``."""
    model = TinyModel(args.layers, args.d_model, args.heads, vocab=1000, seed=0)
    page = args.page
    page_bytes = args.layers * 2 * page * args.d_model * 4  # float32 K and V of every layer
    registration = make_registration(
        "demo-engine",
        page,
        [("tp0", page_bytes)],
        model=ModelDeployment(model_name="tiny-demo", dtype="float32", tp_size=1),
    )
    conn = ManagerConnection([address], registration)
    sched = KvcmScheduler(conn, write_timeout_s=30)
    transfer = TransferClient(conn.register())
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 1000, (args.prompt_tokens,), generator=gen).tolist()
    requests = {
        "A": prefix + torch.randint(0, 1000, (page // 2,), generator=gen).tolist(),
        "B": prefix + torch.randint(0, 1000, (args.suffix_tokens,), generator=gen).tolist(),
    }
    print(
        f"engine: {args.layers} layers, d_model {args.d_model}, "
        f"pages of {page} tokens = {kib(page_bytes)} each"
    )
    worst = 0.0
    for name, tokens in requests.items():
        # 1. Ask KVCM for the prefix (leave at least one token to compute: it yields the logits).
        lookup = (len(tokens) - 1) // page * page
        t0 = time.perf_counter()
        hit = sched.match(token_ids=tokens[:lookup])
        t_match = time.perf_counter() - t0
        n = hit.num_blocks
        past = None
        t_load = 0.0
        if n:
            buffers = [torch.empty(page_bytes, dtype=torch.uint8) for _ in range(n)]
            result = transfer.load(spec_uris(hit.locations, "tp0"), buffers)
            t_load = result.seconds
            n = result.num_ok if result.all_ok else result.ok.index(False)  # use the loaded prefix only
            shape = (args.layers, 2, page, args.heads, args.d_model // args.heads)
            pages = [b.view(torch.float32).reshape(shape) for b in buffers[:n]]
            past = torch.cat(pages, dim=2) if pages else None
        # 2. Compute what was not loaded.
        t0 = time.perf_counter()
        logits, kv = model.forward(tokens[n * page :], past)
        t_compute = time.perf_counter() - t0
        print(
            f"request {name}: {len(tokens)} tokens; KVCM had {n} pages ({n * page} tokens, "
            f"{kib(n * page_bytes)}): match {t_match * 1e3:.1f} ms, load {t_load * 1e3:.1f} ms; "
            f"computed {len(tokens) - n * page} tokens in {t_compute * 1e3:.1f} ms"
        )
        if n:
            t0 = time.perf_counter()
            full_logits, _ = model.forward(tokens, None)
            t_full = time.perf_counter() - t0
            diff = float((full_logits - logits).abs().max())
            worst = max(worst, diff)
            print(
                f"  a full prefill of the same {len(tokens)} tokens takes {t_full * 1e3:.1f} ms; "
                f"max |logits - recomputed| = {diff:.2e}"
            )
        # 3. Write the full pages KVCM does not have yet (two-phase write).
        full = len(tokens) // page
        t0 = time.perf_counter()
        plan = sched.start_write(token_ids=tokens[: full * page])
        buffers = [
            kv[:, :, i * page : (i + 1) * page].contiguous().view(-1).view(torch.uint8) for i in plan.indices
        ]
        saved = transfer.save(plan.uris("tp0"), buffers)
        outcome = sched.finish_write(plan, saved.ok)
        t_write = time.perf_counter() - t0
        files = Counter(uri.split("?")[0] for uri in plan.uris("tp0"))
        print(
            f"  wrote {len(plan.indices)} new pages ({kib(saved.nbytes)}; {sum(plan.cached)} already stored) "
            f"in {t_write * 1e3:.1f} ms (transfer {saved.seconds * 1e3:.1f} ms): "
            f"{outcome.num_serving} serving, {outcome.num_failed} failed"
        )
        for uri, count in sorted(files.items()):
            print(f"    {count:3d} page(s) -> {uri}")
    transfer.close()
    conn.close()
    if data_root is not None:
        on_disk = sum(p.stat().st_size for p in data_root.rglob("*") if p.is_file())
        print(f"storage: {kib(on_disk)} in files under {data_root}")
    if worst > 1e-3:
        print(f"FAILED: logits with loaded KV differ from a recomputation by {worst:.2e}", file=sys.stderr)
        return 1
    print("ok: request B reused request A's KV pages through KVCM and got the same logits")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, start ``kvsim serve`` unless ``--address`` is given, run the demo."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--address", help="meta address of a running server (default: start one)")
    parser.add_argument(
        "--data-dir", type=Path, help="the started server's data folder (default: a temp dir)"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--page", type=int, default=16, help="tokens per page (the KVCM block size)")
    parser.add_argument("--prompt-tokens", type=int, default=1024, help="tokens of the shared prefix")
    parser.add_argument("--suffix-tokens", type=int, default=40, help="tokens of request B after the prefix")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.address:
        return run(args.address, None, args)
    with tempfile.TemporaryDirectory(prefix="kvsim-demo-") as tmp:
        data = args.data_dir or Path(tmp)
        with LocalServe(data) as server:
            print(
                f"kvsim serve (meta store: memory) on {server.http_address}, "
                f"storage under {server.storage_root}"
            )
            code = run(server.http_address, server.storage_root, args)
        print("kvsim serve stopped")
        return code


if __name__ == "__main__":
    sys.exit(main())
