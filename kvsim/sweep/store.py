"""The run directory of a sweep, and how it resumes.

Layout::

    DIR/runs/<run_id>.json   one record per finished run (written whole or not at all)
    DIR/sweep.parquet        the table: one row per run, every input and output (no wall-clock times)
    DIR/configs.csv          one row per configuration: goodput, cost, Pareto front, recommendation
    DIR/timings.csv          wall-clock seconds per run (kept out of the table so that it compares)
    DIR/summary.txt          what `kvsim sweep` printed
    DIR/sweep.resolved.yaml  the sweep as run
    DIR/*.png                plots

A run's id is a hash of everything that determines its result (its complete experiment config, the
simulator and kvsim's version), so a record on disk is reused by any sweep that needs that run: an
interrupted sweep resumes where it stopped, and a grid that grows reuses the runs it already has.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvsim import __version__

RUNS_DIR = "runs"


def run_id(config: Mapping[str, Any], simulator: str) -> str:
    """The id of the run of ``config`` by ``simulator``: 16 hex digits of a SHA-256 over canonical JSON."""
    payload = {"config": config, "simulator": simulator, "kvsim": __version__}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunStore:
    """Finished run records under ``DIR/runs/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / RUNS_DIR
        self.runs.mkdir(parents=True, exist_ok=True)

    def path(self, run_id: str) -> Path:
        """Where the record of ``run_id`` lives."""
        return self.runs / f"{run_id}.json"

    def load(self, run_id: str) -> dict[str, Any] | None:
        """The stored record of ``run_id``, or None (a file that does not parse counts as absent)."""
        path = self.path(run_id)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("run_id") == run_id else None

    def save(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``record``; returns it as read back from JSON, so fresh and resumed runs are identical."""
        text = json.dumps(record, sort_keys=True, indent=1) + "\n"
        write_atomic(self.path(str(record["run_id"])), text)
        return json.loads(text)  # type: ignore[no-any-return]
