"""Compare kvsim's step-time predictions with the end-to-end steps a calibration measured.

    python calibration/check_e2e.py CALIBRATION_DIR [--gpu PROFILE] [--json]

CALIBRATION_DIR is the ``--out`` folder of ``kvsim calibrate`` (or an installed profile's folder, which
holds the same ``e2e.csv``). ``--gpu`` names the profile to predict with: a profile name, or a folder
holding ``profile.yaml``; by default the calibration folder itself when it holds one. Prints, per
``e2e.csv`` row, the measured and predicted milliseconds and the relative error, then the median
absolute error per phase: the number the validation report quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from kvsim.calibrate.shapes import QUICK_MODEL
from kvsim.calibrate.tables import read_table
from kvsim.core.errors import UserInputError
from kvsim.models.spec import load_model_spec
from kvsim.perf import Deployment, StepTimePredictor


def compare(folder: Path, gpu: str) -> list[dict[str, object]]:
    """One dict per e2e row: the row, ``predicted_ms`` and ``rel_err`` (predicted / measured - 1)."""
    rows = read_table(folder / "e2e.csv", "e2e")
    out = []
    deployments: dict[str, Deployment] = {}
    for row in rows:
        name = str(row["model"])
        if name not in deployments:
            spec = QUICK_MODEL if name == QUICK_MODEL.name else load_model_spec(name)
            # The e2e model's prefill runs unpinned SDPA (cuDNN, FA3-class) and its decode the Triton paged
            # kernel; the default backend serves exactly that (FA3-corrected prefill, the only measured decode
            # table). docs/validation/step_time.md prices the reference model's extra kernels separately.
            deployments[name] = Deployment.create(spec, gpu, allow_roofline=True)
        batch = [(int(row["extend_len"]), int(row["past_len"]))] * int(row["batch"])
        predicted = StepTimePredictor(deployments[name]).predict(batch).step_time_ms
        measured = float(row["latency_ms"])
        out.append({**row, "predicted_ms": predicted, "rel_err": predicted / measured - 1.0})
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the comparison; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--gpu", help="profile name or folder (default: the calibration folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    gpu = args.gpu or str(args.folder)
    try:
        if not (args.folder / "e2e.csv").is_file():
            raise UserInputError(f"{args.folder}: no e2e.csv")
        rows = compare(args.folder, gpu)
    except UserInputError as exc:
        print(f"check_e2e: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("model", "phase", "batch", "extend", "past", "measured", "predicted", "err")
    print("{:<12} {:<8} {:>5} {:>6} {:>6} {:>10} {:>10} {:>7}".format(*header))
    for r in rows:
        print(
            f"{r['model']!s:<12} {r['phase']!s:<8} {r['batch']:>5} {r['extend_len']:>6} {r['past_len']:>6} "
            f"{r['latency_ms']:>10.3f} {r['predicted_ms']:>10.3f} {r['rel_err']:>+7.1%}"
        )
    for phase in sorted({str(r["phase"]) for r in rows}):
        errs = [abs(float(r["rel_err"])) for r in rows if r["phase"] == phase]  # type: ignore[arg-type]
        print(f"median |error| {phase}: {statistics.median(errs):.1%} over {len(errs)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
