"""Every notebook runs top to bottom in a Jupyter kernel (nbclient), from a copy of the notebooks folder.

A notebook that reads data from ``../shared`` says so in its metadata (``"kvsim": {"needs_shared":
["data/traces/..."]}``) and is skipped, with the reason, where that data is absent; one that needs an
experiment-file section not every checkout has yet says so too (``"needs_sections": ["cluster"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvsim.engines.experiment import SECTIONS
from tests.conftest import shared_path

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
# The older notebooks predate cell ids (nbformat 4.5); nbclient runs them all the same.
@pytest.mark.filterwarnings("ignore:Cell is missing an id field")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="needs nbclient (pip install '.[dev]')")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install '.[dev]')")
    notebook = nbformat.read(path, as_version=4)
    assert [c for c in notebook.cells if c.cell_type == "code"], f"{path.name} has no code"
    needs = notebook.metadata.get("kvsim", {})
    for needed in needs.get("needs_shared", []):
        shared_path(*Path(needed).parts)
    missing = [s for s in needs.get("needs_sections", []) if s not in SECTIONS]
    if missing:
        pytest.skip(f"needs experiment-file sections {', '.join(missing)}")
    # Run in a copy of the notebooks folder layout so relative paths (../experiments) resolve and
    # outputs land in tmp.
    workdir = tmp_path / "notebooks"
    workdir.mkdir()
    (tmp_path / "experiments").symlink_to(path.parents[1] / "experiments")
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    assert os.listdir(workdir)  # the notebook wrote its figure
