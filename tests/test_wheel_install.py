"""Build the wheel, install it into a fresh virtualenv and run the CLI from another directory.

This proves that everything the installed command needs ships as package data. The fresh environment
borrows the already-installed third-party dependencies (so the test needs no network) but gets kvsim
only from the wheel.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_elsewhere(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("kvsim-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Borrow third-party packages from this interpreter; a plain path in a .pth file does not run the
    # editable-install hook, so `kvsim` can only come from the wheel.
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(target) / "borrowed.pth").write_text("\n".join(deps) + "\n")
    # The fresh interpreter runs pip (borrowed), so the `kvsim` script points at it.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheels[0])],
        check=True,
        capture_output=True,
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import kvsim; print(kvsim.__file__)"],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert where.startswith(target)
    out = subprocess.run(
        [
            str(env_dir / "bin" / "kvsim"),
            "step-time",
            "--model",
            "Qwen3-8B",
            "--gpu",
            "H20",
            "--batch",
            "32x1:2048",
            "--json",
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert json.loads(out)["profile"] == "H20"
