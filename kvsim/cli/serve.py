"""``kvsim serve``: run the KVCM-compatible cache service (gRPC + HTTP) over ``kvsim.cache``.

Settings come from, lowest first: built-in defaults, ``--config FILE`` (the reference's ``key=value``
lines), environment variables (the dotted key or its UPPER_SNAKE form) and these flags. grpc and
aiohttp are imported only when the command runs, so other subcommands never pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from kvsim.core import ConfigError
from kvsim.core.env import env_settings

# flag -> ServeSettings field; every flag defaults to None so that "not given" is visible.
_FLAG_FIELDS = (
    "host",
    "rpc_port",
    "http_port",
    "admin_rpc_port",
    "admin_http_port",
    "enable_debug_service",
    "data_dir",
    "meta_store",
    "storage_backend",
    "startup_config",
    "seed",
    "distributed_lock_uri",
    "node_id",
    "admin_token",
    "tls_cert",
    "tls_key",
    "kv_rpc_port",
    "kv_http_port",
    "kv_value_size_bytes",
    "storage_probe_period_s",
    "storage_high_water",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register this subcommand's flags."""
    parser.add_argument("--host", help="listen address (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--rpc-port", type=int, help="MetaService gRPC port (default 6381; 0: any free port)")
    parser.add_argument("--http-port", type=int, help="MetaService HTTP port (default 6382)")
    parser.add_argument(
        "--admin-rpc-port", type=int, help="AdminService gRPC port (default 6491; 0 or the rpc port: shared)"
    )
    parser.add_argument("--admin-http-port", type=int, help="AdminService HTTP port (default 6492)")
    parser.add_argument(
        "--enable-debug-service",
        action="store_true",
        default=None,
        help="serve the DebugService (HTTP on http port + 3000, gRPC on the admin gRPC server)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="data folder: meta store, file storage, logs (./kvsim-data)"
    )
    parser.add_argument(
        "--meta-store",
        help="sqlite (default, a file in the data folder), memory, or redis://[auth@]host:port?timeout_ms=...",
    )
    parser.add_argument(
        "--storage-backend",
        choices=("real", "simulated"),
        help="real (default: files under each storage's root, 3FS, Mooncake) or simulated (URIs only)",
    )
    parser.add_argument("--config", type=Path, help="key=value file with the reference's dotted keys")
    parser.add_argument(
        "--startup-config", help="the reference's startup JSON (default: nfs_01 + group default)"
    )
    parser.add_argument("--seed", type=int, help="seed of session and location ids (default: random)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARN or ERROR (or the reference's 0-5)")
    parser.add_argument(
        "--distributed-lock-uri",
        help="leader-election lock: memory:// (one node), file:///dir, redis://[auth@]host:port "
        "(default: the Redis meta store, else memory://)",
    )
    parser.add_argument("--node-id", help="this node's id in leader election (default: the host name)")
    parser.add_argument(
        "--admin-token",
        help="bearer token required on the admin and debug services (prefer KVSIM_ADMIN_TOKEN: flags are "
        "visible to every user of the host in the process list)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC and HTTP over TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--kv-rpc-port", type=int, help="string-key KV meta API gRPC port (default: off; 0: any free port)"
    )
    parser.add_argument(
        "--kv-http-port", type=int, help="string-key KV meta API HTTP port (default: off; 0: any free port)"
    )
    parser.add_argument(
        "--kv-value-size-bytes",
        type=int,
        help="bytes per value of a KV instance whose user_data names no value_size_bytes (default 1 MiB)",
    )
    parser.add_argument(
        "--storage-probe-period-s",
        type=float,
        help="probe every storage this often (default 5; 0: never); see kvsim.storage_* for the rest",
    )
    parser.add_argument(
        "--storage-high-water",
        type=float,
        help="usage ratio at which writes skip a storage (default 0.95)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration (settings, store, lock, startup config) and exit without serving",
    )


def run(args: argparse.Namespace) -> int:
    """Resolve the settings and serve until SIGTERM/SIGINT; returns 0 after a clean drain."""
    from kvsim.serve.config import SETTINGS_BY_KEY, known_keys, read_config_file, resolve_settings

    flags: dict[str, Any] = {name: getattr(args, name) for name in _FLAG_FIELDS}
    if args.log_level is not None:
        try:
            flags["log_level"] = SETTINGS_BY_KEY["kvcm.logger.log_level"].parse(args.log_level)
        except ValueError as exc:
            raise ConfigError(f"--log-level: {exc}") from None
    # Logging is configured before the settings are merged so that their warnings are shown.
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_values = read_config_file(args.config) if args.config is not None else {}
    settings = resolve_settings(file_values, env_settings(known_keys()), flags)
    logging.getLogger("kvsim").setLevel(settings.log_level)
    if args.check:
        from kvsim.serve.upkeep import check_configuration

        for line in check_configuration(settings):
            print(line)
        print("configuration OK")
        return 0

    from kvsim.serve.server import serve

    return asyncio.run(serve(settings))
