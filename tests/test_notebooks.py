"""Every notebook's code cells run top to bottom (without Jupyter) from the notebooks folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    # Run in a copy of the notebooks folder layout so relative paths (../experiments) resolve and
    # outputs land in tmp.
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    (tmp_path / "experiments").symlink_to(path.parents[1] / "experiments")
    monkeypatch.chdir(workdir)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for source in cells:
        exec(compile(source, f"{path.name}", "exec"), namespace)  # our own notebook
    assert os.listdir(workdir)  # the notebook wrote its figure
