"""``kvsim step-time``: predict one forward step of a batch, with a per-op breakdown."""

from __future__ import annotations

import argparse
import json

from kvsim.models.spec import DTYPE_CHOICES, KV_CACHE_DTYPE_CHOICES, QUANTIZATION_CHOICES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model, GPU, TP and precision flags shared with ``kvsim sim`` (SGLang's names)."""
    parser.add_argument("--model", default="Qwen3-8B", help="bundled model name or a config.json path")
    parser.add_argument("--gpu", default="H20", help="GPU profile name or alias (see `kvsim profiles`)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="activation dtype")
    parser.add_argument(
        "--quantization", default=None, choices=QUANTIZATION_CHOICES, help="weight quantization"
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPE_CHOICES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    add_model_arguments(parser)
    parser.add_argument(
        "--batch",
        required=True,
        metavar="SPEC",
        help="comma-separated [COUNTx]EXTEND:PAST items, e.g. 32x1:2048 or 1x8192:0",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    output.add_argument("--explain", action="store_true", help="print a per-op table")


def run(args: argparse.Namespace) -> int:
    """Predict and print."""
    from kvsim.perf import Deployment, StepTimePredictor, parse_batch_spec

    batch = parse_batch_spec(args.batch)
    deployment = Deployment.create(
        args.model, args.gpu, args.tp, args.dtype, args.quantization, args.kv_cache_dtype
    )
    result = StepTimePredictor(deployment).predict(batch)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.explain:
        _print_table(deployment, batch, result)
    else:
        print(f"{result.step_time_ms:.3f} ms")
    return 0


def _print_table(deployment, batch, result) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    tokens = sum(extend for extend, _ in batch)
    title = (
        f"{deployment.model.name} on {deployment.gpu.name} (tp={deployment.tp}, "
        f"weights {deployment.precision.weight_dtype}, kv {deployment.precision.kv_cache_dtype}): "
        f"{len(batch)} requests, {tokens} new tokens"
    )
    table = Table(title=title)
    table.add_column("op")
    table.add_column("ms", justify="right")
    table.add_column("share", justify="right")
    table.add_column("source")
    for op, ms in result.ops.items():
        share = ms / result.step_time_ms if result.step_time_ms else 0.0
        table.add_row(op, f"{ms:.4f}", f"{share:6.1%}", result.sources[op])
    table.add_row("total", f"{result.step_time_ms:.4f}", "100.0%", "", style="bold")
    Console(width=100).print(table)
