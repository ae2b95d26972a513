"""``kvsim step-time``: predict one forward step of a batch, with a per-op breakdown and an error range.

``--json`` prints ``step_time_ms``, ``step_time_ms_range`` (each op spread by its family's median
leave-one-out error), per-op ``ops`` in ms and their ``sources`` (table, fitted or roofline).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from kvsim.hardware.profile import ATTENTION_BACKENDS
from kvsim.models.spec import DTYPE_CHOICES, KV_CACHE_DTYPE_CHOICES, QUANTIZATION_CHOICES

if TYPE_CHECKING:
    from kvsim.perf import Deployment, StepTime


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model, GPU, TP and precision flags shared with ``kvsim sim`` (SGLang's names)."""
    parser.add_argument("--model", default="Qwen3-8B", help="bundled model name or a config.json path")
    parser.add_argument(
        "--gpu", default="H20", help="GPU profile name or alias (see `kvsim profiles`), or a profile folder"
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="activation dtype")
    parser.add_argument(
        "--quantization", default=None, choices=QUANTIZATION_CHOICES, help="weight quantization"
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPE_CHOICES)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the predictor's runtime flags (attention backend, decode CUDA graphs, roofline fallback)."""
    parser.add_argument(
        "--attention-backend", default="fa3", choices=ATTENTION_BACKENDS, help="SGLang attention backend"
    )
    parser.add_argument(
        "--cuda-graph-max-bs",
        type=int,
        default=None,
        help="largest decode batch with a CUDA graph (default: SGLang's for the GPU's memory and TP)",
    )
    parser.add_argument("--disable-cuda-graph", action="store_true", help="run every decode step eagerly")
    parser.add_argument(
        "--allow-roofline",
        action="store_true",
        help="serve op families whose declared table or fitted parameters are missing from the roofline",
    )


def deployment_from_args(args: argparse.Namespace) -> Deployment:
    """The :class:`~kvsim.perf.Deployment` the model (and, where present, runtime) flags describe."""
    from kvsim.perf import Deployment

    return Deployment.create(
        args.model,
        args.gpu,
        args.tp,
        args.dtype,
        args.quantization,
        args.kv_cache_dtype,
        attention_backend=getattr(args, "attention_backend", None) or "fa3",
        cuda_graph_max_bs=getattr(args, "cuda_graph_max_bs", None),
        disable_cuda_graph=bool(getattr(args, "disable_cuda_graph", False)),
        allow_roofline=bool(getattr(args, "allow_roofline", False)),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    add_model_arguments(parser)
    add_runtime_arguments(parser)
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
    from kvsim.perf import StepTimePredictor, parse_batch_spec

    batch = parse_batch_spec(args.batch)
    deployment = deployment_from_args(args)
    for family, reason in deployment.gpu.downgraded.items():
        print(f"kvsim step-time: warning: {family} served from the roofline: {reason}", file=sys.stderr)
    result = StepTimePredictor(deployment).predict(batch)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.explain:
        _print_table(deployment, batch, result)
    else:
        lo, hi = result.step_time_ms_range
        print(f"{result.step_time_ms:.3f} ms (range {lo:.3f}-{hi:.3f} ms)")
    return 0


def _print_table(deployment: Deployment, batch: list[tuple[int, int]], result: StepTime) -> None:
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
    lo, hi = result.step_time_ms_range
    table.add_row("range", f"{lo:.4f}-{hi:.4f}", "", "median LOO error per family")
    Console(width=100).print(table)
