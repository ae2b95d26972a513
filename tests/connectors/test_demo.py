"""The live demo runs from one command: it starts ``kvsim serve``, serves two requests sharing a prefix,
and the second one reuses the first one's KV pages with the same logits as a recomputation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "live_demo.py"


def test_the_demo_reuses_kv_pages_through_kvcm(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            "--layers",
            "2",
            "--d-model",
            "64",
            "--prompt-tokens",
            "128",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("kvsim serve (meta store: memory) on http://127.0.0.1:")
    assert any(re.match(r"request A: 136 tokens; KVCM had 0 pages", line) for line in lines)
    assert any(
        re.match(r"request B: 168 tokens; KVCM had 8 pages \(128 tokens, 128 KiB\)", line) for line in lines
    )
    assert any("wrote 8 new pages (128 KiB; 0 already stored)" in line for line in lines)
    assert any("wrote 2 new pages (32 KiB; 8 already stored)" in line for line in lines)
    assert lines[-2] == "ok: request B reused request A's KV pages through KVCM and got the same logits"
    assert lines[-1] == "kvsim serve stopped"
    assert len(list((tmp_path / "nfs" / "demo-engine" / "tp0").iterdir())) == 2  # 8 pages, then 2
