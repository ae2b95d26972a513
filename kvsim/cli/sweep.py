"""``kvsim sweep``: run a capacity-planning sweep from a sweep file and print a recommendation.

A sweep file is an experiment file plus ``sweep:`` (grid, variants, sample, goodput search), ``slo:`` and
``cost:`` sections (docs/sweep.md). The run directory resumes: run the same command again after an
interruption and only the missing runs are simulated.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

_SET = re.compile(r"^([A-Za-z0-9_.\-]+)=(.*)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    parser.add_argument("sweep_file", metavar="EXPERIMENT.yaml", help="sweep file (docs/sweep.md)")
    parser.add_argument(
        "--output-dir", help="run directory; it resumes (default runs/sweep-<name>, the file's sweep.name)"
    )
    parser.add_argument(
        "--executor", default="local", choices=("local", "ray"), help="local (process pool, default) or ray"
    )
    parser.add_argument(
        "--address", help="with --executor ray: a running Ray cluster, auto or HOST:PORT (default: start one)"
    )
    parser.add_argument("--jobs", type=int, help="workers (default: one per CPU; 1 runs in this process)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a setting of the file before it runs, e.g. --set workload.num_prompts=200 "
        "--set sweep.goodput.max_steps=4 (VALUE is YAML; repeatable)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="simulate again the runs the directory records as failed"
    )
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values read as YAML)."""
    import yaml

    from kvsim.core.errors import UserInputError

    settings: dict[str, Any] = {}
    for item in items:
        match = _SET.match(item)
        if not match:
            raise UserInputError(f"--set: expected PATH=VALUE such as workload.num_prompts=200, got {item!r}")
        try:
            settings[match.group(1)] = yaml.safe_load(match.group(2))
        except yaml.YAMLError:
            raise UserInputError(f"--set {item}: the value is not valid YAML") from None
    return settings


def run(args: argparse.Namespace) -> int:
    """Load the sweep, run or resume it, print the configurations and the recommendation.

    Returns 0 with a recommendation, 1 when no configuration qualifies (the message says why; the
    table and plots are written all the same).
    """
    import sys

    from kvsim.sweep import load_sweep, run_sweep

    spec = load_sweep(args.sweep_file, parse_settings(args.settings))
    if args.list:
        configurations = spec.configurations()
        for configuration in configurations:
            print(f"{configuration.config_id:>4}  {configuration.describe()}")
        print(f"{len(configurations)} configurations")
        return 0
    output_dir = Path(args.output_dir or f"runs/sweep-{spec.name}")
    result = run_sweep(
        spec,
        output_dir,
        executor=args.executor,
        jobs=args.jobs,
        address=args.address,
        progress=True,
        retry_failed=args.retry_failed,
        plots=not args.no_plots,
    )
    summary = (output_dir / "summary.txt").read_text(encoding="utf-8").rstrip("\n")
    print(summary)
    print(f"table: {output_dir / 'sweep.parquet'}")
    if result.plots:
        print("plots: " + ", ".join(str(p) for p in result.plots))
    if not result.recommendation.feasible:
        print("kvsim sweep: no configuration to recommend (see above)", file=sys.stderr)
        return 1
    return 0
