"""Fixtures of the sweep tests: sweep files written into a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: A workload small enough that one simulation takes milliseconds.
TINY_BASE = """\
model: Qwen3-0.6B
gpu: H20
workload:
  dataset_name: generated-shared-prefix
  gsp_num_groups: 2
  gsp_prompts_per_group: 4
  gsp_system_prompt_len: 256
  gsp_question_len: 32
  gsp_output_len: 16
  request_rate: 4
  seed: 1
"""


@pytest.fixture
def sweep_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a sweep file (the tiny base experiment, then ``body``) and return its path."""

    def write(body: str, base: str = TINY_BASE) -> Path:
        path = tmp_path / "sweep.yaml"
        path.write_text(base + body, encoding="utf-8")
        return path

    return write
