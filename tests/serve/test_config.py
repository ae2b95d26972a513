"""Settings precedence (defaults < --config file < environment < flags), the environment helper, and
the startup configuration (the reference's startup JSON and the built-in default)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import pytest

from kvsim.cache import (
    CachePreferStrategy,
    NfsStorageSpec,
    QuotaConfig,
    ReclaimPolicy,
    StorageType,
    default_instance_group,
)
from kvsim.cli import serve as serve_cli
from kvsim.core import ConfigError
from kvsim.core.env import env_settings
from kvsim.serve.config import ServeSettings, known_keys, read_config_file, resolve_settings
from kvsim.serve.startup import default_serve_startup, load_startup_config


def test_defaults_match_compat() -> None:
    s = resolve_settings()
    assert (s.host, s.rpc_port, s.http_port, s.admin_rpc_port, s.admin_http_port) == (
        "127.0.0.1",
        6381,
        6382,
        6491,
        6492,
    )
    assert (s.enable_debug_service, s.data_dir, s.meta_store, s.storage_backend) == (
        False,
        Path("./kvsim-data"),
        "sqlite",
        "real",
    )
    assert s.debug_http_port == 9382 and not s.shared_admin_rpc


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "kvcm.conf"
    conf.write_text(
        "# the reference's format\n"
        "kvcm.service.rpc_port=7001\n"
        "kvcm.service.http_port = 7002\n"
        "kvcm.service.admin_http_port=7003\n"
        "kvcm.service.enable_debug_service=true\n"
        "kvsim.data_dir=/from/file\n"
        "\n"
    )
    monkeypatch.setenv("kvcm.service.http_port", "8002")  # the dotted name, as the reference reads it
    monkeypatch.setenv("KVCM_SERVICE_ADMIN_HTTP_PORT", "8003")  # the UPPER_SNAKE form
    monkeypatch.setenv("KVSIM_DATA_DIR", "/from/env")
    env = env_settings(known_keys())
    assert env == {
        "kvcm.service.http_port": "8002",
        "kvcm.service.admin_http_port": "8003",
        "kvsim.data_dir": "/from/env",
    }
    s = resolve_settings(read_config_file(conf), env, {"data_dir": Path("/from/flag"), "rpc_port": None})
    assert (s.rpc_port, s.http_port, s.admin_http_port, s.enable_debug_service, s.data_dir) == (
        7001,
        8002,
        8003,
        True,
        Path("/from/flag"),
    )


def test_unknown_and_unused_keys_are_warned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kvsim.serve"):
        s = resolve_settings({"kvcm.service.io_thread_num": "2", "no.such.key": "1"})
    assert s == ServeSettings()
    assert [r.getMessage() for r in caplog.records] == [
        "config file: kvcm.service.io_thread_num is not used by kvsim serve yet; ignored",
        "config file: unknown key no.such.key ignored",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kvcm.service.rpc_port": "x"}, "config file: kvcm.service.rpc_port='x': invalid literal"),
        (
            {"kvcm.service.rpc_port": "70000"},
            "config file: kvcm.service.rpc_port='70000': 70000 is not a port",
        ),
        ({"kvcm.service.enable_debug_service": "maybe"}, "'maybe' is not a boolean"),
        ({"kvcm.logger.log_level": "9"}, "'9' is not a log level"),
        ({"kvsim.storage_backend": "cloud"}, "'cloud' is not a storage backend mode"),
        ({"kvcm.service.http_port": "6381"}, "http_port 6381 is already used by rpc_port"),
    ],
)
def test_bad_values_are_config_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(values)
    assert message in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("kvcm.service.rpc_port=1\njust words\n")
    with pytest.raises(ConfigError, match=r"bad.conf:2: expected key=value, got 'just words'"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="No such file"):
        read_config_file(tmp_path / "missing.conf")


def test_kv_meta_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The KV service's ports are off unless set (0: any free port); its value size defaults to 1 MiB."""
    s = resolve_settings()
    assert (s.kv_rpc_port, s.kv_http_port, s.kv_value_size_bytes) == (None, None, 1 << 20)
    conf = tmp_path / "kvcm.conf"
    conf.write_text("kvsim.kv_rpc_port=0\nkvsim.kv_http_port=7100\nkvsim.kv_value_size_bytes=4096\n")
    monkeypatch.setenv("KVSIM_KV_HTTP_PORT", "7200")
    s = resolve_settings(read_config_file(conf), env_settings(known_keys()), {"kv_value_size_bytes": 512})
    assert (s.kv_rpc_port, s.kv_http_port, s.kv_value_size_bytes) == (0, 7200, 512)
    assert resolve_settings({"kvsim.kv_rpc_port": ""}).kv_rpc_port is None  # an empty value: off


@pytest.mark.parametrize(
    ("file_values", "flags", "message"),
    [
        ({"kvsim.kv_rpc_port": "70000"}, {}, "config file: kvsim.kv_rpc_port='70000': 70000 is not a port"),
        ({"kvsim.kv_http_port": "x"}, {}, "config file: kvsim.kv_http_port='x': invalid literal"),
        ({}, {"kv_rpc_port": 70000}, "kv_rpc_port 70000 is not a port (0..65535; 0 means any free port)"),
        ({}, {"kv_http_port": -1}, "kv_http_port -1 is not a port (0..65535; 0 means any free port)"),
        ({}, {"kv_rpc_port": 6381}, "kv_rpc_port 6381 is already used by rpc_port"),
        ({}, {"kv_rpc_port": 7000, "kv_http_port": 7000}, "kv_http_port 7000 is already used by kv_rpc_port"),
        ({"kvsim.kv_value_size_bytes": "0"}, {}, "kvsim.kv_value_size_bytes='0': must be > 0, got 0"),
        ({}, {"kv_value_size_bytes": 0}, "kv_value_size_bytes: must be > 0, got 0"),
    ],
)
def test_bad_kv_meta_settings(file_values: dict[str, str], flags: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(file_values, {}, flags)
    assert message in str(err.value)


def test_kv_flags_reach_the_settings_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """``kvsim serve --kv-rpc-port 70000`` stops with the settings' one-line error before serving."""
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--kv-rpc-port", "70000", "--kv-http-port", "0", "--kv-value-size-bytes", "64"])
    assert (args.kv_rpc_port, args.kv_http_port, args.kv_value_size_bytes) == (70000, 0, 64)
    with pytest.raises(
        ConfigError, match=r"^kv_rpc_port 70000 is not a port \(0..65535; 0 means any free port\)$"
    ):
        serve_cli.run(args)


def test_admin_rpc_port_zero_or_equal_shares_the_meta_server() -> None:
    assert resolve_settings(flags={"admin_rpc_port": 0}).shared_admin_rpc
    assert resolve_settings(flags={"admin_rpc_port": 6381}).shared_admin_rpc


# ---------------------------------------------------------------------------------------------- startup


REFERENCE_DEFAULT = {
    "storage_config": {
        "type": "file",
        "global_unique_name": "nfs_01",
        "storage_spec": {"root_path": "/tmp/nfs/", "key_count_per_file": 8},
    },
    "instance_group": {
        "name": "default",
        "storage_candidates": ["nfs_01"],
        "global_quota_group_name": "default_quota_group",
        "max_instance_count": 100,
        "quota": {
            "capacity": 30000000000,
            "quota_config": [
                {"storage_type": "file", "capacity": 10000000000},
                {"storage_type": "hf3fs", "capacity": 10000000000},
                {"storage_type": "pace", "capacity": 10000000000},
            ],
        },
        "cache_config": {
            "reclaim_strategy": {
                "storage_unique_name": "nfs_01",
                "reclaim_policy": 1,
                "trigger_strategy": {"used_percentage": 0.8},
                "delay_before_delete_ms": 1000,
            },
            "cache_prefer_strategy": 2,
            "meta_indexer_config": {
                "max_key_count": 1000000,
                "mutex_shard_num": 16,
                "batch_key_size": 16,
                "meta_storage_backend_config": {"storage_type": "local", "storage_uri": ""},
                "meta_cache_policy_config": {"capacity": 10000, "type": "lru", "cache_shard_bits": 0},
            },
        },
    },
}


def test_reference_startup_json_gives_the_built_in_default(tmp_path: Path) -> None:
    path = tmp_path / "startup.json"
    path.write_text(json.dumps(REFERENCE_DEFAULT))
    storage, group = load_startup_config(path)
    assert storage is not None and storage.spec == NfsStorageSpec("/tmp/nfs/", 8)
    assert group == default_instance_group()


def test_startup_json_model_defaults_and_names(tmp_path: Path) -> None:
    path = tmp_path / "startup.json"
    doc = {
        "storage_config": {
            "type": "mooncake",
            "global_unique_name": "mc",
            "storage_spec": {"master_server_entry": "m:1"},
        },
        "instance_group": {
            "name": "g",
            "quota": {"quota_config": [{"storage_type": "ST_MOONCAKE", "capacity": 5}]},
            "cache_config": {
                "cache_prefer_strategy": "CPS_PREFER_MOONCAKE",
                "reclaim_strategy": {"reclaim_policy": 2},
            },
        },
    }
    path.write_text(json.dumps(doc))
    storage, group = load_startup_config(path)
    assert storage is not None and storage.spec is not None
    assert (storage.spec.local_hostname, storage.spec.protocol, storage.spec.master_service_entry) == (  # type: ignore[union-attr]
        "localhost",
        "tcp",
        "m:1",
    )
    assert group is not None and group.cache_config is not None
    assert group.quota.quota_config == (QuotaConfig(StorageType.ST_MOONCAKE, 5),)
    assert group.cache_config.data_storage_strategy == CachePreferStrategy.CPS_PREFER_MOONCAKE
    assert group.cache_config.reclaim_strategy.reclaim_policy == ReclaimPolicy.POLICY_LFU
    policy = group.cache_config.meta_indexer_config.meta_cache_policy_config
    assert (policy.capacity, policy.cache_shard_bits) == (1024, 6)  # the model's defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "the document must be a JSON object"),
        ('{"storage_config": {"type": "tape"}}', "storage_config.type: 'tape' is not one of"),
        (
            '{"instance_group": {"cache_config": {"cache_prefer_strategy": 99}}}',
            "99 is not a CachePreferStrategy",
        ),
    ],
)
def test_bad_startup_json(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "startup.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_startup_config(path)


def test_built_in_default_puts_nfs_01_under_the_data_dir(tmp_path: Path) -> None:
    storage, group = default_serve_startup(tmp_path / "data")
    assert storage.global_unique_name == "nfs_01"
    assert storage.spec == NfsStorageSpec(str((tmp_path / "data").resolve()) + "/nfs/", 8)
    assert group == default_instance_group()
    assert dataclasses.replace(storage, spec=NfsStorageSpec("/tmp/nfs/", 8)).type_name == "file"
