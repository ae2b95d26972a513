"""HiCache as a user meets it: flags, host-pool sizing, copy costs per profile, run outputs, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvsim.cli.main import build_parser
from kvsim.cli.sim import overrides_from_args
from kvsim.core.errors import UserInputError
from kvsim.engines.experiment import resolve_config, run_experiment, write_run
from kvsim.engines.sglang.config import HiCacheSettings, ServerArgs, resolve_server
from kvsim.engines.sglang.hicache import TransferModel, hisim_copy_seconds, host_copy_function
from kvsim.hardware import load_profile
from kvsim.metrics import read_iterations, read_requests
from kvsim.metrics.records import RequestRecord
from kvsim.perf.predictor import Deployment

# Qwen3-8B: 36 layers, 147,456 KV bytes per token (4,096 per layer).
KV_BYTES = 147_456


@pytest.fixture(scope="module")
def h20() -> Deployment:
    return Deployment.create("Qwen3-8B", "H20")


def resolve(deployment: Deployment, **args: object) -> HiCacheSettings | None:
    server_args = ServerArgs(max_total_tokens=100_000, enable_hierarchical_cache=True, **args)  # type: ignore[arg-type]
    return resolve_server(server_args, deployment).hicache


def test_host_pool_is_sized_as_sglang_sizes_it(h20: Deployment) -> None:
    assert resolve(h20) == HiCacheSettings(200_000, "write_through", "kernel", "layer_first")
    assert resolve(h20, hicache_ratio=3.5) == HiCacheSettings(
        350_000, "write_through", "kernel", "layer_first"
    )
    # --hicache-size (GB of 1e9 bytes) wins over the ratio: 30e9 // 147456 = 203450 slots.
    assert resolve(h20, hicache_size=30, hicache_ratio=9.0).host_tokens == 30_000_000_000 // KV_BYTES  # type: ignore[union-attr]
    # Rounded down to whole pages: 99,968 device slots x 2.0001 = 199,945 -> 199,936.
    assert resolve(h20, hicache_ratio=2.0001, page_size=64).host_tokens == 199_936  # type: ignore[union-attr]
    # HiCache off, or the radix cache off (SGLang then builds a ChunkCache): no host tier.
    assert resolve_server(ServerArgs(max_total_tokens=100_000), h20).hicache is None
    assert resolve(h20, disable_radix_cache=True) is None


def test_sglang_corrects_unsupported_layout_and_backend_pairs(h20: Deployment) -> None:
    assert resolve(h20, hicache_mem_layout="page_first_direct") == HiCacheSettings(
        200_000, "write_through", "direct", "page_first_direct"
    )
    assert resolve(h20, hicache_io_backend="direct", hicache_mem_layout="page_first") == HiCacheSettings(
        200_000, "write_through", "direct", "page_first_direct"
    )
    assert resolve(
        h20, hicache_mem_layout="page_first", hicache_write_policy="write_back"
    ) == HiCacheSettings(200_000, "write_back", "kernel", "page_first")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"hicache_ratio": 1.0}, "--hicache-ratio 1.0 gives a host pool of 100000 tokens, not larger than"),
        ({"hicache_size": 10}, "--hicache-size 10 GB gives a host pool of 67816 tokens"),
        ({"hicache_ratio": 0.0}, "--hicache-ratio: must be > 0, got 0.0"),
        ({"hicache_size": -1}, "--hicache-size: must be >= 0 GB, got -1"),
        ({"hicache_write_policy": "write_around"}, "--hicache-write-policy: 'write_around' is not one of"),
        ({"hicache_io_backend": "nixl"}, "--hicache-io-backend: 'nixl' is not one of kernel, direct"),
        ({"hicache_mem_layout": "page_head"}, "--hicache-mem-layout: 'page_head' is not one of"),
    ],
)
def test_bad_hicache_settings_are_one_line_errors(
    h20: Deployment, args: dict[str, object], message: str
) -> None:
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")):
        resolve(h20, **args)


def test_resolved_config_shows_hicache_only_when_enabled(h20: Deployment) -> None:
    off = resolve_server(ServerArgs(max_total_tokens=100_000), h20).to_dict()
    assert not [key for key in off if "hicache" in key or "hierarchical" in key]
    on = resolve_server(
        ServerArgs(
            max_total_tokens=100_000, enable_hierarchical_cache=True, hicache_mem_layout="page_first_direct"
        ),
        h20,
    ).to_dict()
    assert (on["enable_hierarchical_cache"], on["hicache_host_tokens"], on["hicache_io_backend"]) == (
        True,
        200_000,
        "direct",
    )


def test_cli_flags_carry_sglang_names() -> None:
    argv = ["sim", "--enable-hierarchical-cache", "--hicache-ratio", "3", "--hicache-size", "40",
            "--hicache-write-policy", "write_back", "--hicache-io-backend", "direct",
            "--hicache-mem-layout", "page_first", "--hisim-file-aliases"]  # fmt: skip
    parser = build_parser()[0]
    overrides = overrides_from_args(parser.parse_args(argv))
    assert overrides["server"] == {
        "enable_hierarchical_cache": True,
        "hicache_ratio": 3.0,
        "hicache_size": 40,
        "hicache_write_policy": "write_back",
        "hicache_io_backend": "direct",
        "hicache_mem_layout": "page_first",
    }
    assert overrides["output"] == {"hisim_file_aliases": True}
    assert "server" not in overrides_from_args(parser.parse_args(["sim"]))


def test_profiles_without_a_copy_table_use_hisims_transfer_model() -> None:
    copy, source = host_copy_function(load_profile("H20"))
    assert source == "HiSim t0 + bytes / (0.85 x 64 GB/s)"
    # Per run 6.67 us host-to-device (4 us device-to-host) plus bytes at 0.85 x 64 GB/s.
    assert copy("h2d", 8_388_608, 1) == pytest.approx(6.67e-6 + 8_388_608 / 54.4e9)
    assert copy("d2h", 8_388_608, 3) == pytest.approx(3 * 4e-6 + 8_388_608 / 54.4e9)
    assert hisim_copy_seconds("h2d", 0, 16, 64e9) == pytest.approx(16 * 6.67e-6)


def test_the_reference_worked_example_on_the_h20(h20: Deployment) -> None:
    settings = HiCacheSettings(200_000, "write_through", "kernel", "layer_first")
    transfer = TransferModel.for_deployment(h20, settings, 1)
    assert (transfer.num_layers, transfer.kv_bytes_per_token) == (36, KV_BYTES)
    # 1000 contiguous tokens: 36 x (6.67 us + 4.096 MB / 54.4 GB/s) = 2.95 ms (hisim-reference 5.4).
    assert 36 * transfer.load_layer_s(1000, 1) == pytest.approx(2.95e-3, abs=0.005e-3)
    # The backup of the same tokens copies all layers at once: one run, 4 us.
    assert transfer.backup_s(1000, 1) == pytest.approx(4e-6 + 1000 * KV_BYTES / 54.4e9)


def test_profiles_with_a_copy_table_price_runs_and_page_gathers_from_it() -> None:
    gpu = load_profile("H200")
    copy, source = host_copy_function(gpu)
    assert source == "H200 copy table"
    from kvsim.perf.copies import HostCopyModel

    model = HostCopyModel(gpu)
    for direction, nbytes, chunks in (("h2d", 16_384, 1), ("h2d", 4_194_304, 16), ("d2h", 8_388_608, 1)):
        assert copy(direction, nbytes, chunks) == model.seconds(direction, nbytes, chunks)
    # Fragmentation costs: 4 MiB gathered as 16 pages takes longer than one contiguous 4 MiB copy.
    assert copy("h2d", 4_194_304, 16) > copy("h2d", 4_194_304, 1)


GSP_L2 = {
    "server": {"max_total_tokens": 12_000},
    "workload": {
        "dataset_name": "generated-shared-prefix",
        "gsp_num_groups": 8,
        "gsp_prompts_per_group": 8,
        "gsp_system_prompt_len": 2048,
        "gsp_question_len": 128,
        "gsp_output_len": 64,
        "request_rate": 8,
        "seed": 3,
    },
}


def _config(hicache: bool, **server: object) -> dict[str, object]:
    config = resolve_config(None, GSP_L2)
    config["server"].update(enable_hierarchical_cache=hicache, **server)  # type: ignore[union-attr]
    return config


def test_gsp_with_a_small_device_pool_hits_l2_and_lowers_ttft(tmp_path: Path) -> None:
    # 8 system prompts of 2048 tokens do not fit a 12k-token device pool beside the running requests.
    without = run_experiment(_config(False))
    result, run_dir = write_run(_config(True), tmp_path / "hi", plots=False)
    metrics = result.metrics
    assert metrics["l2_hit_ratio"] > 0.2
    assert metrics["prefix_cache_reused_ratio"] > metrics["l2_hit_ratio"]
    assert metrics["mean_ttft_ms"] < 0.5 * without.metrics["mean_ttft_ms"]
    assert metrics["hicache_host_tokens"] == 24_000
    assert metrics["l2_copy_source"] == "HiSim t0 + bytes / (0.85 x 64 GB/s)"
    records = read_requests(run_dir)
    host = sum(r.cached_tokens_host or 0 for r in records)
    # Loads for re-admitted (retracted) requests add to the traffic, not to the requests' cached counts.
    assert 0 < host <= metrics["l2_loaded_tokens"]
    assert host / sum(r.input_len for r in records) == pytest.approx(metrics["l2_hit_ratio"])
    assert all(r.cached_tokens_device + r.cached_tokens_host == r.cached_tokens for r in records)  # type: ignore[operator]
    steps = read_iterations(run_dir)
    loads = [s.extra for s in steps if s.extra and s.extra["l2_load_ms"] > 0]
    assert loads and all(set(e) == {"l2_load_ms", "l2_load_tokens", "l2_backup_ms", "l2_backup_tokens",
                                     "l2_stall_ms"} for e in loads)  # fmt: skip
    # Each load is 2048-token system prompts or multiples: 36 x (6.67 us + 2048 x 4 KiB / 54.4 GB/s) each.
    one = 36 * (6.67e-6 + 2048 * 4096 / 54.4e9) * 1e3
    assert min(e["l2_load_ms"] for e in loads) == pytest.approx(one, rel=1e-6)
    assert sum(e["l2_load_tokens"] for e in loads) == metrics["l2_loaded_tokens"]
    assert sum(s.extra["l2_backup_tokens"] for s in steps if s.extra) <= metrics["l2_backed_up_tokens"]


def test_hicache_runs_are_deterministic_and_can_write_hisim_names(tmp_path: Path) -> None:
    config = _config(True, hicache_write_policy="write_back")
    config["output"] = {"hisim_file_aliases": True}
    _, first = write_run(config, tmp_path / "a", plots=False)
    _, second = write_run(config, tmp_path / "b", plots=False)
    for name in ("metrics.json", "requests.jsonl", "iterations.jsonl", "request.jsonl", "iteration.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "request.jsonl").read_bytes() == (first / "requests.jsonl").read_bytes()
    assert (first / "iteration.jsonl").read_bytes() == (first / "iterations.jsonl").read_bytes()
    assert json.loads((first / "metrics.json").read_text())["l2_backed_up_tokens"] > 0


def test_runs_without_hicache_write_no_tier_fields(tmp_path: Path) -> None:
    _, run_dir = write_run(_config(False), tmp_path / "plain", plots=False)
    line = (run_dir / "requests.jsonl").read_text().splitlines()[0]
    assert "cached_tokens_device" not in line
    assert '"extra"' not in (run_dir / "iterations.jsonl").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert not [key for key in metrics if "l2" in key or "prefix_cache" in key]
    assert not (run_dir / "request.jsonl").exists()


def test_request_records_check_and_round_trip_tier_counts(tmp_path: Path) -> None:
    times = np.array([1.0], dtype=np.float64)
    record = RequestRecord(
        0, 0.0, 0.0, 1.0, 1.0, 100, 1, 60, times, cached_tokens_device=20, cached_tokens_host=40
    )
    from kvsim.metrics import write_requests

    write_requests(tmp_path, [record])
    assert read_requests(tmp_path) == [RequestRecord(0, 0.0, 0.0, 1.0, 1.0, 100, 1, 60, None, 20, 40)]
    with pytest.raises(ValueError, match="add up to cached_tokens=60"):
        RequestRecord(0, 0.0, 0.0, 1.0, 1.0, 100, 1, 60, cached_tokens_device=10, cached_tokens_host=40)
    with pytest.raises(ValueError, match="both per-tier cached counts or neither"):
        RequestRecord(0, 0.0, 0.0, 1.0, 1.0, 100, 1, 60, cached_tokens_device=60)
