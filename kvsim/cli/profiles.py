"""``kvsim profiles``: list the GPU profiles, their memory, sources per op family and calibration."""

from __future__ import annotations

import argparse
import json

from kvsim.hardware import GpuProfile, all_profiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")


def describe(profile: GpuProfile) -> dict[str, object]:
    """The JSON description of one profile."""
    return {
        "name": profile.name,
        "aliases": list(profile.aliases),
        "memory_gib": round(profile.memory_gib, 2),
        "memory_bandwidth_tb_s": round(profile.memory_bandwidth / 1e12, 3),
        "compute_tflops": {k: round(v / 1e12, 1) for k, v in profile.compute_flops.items()},
        "sms": profile.sms,
        "sources": dict(profile.sources),
        "calibrated": profile.calibrated,
        "calibrated_by": profile.calibrated_by,
    }


def run(args: argparse.Namespace) -> int:
    """Print every bundled profile."""
    rows = [describe(p) for p in all_profiles()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GPU profiles")
    for column in ("name", "aliases", "memory", "HBM", "bf16", "sources", "calibrated by"):
        table.add_column(column)
    for row in rows:
        sources = ", ".join(f"{family}={source}" for family, source in row["sources"].items())  # type: ignore[union-attr]
        table.add_row(
            str(row["name"]),
            ", ".join(row["aliases"]),  # type: ignore[arg-type]
            f"{row['memory_gib']} GiB",
            f"{row['memory_bandwidth_tb_s']} TB/s",
            f"{row['compute_tflops'].get('bf16', '-')} TFLOPS",  # type: ignore[union-attr]
            sources,
            str(row["calibrated_by"] or "uncalibrated"),
        )
    Console(width=160).print(table)
    return 0
