"""The L3 tier as a user configures it: SGLang's storage flags, the extra config, the ``kvcm:`` section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvsim.cache import CachePreferStrategy, GetCacheLocationRequest, QueryType, ReclaimPolicy, StorageType
from kvsim.cli.main import build_parser
from kvsim.cli.sim import overrides_from_args
from kvsim.core.errors import ConfigError, UserInputError
from kvsim.engines.experiment import resolve_config
from kvsim.engines.sglang.config import ServerArgs, StorageSettings, resolve_server
from kvsim.engines.sglang.kvcm_store import KvcmStore, parse_kvcm_section
from kvsim.perf.predictor import Deployment

POOL = 100_000  # device tokens; the host pool is twice that


@pytest.fixture(scope="module")
def h20() -> Deployment:
    return Deployment.create("Qwen3-8B", "H20")


def storage(deployment: Deployment, **args: object) -> StorageSettings | None:
    server_args = ServerArgs(max_total_tokens=POOL, enable_hierarchical_cache=True, **args)  # type: ignore[arg-type]
    hicache = resolve_server(server_args, deployment).hicache
    assert hicache is not None
    return hicache.storage


def test_defaults_are_sglangs(h20: Deployment) -> None:
    assert storage(h20) is None
    assert storage(h20, hicache_storage_backend="kvcm") == StorageSettings(
        backend="kvcm",
        prefetch_policy="best_effort",
        prefetch_threshold=256,
        prefetch_timeout_base_s=1.0,
        prefetch_timeout_per_page_s=0.25 / 1024,
        prefetch_capacity_tokens=80_000,  # 0.8 x (200,000 host - 100,000 device)
        tier=None,
        extra_config={},
    )
    plain = storage(h20, hicache_storage_backend="file", page_size=64)
    assert plain is not None and (plain.tier, plain.prefetch_timeout_per_page_s) == ("nfs", 64 / 1024 * 0.25)
    assert storage(h20, hicache_storage_backend="mooncake").tier == "mooncake"  # type: ignore[union-attr]


def test_extra_config_keys_and_the_page_floor(h20: Deployment) -> None:
    extra = json.dumps(
        {
            "prefetch_threshold": 32,
            "prefetch_timeout_base": 2,
            "prefetch_timeout_per_ki_token": 0.5,
            "max_size": "1T",
        }
    )
    settings = storage(
        h20,
        hicache_storage_backend="file",
        hicache_storage_backend_extra_config=extra,
        hicache_storage_prefetch_policy="timeout",
        hicache_storage_tier="3fs",
        page_size=64,
    )
    assert settings is not None
    # The threshold is at least one page; other keys go to the backend untouched.
    assert (settings.prefetch_threshold, settings.prefetch_timeout_base_s) == (64, 2.0)
    assert settings.prefetch_timeout_per_page_s == 64 / 1024 * 0.5
    assert (settings.tier, settings.extra_config, settings.prefetch_policy) == (
        "3fs",
        {"max_size": "1T"},
        "timeout",
    )


def test_mooncake_cannot_use_layer_first(h20: Deployment) -> None:
    server_args = ServerArgs(
        max_total_tokens=POOL, enable_hierarchical_cache=True, hicache_storage_backend="mooncake"
    )
    hicache = resolve_server(server_args, h20).hicache
    assert hicache is not None and (hicache.mem_layout, hicache.io_backend) == ("page_first", "kernel")
    direct = resolve_server(
        ServerArgs(**{**server_args.to_dict(), "hicache_io_backend": "direct"}), h20
    ).hicache
    assert direct is not None and (direct.mem_layout, direct.io_backend) == ("page_first_direct", "direct")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"hicache_storage_backend": "nixl"},
            "--hicache-storage-backend: 'nixl' is not modelled; choose one of file",
        ),
        (
            {"hicache_storage_backend": "file", "hicache_storage_prefetch_policy": "eager"},
            "'eager' is not one of",
        ),
        ({"hicache_storage_backend": "file", "hicache_storage_backend_extra_config": "{"}, "invalid JSON"),
        ({"hicache_storage_backend": "file", "hicache_storage_backend_extra_config": "[1]"}, "a JSON object"),
        (
            {
                "hicache_storage_backend": "file",
                "hicache_storage_backend_extra_config": '{"prefetch_threshold": 1.5}',
            },
            "prefetch_threshold must be an int, got 1.5",
        ),
        (
            {
                "hicache_storage_backend": "file",
                "hicache_storage_backend_extra_config": '{"prefetch_timeout_base": "1"}',
            },
            "prefetch_timeout_base must be a number",
        ),
        (
            {"hicache_storage_backend": "kvcm", "hicache_storage_tier": "nfs"},
            "each storage's tier from the kvcm",
        ),
        ({"hicache_storage_tier": "nfs"}, "--hicache-storage-tier: needs --hicache-storage-backend"),
    ],
)
def test_bad_storage_settings_are_one_line_errors(
    h20: Deployment, args: dict[str, object], message: str
) -> None:
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        storage(h20, **args)


def test_a_storage_backend_needs_hicache(h20: Deployment) -> None:
    with pytest.raises(UserInputError, match="needs --enable-hierarchical-cache"):
        resolve_server(ServerArgs(max_total_tokens=POOL, hicache_storage_backend="file"), h20)


def test_resolved_config_shows_storage_only_when_set(h20: Deployment) -> None:
    l2 = resolve_server(ServerArgs(max_total_tokens=POOL, enable_hierarchical_cache=True), h20).to_dict()
    assert not [key for key in l2 if "storage" in key]
    l3 = resolve_server(
        ServerArgs(max_total_tokens=POOL, enable_hierarchical_cache=True, hicache_storage_backend="kvcm"), h20
    ).to_dict()
    assert (l3["hicache_storage_backend"], l3["hicache_storage_prefetch_threshold"]) == ("kvcm", 256)


def test_cli_flags_carry_sglang_names() -> None:
    argv = ["sim", "--enable-hierarchical-cache", "--hicache-storage-backend", "kvcm",
            "--hicache-storage-prefetch-policy", "timeout",
            "--hicache-storage-backend-extra-config", '{"prefetch_threshold": 512}']  # fmt: skip
    overrides = overrides_from_args(build_parser()[0].parse_args(argv))
    assert overrides["server"] == {
        "enable_hierarchical_cache": True,
        "hicache_storage_backend": "kvcm",
        "hicache_storage_prefetch_policy": "timeout",
        "hicache_storage_backend_extra_config": '{"prefetch_threshold": 512}',
    }
    plain = overrides_from_args(build_parser()[0].parse_args(["sim", "--hicache-storage-tier", "3fs"]))
    assert plain["server"] == {"hicache_storage_tier": "3fs"}


def test_kvcm_section_defaults_are_the_reference_startup_config() -> None:
    section = parse_kvcm_section(None)
    assert [(s.name, s.type, s.tier.name, s.key_count_per_file) for s in section.storages] == [
        ("nfs_01", "nfs", "nfs", 8)
    ]
    assert (section.quota_bytes, section.water_level, section.reclaim_policy) == (30_000_000_000, 0.8, "lru")
    assert (section.delay_before_delete_ms, section.max_key_count, section.data_storage_strategy) == (
        1000,
        1_000_000,
        "prefer_3fs",
    )


def test_kvcm_section_configures_the_manager() -> None:
    section = parse_kvcm_section(
        {
            "instance_group": "sweep",
            "storages": [
                {"name": "fast", "type": "mooncake"},
                {"name": "big", "type": "3fs", "tier": {"base": "3fs", "read_bandwidth": "10 GB/s"}},
            ],
            "quota": "2 TB",
            "type_quotas": {"mooncake": "500 GB"},
            "reclaim_policy": "lfu",
            "water_level": 0.9,
            "data_storage_strategy": "prefer_mooncake",
            "rpc_latency": "200 us",
        }
    )
    assert section.storages[1].tier.read_bandwidth == 10e9
    assert parse_kvcm_section(section.to_dict()) == section  # the resolved config reads back the same
    assert section.to_dict()["storages"][0]["tier"] == "mooncake"
    store = KvcmStore(section, 64, 64 * 4096, 2, ("Qwen3-8B", "bfloat16"), np.random.default_rng(0))
    group = store.manager.get_instance_group("sweep")
    assert group.storage_candidates == ("fast", "big")
    assert group.quota.capacity == 2_000_000_000_000
    assert [(q.storage_type, q.capacity) for q in group.quota.quota_config] == [
        (StorageType.ST_MOONCAKE, 500e9)
    ]
    assert group.cache_config is not None
    reclaim = group.cache_config.reclaim_strategy
    assert (reclaim.reclaim_policy, reclaim.trigger_strategy.used_percentage) == (
        ReclaimPolicy.POLICY_LFU,
        0.9,
    )
    assert group.cache_config.data_storage_strategy == CachePreferStrategy.CPS_PREFER_MOONCAKE
    info = store.manager.list_instance_info("sweep")[0]
    assert info.block_size == 64
    assert [(s.name, s.size) for s in info.location_spec_infos] == [("tp0", 64 * 4096), ("tp1", 64 * 4096)]
    assert store.query_latency_s == pytest.approx(2e-4)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"quotas": 1}, "kvcm: unknown keys \\['quotas'\\]; valid: instance_group"),
        ({"storages": []}, "expected a non-empty list"),
        ({"storages": [{"name": "a", "type": "s3"}]}, "kvcm.storages\\[0\\].type: 's3' is not one of nfs"),
        ({"storages": [{"name": "a"}, {"name": "a"}]}, "duplicate storage names"),
        ({"storages": [{"name": "a/b"}]}, "without '/' or '\\?'"),
        ({"quota": "lots"}, "cannot read quantity 'lots'"),
        ({"water_level": 80}, "a fraction in \\[0, 1\\]"),
        ({"reclaim_policy": "fifo"}, "'fifo' is not one of lru, lfu, ttl"),
        ({"type_quotas": {"tape": "1 GB"}}, "kvcm.type_quotas: 'tape' is not one of"),
    ],
)
def test_bad_kvcm_sections_are_refused(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_kvcm_section(section)


def test_the_experiment_file_takes_a_kvcm_section(tmp_path: Path) -> None:
    file = tmp_path / "exp.yaml"
    file.write_text("kvcm:\n  quota: 5 GB\n  water_level: 0.5\n")
    config = resolve_config(file, {"kvcm": {"water_level": 0.6}})
    assert config["kvcm"] == {"quota": "5 GB", "water_level": 0.6}
    file.write_text("kvcm:\n  qouta: 5 GB\n")
    with pytest.raises(ConfigError, match=r"unknown key kvcm\.qouta"):
        resolve_config(file)


@pytest.mark.parametrize(
    ("kind", "tier", "uri_start"),
    [
        ("nfs", "nfs", "file://s/kvsim/s/kvsim-sglang-0/tp0/"),
        ("3fs", "3fs", "hf3fs://s/3fs/s/kvsim-sglang-0/tp0/"),
        ("vcns_3fs", "3fs", "hf3fs://s/3fs/s/kvsim-sglang-0/tp0/"),
        ("mooncake", "mooncake", "mooncake://s/?key=kvsim-sglang-0/tp0/"),
        ("tairmempool", "host_dram", "pace://s/"),
    ],
)
def test_every_storage_type_takes_writes_on_its_default_tier(kind: str, tier: str, uri_start: str) -> None:
    section = parse_kvcm_section({"storages": [{"name": "s", "type": kind}], "type_quotas": {}})
    assert section.storages[0].tier.name == tier
    store = KvcmStore(section, 16, 16 * 4096, 1, ("Qwen3-8B", "bfloat16"), np.random.default_rng(0))
    keys = np.arange(1, 4, dtype=np.int64)
    ticket = store.start_write(keys, 0.0)
    assert (ticket.new_pages, ticket.tier.name if ticket.tier else None) == (3, tier)
    assert store.finish_write(ticket, 0.5) == 3
    assert store.query(keys, 1, 1.0) == [(section.storages[0].tier, 2)]
    found = store.manager.get_cache_location(
        GetCacheLocationRequest(
            instance_id="kvsim-sglang-0", query_type=QueryType.QT_PREFIX_MATCH, block_keys=keys
        )
    )
    assert found.locations[0].location_specs[0].uri.startswith(uri_start)


def test_the_example_experiment_resolves() -> None:
    file = Path(__file__).resolve().parents[2] / "experiments" / "h20_qwen3_8b_mooncake_kvcm.yaml"
    config = resolve_config(file)
    assert config["server"]["hicache_storage_backend"] == "kvcm"
    section = parse_kvcm_section(config["kvcm"])
    assert (section.quota_bytes, section.storages[0].tier.name) == (100_000_000_000_000, "3fs")
