"""Run ``kvsim calibrate`` from a source checkout without installing kvsim (what run_gpu.sh calls).

    python3 calibration/run_gpu.py --out results/ --budget-s 420

Puts the repository root on ``sys.path`` and calls the calibrate subcommand's own entry point, which
imports no other subcommand (so simpy, grpc and friends need not be installed on the GPU machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsim.cli.calibrate import main  # needs the path set above

if __name__ == "__main__":
    sys.exit(main())
