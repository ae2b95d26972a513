"""The sweep file: paths, axes, variants, samples, and the messages for bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvsim.core.errors import ConfigError, UserInputError
from kvsim.engines.experiment import SECTIONS, SERVER_KEYS
from kvsim.sweep import load_sweep
from kvsim.sweep.paths import flatten, get_path, set_path, split_path
from kvsim.sweep.table import gpus_of

SLO = "slo: {p90_ttft_ms: 1 s}\n"


def test_paths_reach_nested_mappings_and_lists() -> None:
    config = {"server": {"tp": 1}, "kvcm": {"storages": [{"name": "a", "tier": "nfs"}]}}
    assert split_path("kvcm.storages.0.tier") == ("kvcm", "storages", 0, "tier")
    assert get_path(config, "kvcm.storages.0.tier") == "nfs"
    assert get_path(config, "server.missing", "default") == "default"
    changed = set_path(config, "kvcm.storages.0.tier", "3fs")
    assert changed["kvcm"]["storages"][0]["tier"] == "3fs"
    assert config["kvcm"]["storages"][0]["tier"] == "nfs"  # the original is untouched
    # A section that does not exist yet (cluster:) is created on the way, so it can be swept once the
    # experiment loader accepts it.
    assert set_path(config, "cluster.instances", 4)["cluster"] == {"instances": 4}
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}


def test_gpus_count_tp_times_instances() -> None:
    assert gpus_of({"server": {"tp": 2}}) == 2
    assert gpus_of({"server": {"tp": 2}, "cluster": {"instances": 3}}) == 6


def test_grid_expands_in_order_last_axis_fastest(sweep_file: Callable[[str], Path]) -> None:
    spec = load_sweep(sweep_file("sweep:\n  grid:\n    gpu: [H20, H100]\n    server.tp: [1, 2]\n"))
    configurations = spec.configurations()
    assert [c.describe() for c in configurations] == [
        "gpu=H20 tp=1",
        "gpu=H20 tp=2",
        "gpu=H100 tp=1",
        "gpu=H100 tp=2",
    ]
    assert configurations[3].config["gpu"] == "H100"
    assert configurations[3].config["server"]["tp"] == 2
    assert configurations[3].config["workload"]["gsp_num_groups"] == 2  # the base is kept


def test_variants_set_several_paths_and_label_the_configuration(sweep_file: Callable[[str], Path]) -> None:
    body = (
        "sweep:\n  grid: {gpu: [H20]}\n  variants:\n    l2:\n      none: {}\n"
        "      big: {server.enable_hierarchical_cache: true, server.hicache_size: 64}\n"
    )
    configurations = load_sweep(sweep_file(body)).configurations()
    assert [c.describe() for c in configurations] == ["gpu=H20 l2=none", "gpu=H20 l2=big"]
    assert configurations[1].config["server"]["hicache_size"] == 64
    assert configurations[1].config["server"]["enable_hierarchical_cache"] is True
    assert "enable_hierarchical_cache" not in configurations[0].config["server"]


def test_sample_draws_distinct_points_reproducibly(sweep_file: Callable[[str], Path]) -> None:
    body = (
        "sweep:\n  grid:\n    server.tp: [1, 2, 4]\n    server.page_size: [1, 16, 64]\n"
        "  sample: {count: 4, seed: 3}\n"
    )
    first = [c.describe() for c in load_sweep(sweep_file(body)).configurations()]
    again = [c.describe() for c in load_sweep(sweep_file(body)).configurations()]
    assert first == again
    assert len(set(first)) == 4


def test_sample_draws_from_ranges(sweep_file: Callable[[str], Path]) -> None:
    body = (
        "sweep:\n  grid:\n    server.hicache_size: {min: 16, max: 1024, log: true, integer: true}\n"
        "  sample: {count: 5, seed: 1}\n"
    )
    values = [c.config["server"]["hicache_size"] for c in load_sweep(sweep_file(body)).configurations()]
    assert len(values) == 5
    assert all(isinstance(v, int) and 16 <= v <= 1024 for v in values)


def test_a_load_axis_gives_runs_not_configurations(sweep_file: Callable[[str], Path]) -> None:
    body = "sweep:\n  grid:\n    gpu: [H20, H100]\n    workload.request_rate: [1, 8]\n"
    configurations = load_sweep(sweep_file(body)).configurations()
    assert [c.describe() for c in configurations] == ["gpu=H20", "gpu=H100"]
    assert configurations[0].load_values == (1, 8)


def test_overrides_set_dotted_paths_before_checking(sweep_file: Callable[[str], Path]) -> None:
    path = sweep_file("sweep:\n  grid: {gpu: [H20, H100]}\n  goodput: {low: 1, high: 8}\n" + SLO)
    spec = load_sweep(
        path, {"workload.gsp_num_groups": 1, "sweep.goodput.max_steps": 3, "sweep.grid": {"gpu": ["H20"]}}
    )
    assert spec.base["workload"]["gsp_num_groups"] == 1
    assert spec.goodput is not None and spec.goodput.max_steps == 3 and spec.goodput.low == 1.0
    assert [c.describe() for c in spec.configurations()] == ["gpu=H20"]


def test_unknown_experiment_key_names_it_and_the_valid_ones(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {server.tpp: [1, 2]}\n"))
    assert str(error.value) == f"sweep.grid: unknown key server.tpp; valid: {', '.join(SERVER_KEYS)}"


def test_cluster_paths_follow_the_experiment_loader(sweep_file: Callable[[str], Path]) -> None:
    # The sweep knows no sections of its own: cluster.instances is refused while experiment files have
    # no cluster: section, naming the ones they have, and swept as soon as they do.
    body = "sweep:\n  grid: {cluster.instances: [1, 2]}\n"
    if "cluster" not in SECTIONS:
        with pytest.raises(ConfigError) as error:
            load_sweep(sweep_file(body))
        assert str(error.value) == f"sweep.grid: unknown section 'cluster'; valid: {', '.join(SECTIONS)}"
        return
    configurations = load_sweep(sweep_file(body)).configurations()
    assert [c.describe() for c in configurations] == ["instances=1", "instances=2"]
    assert configurations[1].config["cluster"] == {"instances": 2}
    assert gpus_of(configurations[1].config) == 2


def test_unknown_sweep_key_names_it_and_the_valid_ones(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  gird: {gpu: [H20]}\n"))
    assert (
        str(error.value)
        == "sweep: unknown key 'gird'; valid: name, grid, variants, sample, goodput, target_rate"
    )


def test_unknown_top_level_section_lists_experiment_and_sweep_sections(
    sweep_file: Callable[[str], Path],
) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20]}\nslos: {p90_ttft_ms: 1}\n"))
    assert str(error.value).endswith(
        f"unknown section 'slos'; valid: {', '.join(SECTIONS)}, sweep, slo, cost"
    )


def test_unknown_slo_metric_names_it_and_the_valid_ones(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20]}\nslo: {p90_ttf_ms: 100}\n"))
    message = str(error.value)
    assert message.startswith("slo: unknown metric 'p90_ttf_ms'; valid: ")
    assert "p90_ttft_ms" in message and "p90_tpot_ms" in message and "cache_hit_rate" in message


def test_slo_bounds_take_units_and_lower_bounds(sweep_file: Callable[[str], Path]) -> None:
    spec = load_sweep(
        sweep_file(
            "sweep:\n  grid: {gpu: [H20]}\n"
            "slo: {p90_ttft_ms: 2 s, p90_tpot_ms: 50, cache_hit_rate: {min: 0.5}}\n"
        )
    )
    assert spec.slo is not None
    assert spec.slo.describe() == "p90_ttft_ms <= 2000, p90_tpot_ms <= 50, cache_hit_rate >= 0.5"
    metrics = {"p90_ttft_ms": 2500.0, "p90_tpot_ms": 50.0, "cache_hit_rate": 0.25}
    assert spec.slo.violations(metrics) == ["p90_ttft_ms=2500 (<= 2000)", "cache_hit_rate=0.25 (>= 0.5)"]
    assert spec.slo.worst_ratio(metrics) == 2.0  # 0.5 / 0.25, worse than 2500 / 2000


def test_an_empty_grid_is_refused(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(UserInputError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {}\n")).configurations()
    assert str(error.value) == (
        "sweep: the grid is empty (neither sweep.grid nor sweep.variants has an axis); add one, "
        "e.g. grid: {server.tp: [1, 2]}"
    )


def test_an_empty_axis_is_refused(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20], server.tp: []}\n"))
    assert str(error.value) == "sweep.grid.server.tp: no values; an empty axis leaves the grid empty"


def test_a_file_without_a_sweep_section_is_refused(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file(""))
    assert "no sweep: section" in str(error.value)


def test_goodput_needs_an_slo_and_excludes_a_load_axis(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20]}\n  goodput: {low: 1, high: 8}\n"))
    assert str(error.value) == (
        "sweep.goodput needs an slo: section (the goodput is the highest rate meeting the SLOs)"
    )
    body = "sweep:\n  grid: {workload.request_rate: [1, 2]}\n  goodput: {low: 1, high: 8}\n" + SLO
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file(body)).configurations()
    assert str(error.value).startswith(
        "sweep.grid.workload.request_rate: sweep.goodput searches the load itself"
    )


def test_bad_goodput_range_is_refused(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20]}\n  goodput: {low: 8, high: 1}\n" + SLO))
    assert str(error.value) == "sweep.goodput: low (8) must be below high (1)"


def test_a_range_without_sample_is_refused(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {server.hicache_size: {min: 1, max: 8}}\n"))
    assert (
        str(error.value)
        == "sweep.grid.server.hicache_size: a range needs sweep.sample (a grid lists its values)"
    )


def test_cost_section_keys_are_checked(sweep_file: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(sweep_file("sweep:\n  grid: {gpu: [H20]}\ncost: {gpu_hours: {H20: 1}}\n"))
    assert str(error.value) == "cost: unknown key 'gpu_hours'; valid: gpu_hour, storage_gb_month"
