"""Connector settings read from an engine's extra-config dict, and the page-hash keys of SGLang.

Both engine adapters take their settings from one JSON object the engine passes through untouched
(SGLang: ``--hicache-storage-backend-extra-config``; vLLM: ``kv_connector_extra_config``):

=========================  =======================  =====================================================
key                        default                  meaning
=========================  =======================  =====================================================
``manager_address``        (required)               meta-service address(es): ``http://host:6382``,
                                                    ``grpc://host:6381``, or a list for failover
                                                    (``manager_uri``, the reference's name, also works)
``instance_group``         ``default``              the instance group to register in
``instance_id``            derived from the model   the instance id
``write_timeout_seconds``  30                       life of a write session on the server
``rpc_timeout_s``          5                        deadline of one RPC attempt
``rpc_retries``            2                        retries of an RPC that never reached the server
``transfer_threads``       8                        I/O threads
``get_timeout_s``          5                        deadline of one load call
``put_timeout_s``          10                       deadline of one save call
``fsync``                  ``none``                 ``none``, ``data`` or ``full``
``checksums``              false                    CRC32 per block, verified on load
``mounts``                 ``{}``                   storage name -> local directory of its root
=========================  =======================  =====================================================

Other keys are left to the adapters (and to the engines, whose own keys share the object).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvsim.cache import RegisterInstanceRequest
from kvsim.connectors.errors import ConnectorError
from kvsim.connectors.lifecycle import ManagerConnection, parse_address
from kvsim.connectors.transfer import FSYNC_POLICIES, TransferClient


def page_key(page_hash: str) -> int:
    """The int64 block key of an SGLang page hash: the first 8 bytes of its SHA-256, big-endian, signed.

    SGLang's page hashes are already chained (each covers the whole prefix up to its page), so the key of a
    page identifies its prefix, as KVCM keys must. This is the reference SGLang connector's scheme.
    """
    return int.from_bytes(hashlib.sha256(page_hash.encode("utf-8")).digest()[:8], "big", signed=True)


def _get(extra: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = extra.get(key, default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool | int):
            return bool(value)
        raise ConnectorError(f"extra config {key!r}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConnectorError(f"extra config {key!r}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConnectorError(f"extra config {key!r}: expected a number, got {value!r}") from None
        if kind is int and number != float(value):
            raise ConnectorError(f"extra config {key!r}: expected an integer, got {value!r}")
        return number
    if not isinstance(value, kind):
        raise ConnectorError(f"extra config {key!r}: expected {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """The shared connector settings (see the module docstring)."""

    addresses: tuple[str, ...]
    instance_group: str = "default"
    instance_id: str = ""
    write_timeout_s: int = 30
    rpc_timeout_s: float = 5.0
    rpc_retries: int = 2
    threads: int = 8
    get_timeout_s: float = 5.0
    put_timeout_s: float = 10.0
    fsync: str = "none"
    checksums: bool = False
    mounts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ConnectorConfig:
        """Read the settings from an engine's extra-config dict.

        Raises:
            ConnectorError: no manager address, or a value of the wrong type or range.
        """
        extra = dict(extra or {})
        raw = extra.get("manager_address", extra.get("manager_addresses", extra.get("manager_uri")))
        if raw is None:
            raise ConnectorError(
                'extra config: manager_address is required (e.g. "http://127.0.0.1:6382" or a list)'
            )
        addresses = (raw,) if isinstance(raw, str) else tuple(raw)
        if not addresses or not all(isinstance(a, str) for a in addresses):
            raise ConnectorError(
                f"extra config manager_address: expected a string or a list of them, got {raw!r}"
            )
        for address in addresses:
            parse_address(address)
        fsync = _get(extra, "fsync", str, "none")
        if fsync not in FSYNC_POLICIES:
            known = ", ".join(FSYNC_POLICIES)
            raise ConnectorError(f"extra config 'fsync': expected one of {known}, got {fsync!r}")
        mounts = _get(extra, "mounts", dict, {})
        config = cls(
            addresses=addresses,
            instance_group=_get(extra, "instance_group", str, "default"),
            instance_id=_get(extra, "instance_id", str, ""),
            write_timeout_s=_get(extra, "write_timeout_seconds", int, 30),
            rpc_timeout_s=_get(extra, "rpc_timeout_s", float, 5.0),
            rpc_retries=_get(extra, "rpc_retries", int, 2),
            threads=_get(extra, "transfer_threads", int, 8),
            get_timeout_s=_get(extra, "get_timeout_s", float, 5.0),
            put_timeout_s=_get(extra, "put_timeout_s", float, 10.0),
            fsync=fsync,
            checksums=_get(extra, "checksums", bool, False),
            mounts={str(k): str(v) for k, v in mounts.items()},
        )
        if config.write_timeout_s < 1 or config.rpc_timeout_s <= 0 or config.rpc_retries < 0:
            raise ConnectorError(
                "extra config: need write_timeout_seconds >= 1, rpc_timeout_s > 0, rpc_retries >= 0"
            )
        if config.threads < 1 or config.get_timeout_s <= 0 or config.put_timeout_s <= 0:
            raise ConnectorError(
                "extra config: need transfer_threads >= 1, get_timeout_s > 0 and put_timeout_s > 0"
            )
        return config

    def connection(self, registration: RegisterInstanceRequest, **kwargs: Any) -> ManagerConnection:
        """A :class:`ManagerConnection` with these addresses and RPC settings."""
        return ManagerConnection(
            list(self.addresses),
            registration,
            timeout_s=self.rpc_timeout_s,
            retries=self.rpc_retries,
            **kwargs,
        )

    def transfer(self, storage_configs: str, **kwargs: Any) -> TransferClient:
        """A :class:`TransferClient` with these I/O settings."""
        return TransferClient(
            storage_configs,
            threads=self.threads,
            get_timeout_s=self.get_timeout_s,
            put_timeout_s=self.put_timeout_s,
            fsync=self.fsync,  # type: ignore[arg-type]
            checksums=self.checksums,
            mounts=self.mounts,
            **kwargs,
        )


__all__ = ["ConnectorConfig", "page_key"]
