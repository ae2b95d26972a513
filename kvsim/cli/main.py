"""Entry point of the ``kvsim`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``; modules
are imported only when their subcommand runs, so ``kvsim step-time`` never pays for simpy or grpc.
Errors caused by the user's input print as one line on stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from kvsim import __version__
from kvsim.core.errors import UserInputError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("kvsim.cli.sim", "simulate an SGLang server replaying a workload (bench_serving report)"),
    "step-time": ("kvsim.cli.step_time", "predict the time of one forward step of a batch"),
    "profiles": ("kvsim.cli.profiles", "list the GPU profiles and what calibrated them"),
    "optimize": ("kvsim.cli.optimize", "trace-replay KV-cache hit rates and capacity planning"),
    "calibrate": ("kvsim.cli.calibrate", "measure a GPU into calibration tables and install it as a profile"),
    "serve": ("kvsim.cli.serve", "run the KVCM-compatible cache service (gRPC + HTTP)"),
    "compare": ("kvsim.cli.compare", "compare a simulated run with a real sglang.bench_serving result"),
    "sweep": ("kvsim.cli.sweep", "capacity-planning sweeps: grids, SLO goodput, cost Pareto fronts"),
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``kvsim <cmd>: error: message`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """Build the top-level parser; returns it and the imported subcommand modules by name."""
    parser = OneLineParser(prog="kvsim", description="Simulate LLM inference with a global KV cache.")
    parser.add_argument("--version", action="version", version=f"kvsim {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in _available().items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)  # type: ignore[attr-defined]
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvsim`` command; returns the process exit code."""
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args))  # type: ignore[attr-defined]
    except UserInputError as exc:
        print(f"kvsim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kvsim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `kvsim ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
