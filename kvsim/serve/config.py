"""Settings of ``kvsim serve`` and their precedence: defaults < ``--config`` file < environment < flags.

Every setting has one dotted key. Settings the reference has use its key (``kvcm.service.rpc_port``);
kvsim's own use ``kvsim.*`` (``kvsim.data_dir``). The same key names a line of the config file
(``key=value``, ``#`` comments), an environment variable (the dotted name itself or its UPPER_SNAKE
form, ``KVCM_SERVICE_RPC_PORT``) and, for the common ones, a command-line flag. Reading the environment
is the entry point's job (``kvsim.cli.serve`` via :mod:`kvsim.core.env`); this module only merges the
layers it is given, so it is deterministic and easy to test.

Keys of the reference that kvsim does not use yet (the registry URI, metrics reporters, thread
counts) are accepted with a warning; unknown keys are warned about and ignored, as the reference does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kvsim.cache.errors import CacheError
from kvsim.cache.health import ProbeSettings
from kvsim.core import ConfigError

logger = logging.getLogger("kvsim.serve")

DEFAULT_HOST = (
    "127.0.0.1"  # COMPAT.md: listen on loopback unless --host says otherwise (the reference: 0.0.0.0)
)
DEBUG_HTTP_OFFSET = 3000  # the debug HTTP server listens on http_port + 3000, as the reference


@dataclasses.dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``kvsim serve`` needs to start (see :data:`SETTINGS` for keys and meanings)."""

    host: str = DEFAULT_HOST
    rpc_port: int = 6381
    http_port: int = 6382
    admin_rpc_port: int = 6491
    admin_http_port: int = 6492
    enable_debug_service: bool = False
    data_dir: Path = Path("./kvsim-data")
    meta_store: str = "sqlite"
    storage_backend: str = "real"
    startup_config: str = ""
    log_level: int = logging.INFO
    node_id: str = ""
    seed: int | None = None
    poll_interval_s: float = 0.5
    max_body_bytes: int = 64 << 20
    shutdown_grace_s: float = 10.0
    # Leader election and upkeep (serve II).
    distributed_lock_uri: str = ""
    lease_s: float = 10.0
    loop_interval_s: float = 0.1
    log_max_bytes: int = 64 << 20
    log_backups: int = 5
    event_log: bool = False
    # Security and limits (serve III, kvsim.serve.auth / tls / limits). The token is kept out of repr so
    # that logging the settings can never print it.
    admin_token: str = dataclasses.field(default="", repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    max_keys_per_request: int = 1_000_000
    max_concurrent_streams: int = 100
    max_in_flight: int = 1024
    # Storage status (kvsim.cache.health): probe period (0: no probing), hysteresis, water levels.
    storage_probe_period_s: float = 5.0
    storage_probe_timeout_s: float = 2.0
    storage_fail_after: int = 1
    storage_recover_after: int = 3
    storage_high_water: float = 0.95
    storage_reclaim_water: float = 0.90
    # The string-key KV meta service (kvsim.cache.kv_meta): its ports (None: not served; 0: any free
    # port) and the bytes per value of an instance whose user_data names none.
    kv_rpc_port: int | None = None
    kv_http_port: int | None = None
    kv_value_size_bytes: int = 1 << 20

    @property
    def debug_http_port(self) -> int:
        """The debug HTTP port: ``http_port + 3000`` (0, any free port, when ``http_port`` is 0)."""
        return self.http_port + DEBUG_HTTP_OFFSET if self.http_port else 0

    @property
    def shared_admin_rpc(self) -> bool:
        """True when the admin (and debug) gRPC services share the meta server, as the reference does
        when ``admin_rpc_port`` is 0 or equal to ``rpc_port``."""
        return self.admin_rpc_port in (0, self.rpc_port)


# ---------------------------------------------------------------------------------------------- parsers


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port (0..65535; 0 means any free port)")
    return value


def _optional_port(text: str) -> int | None:
    """A port, or None (the listener is off) for an empty value."""
    return _port(text) if text.strip() else None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


# The reference's levels: 0 auto (= info), 1 fatal, 2 error, 3 warn, 4 info, 5 debug; names also work.
_LEVELS = {
    "0": logging.INFO,
    "1": logging.CRITICAL,
    "2": logging.ERROR,
    "3": logging.WARNING,
    "4": logging.INFO,
    "5": logging.DEBUG,
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}


def _level(text: str) -> int:
    try:
        return _LEVELS[text.strip().upper()]
    except KeyError:
        raise ValueError(f"{text!r} is not a log level (0-5 or DEBUG, INFO, WARN, ERROR, FATAL)") from None


def _positive_ms(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text}")
    return value / 1000.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text}")
    return value


def _non_negative_ms(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number >= 0, got {text}")
    return value / 1000.0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"must be a fraction in (0, 1], got {text}")
    return value


def _backend(text: str) -> str:
    value = text.strip()
    if value not in ("real", "simulated"):
        raise ValueError(f"{text!r} is not a storage backend mode (real or simulated)")
    return value


def _seed(text: str) -> int | None:
    return int(text) if text.strip() else None


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its dotted key, the :class:`ServeSettings` field it sets and how to parse text."""

    key: str
    attr: str
    parse: Callable[[str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("kvsim.host", "host", str.strip, "listen address"),
    Setting("kvcm.service.rpc_port", "rpc_port", _port, "MetaService gRPC port"),
    Setting("kvcm.service.http_port", "http_port", _port, "MetaService HTTP port (debug HTTP: +3000)"),
    Setting(
        "kvcm.service.admin_rpc_port", "admin_rpc_port", _port, "AdminService gRPC port (0: the rpc port)"
    ),
    Setting("kvcm.service.admin_http_port", "admin_http_port", _port, "AdminService HTTP port"),
    Setting("kvcm.service.enable_debug_service", "enable_debug_service", _bool, "serve the DebugService"),
    Setting("kvsim.data_dir", "data_dir", lambda t: Path(t.strip()), "data folder (store, storage, logs)"),
    Setting("kvsim.meta_store", "meta_store", str.strip, "sqlite, memory or redis://[auth@]host:port?..."),
    Setting("kvsim.storage_backend", "storage_backend", _backend, "real (files, 3FS, Mooncake) or simulated"),
    Setting("kvcm.startup_config", "startup_config", str.strip, "startup JSON (empty: built-in default)"),
    Setting(
        "kvcm.logger.log_level", "log_level", _level, "0 auto, 1 fatal, 2 error, 3 warn, 4 info, 5 debug"
    ),
    Setting("kvcm.leader_elector.node_id", "node_id", str.strip, "node id (default: host name)"),
    Setting("kvsim.seed", "seed", _seed, "seed of session and location ids (default: random)"),
    Setting("kvsim.poll_interval_ms", "poll_interval_s", _positive_ms, "period of the cache's poll"),
    Setting("kvsim.max_body_bytes", "max_body_bytes", _positive_int, "largest request body or message"),
    Setting("kvsim.shutdown_grace_ms", "shutdown_grace_s", _positive_ms, "drain time after SIGTERM"),
    Setting(
        "kvcm.distributed_lock.uri",
        "distributed_lock_uri",
        str.strip,
        "leader lock: memory:// (one node), file:///dir or redis://host:port (default: a Redis meta store)",
    ),
    Setting("kvcm.leader_elector.lease_ms", "lease_s", _positive_ms, "leader lease"),
    Setting("kvcm.leader_elector.loop_interval_ms", "loop_interval_s", _positive_ms, "election loop period"),
    Setting("kvsim.log_max_bytes", "log_max_bytes", _non_negative_int, "rotate access/event logs (0: never)"),
    Setting("kvsim.log_backups", "log_backups", _positive_int, "rotated log files kept (>= 1)"),
    Setting("kvsim.event_log", "event_log", _bool, "write the event log (event_publisher.log)"),
    Setting("kvsim.admin_token", "admin_token", str.strip, "bearer token of the admin and debug services"),
    Setting("kvsim.tls_cert", "tls_cert", str.strip, "PEM certificate chain: serve gRPC and HTTP over TLS"),
    Setting("kvsim.tls_key", "tls_key", str.strip, "PEM private key of --tls-cert"),
    Setting("kvsim.max_keys_per_request", "max_keys_per_request", _positive_int, "most items per list field"),
    Setting(
        "kvsim.max_concurrent_streams",
        "max_concurrent_streams",
        _positive_int,
        "gRPC calls at once on one connection (HTTP/2 setting)",
    ),
    Setting("kvsim.max_in_flight", "max_in_flight", _positive_int, "requests handled at once per listener"),
    Setting("kvsim.kv_rpc_port", "kv_rpc_port", _optional_port, "KV meta gRPC port (unset: off)"),
    Setting("kvsim.kv_http_port", "kv_http_port", _optional_port, "KV meta HTTP port (unset: off)"),
    Setting(
        "kvsim.kv_value_size_bytes",
        "kv_value_size_bytes",
        _positive_int,
        "bytes per value of a KV instance whose user_data names no value_size_bytes",
    ),
    Setting(
        "kvsim.storage_probe_period_ms",
        "storage_probe_period_s",
        _non_negative_ms,
        "probe every storage this often (0: never; health and usage then come from accounting only)",
    ),
    Setting(
        "kvsim.storage_probe_timeout_ms",
        "storage_probe_timeout_s",
        _positive_ms,
        "a probe that takes longer has failed",
    ),
    Setting(
        "kvsim.storage_fail_after",
        "storage_fail_after",
        _positive_int,
        "failed probes that take a storage out",
    ),
    Setting(
        "kvsim.storage_recover_after",
        "storage_recover_after",
        _positive_int,
        "good probes that bring a storage back",
    ),
    Setting(
        "kvsim.storage_high_water",
        "storage_high_water",
        _fraction,
        "usage ratio at which writes skip a storage",
    ),
    Setting(
        "kvsim.storage_reclaim_water",
        "storage_reclaim_water",
        _fraction,
        "usage ratio above which blocks on a storage are reclaimed",
    ),
)
SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}

#: Reference keys kvsim accepts but does not act on yet (later issues: HA, metrics reporters).
IGNORED_REFERENCE_KEYS = frozenset(
    {
        "kvcm.registry_storage.uri",
        "kvcm.service.io_thread_num",
        "kvcm.schedule_plan_executor_thread_count",
        "kvcm.metrics.reporter_type",
        "kvcm.metrics.reporter_config",
        "kvcm.metrics.report_interval_ms",
        "kvcm.event.event_publishers_configs",
    }
)


def env_name(key: str) -> str:
    """The UPPER_SNAKE environment variable of a dotted key: ``kvcm.service.rpc_port`` ->
    ``KVCM_SERVICE_RPC_PORT``."""
    return key.replace(".", "_").upper()


def known_keys() -> list[str]:
    """Every dotted key a config file or the environment may set."""
    return [s.key for s in SETTINGS] + sorted(IGNORED_REFERENCE_KEYS)


def read_config_file(path: Path) -> dict[str, str]:
    """The ``key=value`` lines of a config file (``#`` starts a comment line; blank lines are skipped).

    Raises:
        ConfigError: the file cannot be read or a line has no ``=``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--config {path}:{number}: expected key=value, got {raw.strip()!r}")
        values[key.strip()] = value.strip()
    return values


def _apply(layer: Mapping[str, str], source: str, out: dict[str, Any]) -> None:
    for key, text in layer.items():
        setting = SETTINGS_BY_KEY.get(key)
        if setting is None:
            if key in IGNORED_REFERENCE_KEYS:
                logger.warning("%s: %s is not used by kvsim serve yet; ignored", source, key)
            else:
                logger.warning("%s: unknown key %s ignored", source, key)
            continue
        try:
            out[setting.attr] = setting.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}={text!r}: {exc}") from None


def resolve_settings(
    file_values: Mapping[str, str] | None = None,
    env_values: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServeSettings:
    """Merge the layers, lowest first: defaults, config file, environment, flags.

    Args:
        file_values: dotted key -> text, from :func:`read_config_file`.
        env_values: dotted key -> text, from the environment (already resolved to dotted keys).
        flags: ``ServeSettings`` field -> value, only for flags the user gave (None values are skipped).

    Raises:
        ConfigError: a value does not parse, or the ports clash.
    """
    values: dict[str, Any] = {}
    _apply(file_values or {}, "config file", values)
    _apply(env_values or {}, "environment", values)
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    settings = ServeSettings(**values)
    check(settings)
    return settings


def probe_settings(settings: ServeSettings) -> ProbeSettings | None:
    """The cache's storage-probe settings (None when ``storage_probe_period_s`` is 0: no probing).

    Raises:
        CacheError: INVALID_ARGUMENT for an out-of-range value (:func:`check` turns it into a ConfigError).
    """
    if not settings.storage_probe_period_s:
        return None
    return ProbeSettings(
        period_s=settings.storage_probe_period_s,
        fail_after=settings.storage_fail_after,
        recover_after=settings.storage_recover_after,
        high_water=settings.storage_high_water,
        reclaim_water=settings.storage_reclaim_water,
    )


def check(settings: ServeSettings) -> None:
    """Refuse port layouts that cannot work.

    Raises:
        ConfigError: a port out of range; two HTTP servers or a gRPC and an HTTP server on one non-zero
            port; a TLS certificate without its key or the reverse; a KV value size <= 0.
    """
    # Flags arrive as ints without the file/environment parsers, so the range is checked here for all.
    for name in ("rpc_port", "http_port", "admin_rpc_port", "admin_http_port", "kv_rpc_port", "kv_http_port"):
        port = getattr(settings, name)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{name} {port} is not a port (0..65535; 0 means any free port)")
    ports: dict[int, str] = {}
    named = [
        ("rpc_port", settings.rpc_port),
        ("http_port", settings.http_port),
        ("admin_http_port", settings.admin_http_port),
    ]
    if not settings.shared_admin_rpc:
        named.append(("admin_rpc_port", settings.admin_rpc_port))
    if settings.enable_debug_service and settings.http_port:
        named.append(("debug http port (http_port + 3000)", settings.debug_http_port))
    named.extend((name, getattr(settings, name)) for name in ("kv_rpc_port", "kv_http_port"))
    for name, port in named:
        if port and port in ports:
            raise ConfigError(f"{name} {port} is already used by {ports[port]}")
        if port:
            ports[port] = name
    if not settings.kv_value_size_bytes > 0:
        raise ConfigError(f"kv_value_size_bytes: must be > 0, got {settings.kv_value_size_bytes}")
    if settings.enable_debug_service and settings.debug_http_port > 65535:
        raise ConfigError(f"http_port {settings.http_port}: the debug port http_port + 3000 is past 65535")
    if settings.storage_probe_period_s:
        try:
            probe_settings(settings)
        except CacheError as exc:
            raise ConfigError(exc.message) from None
    elif settings.storage_probe_period_s < 0:
        raise ConfigError(f"storage_probe_period_s: must be >= 0, got {settings.storage_probe_period_s:g}")
    if not settings.storage_probe_timeout_s > 0:
        raise ConfigError(f"storage_probe_timeout_s: must be > 0, got {settings.storage_probe_timeout_s:g}")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both files or neither")
    if settings.loop_interval_s * 4 > settings.lease_s:
        # The leader renews every loop interval and stops serving one interval before its lease ends, so
        # a lease shorter than four intervals would not survive a single failed renewal.
        raise ConfigError(
            f"kvcm.leader_elector.loop_interval_ms {settings.loop_interval_s * 1000:g} must be at most a "
            f"quarter of kvcm.leader_elector.lease_ms {settings.lease_s * 1000:g}"
        )
