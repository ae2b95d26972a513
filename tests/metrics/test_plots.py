"""Tests that the standard plots are written (existence and PNG format; looks are checked by eye)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsim.metrics import IterationLogWriter, RequestRecord, write_requests
from kvsim.metrics.plots import RunData, plot_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_pngs(paths: dict[str, Path]) -> None:
    assert set(paths) == {"latency_cdf", "throughput", "queues"}
    assert {p.name for p in paths.values()} == {"latency_cdf.png", "throughput.png", "queues.png"}
    for path in paths.values():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 5000


def test_plot_run_from_a_run_directory(tmp_path: Path, three_requests: list[RequestRecord]) -> None:
    write_requests(tmp_path, three_requests, include_token_times=True)
    with IterationLogWriter(tmp_path) as log:
        for i in range(50):
            log.log(i * 0.02, "decode", [(1, 100)], 20.0, num_running=i % 4, num_waiting=(i // 10) % 3)
    assert_pngs(plot_run(tmp_path))


def test_plot_run_from_memory_without_iterations(tmp_path: Path, three_requests: list[RequestRecord]) -> None:
    out = tmp_path / "plots"
    assert_pngs(plot_run(RunData(records=three_requests), out, throughput_bin_s=0.25))


def test_plot_run_with_no_requests(tmp_path: Path) -> None:
    assert_pngs(plot_run(RunData(records=[]), tmp_path))


def test_in_memory_data_needs_an_output_directory(three_requests: list[RequestRecord]) -> None:
    with pytest.raises(ValueError, match="out_dir"):
        plot_run(RunData(records=three_requests))
