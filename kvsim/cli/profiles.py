"""``kvsim profiles``: list the GPU profiles, sources per op family, calibration and validation error."""

from __future__ import annotations

import argparse
import json

from kvsim.hardware import OP_FAMILIES, GpuProfile, all_profiles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")


def validation_errors(profile: GpuProfile) -> dict[str, float | None]:
    """Median held-out error of each op family from the source that serves it (None: not measured)."""
    errors: dict[str, float | None] = {}
    for family in OP_FAMILIES:
        source = profile.sources[family]
        errors[family] = None if source == "roofline" else profile.validation_error(family, source)
    return errors


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
        "tables": {family: table.path for family, table in profile.tables.items()},
        "validation_median_rel_err": validation_errors(profile),
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

    table = Table(title="GPU profiles (validation: median leave-one-out error of the serving source)")
    for column in ("name", "memory", "HBM", "bf16", "sources (validation)", "calibrated by"):
        table.add_column(column)
    for row in rows:
        errors = row["validation_median_rel_err"]
        parts = []
        for family, source in row["sources"].items():  # type: ignore[union-attr]
            error = errors[family]  # type: ignore[index]
            parts.append(f"{family}={source}" + (f" ({error:.1%})" if error is not None else ""))
        table.add_row(
            str(row["name"]),
            f"{row['memory_gib']} GiB",
            f"{row['memory_bandwidth_tb_s']} TB/s",
            f"{row['compute_tflops'].get('bf16', '-')} TFLOPS",  # type: ignore[union-attr]
            "\n".join(parts),
            str(row["calibrated_by"] or "uncalibrated"),
        )
    Console(width=160).print(table)
    return 0
