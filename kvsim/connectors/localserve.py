"""Run a ``kvsim serve`` process on loopback for demos, examples and tests.

    with LocalServe(tmp_dir) as server:                  # free ports, --meta-store memory, real files
        conn = ManagerConnection([server.http_address], registration)

The server is a separate process (``python -m kvsim.cli.main serve``), exactly what a deployment runs; it
binds 127.0.0.1 only, on ports the OS picks unless given, and writes its log to ``<data dir>/serve.log``
(never to a pipe that nobody reads). :meth:`LocalServe.stop` sends SIGTERM and waits for the drain;
:meth:`LocalServe.kill` is ``kill -9`` for restart tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from kvsim.connectors.errors import ConnectorError
from kvsim.serve.client import CacheClient

_PORT_KEYS = ("rpc_port", "http_port", "admin_rpc_port", "admin_http_port")


class LocalServe:
    """One ``kvsim serve`` process on loopback.

    Args:
        data_dir: the server's data folder (store, ``nfs/`` storage root, logs, ``ports.json``).
        meta_store: ``memory`` (default), ``sqlite`` or a ``redis://`` URI.
        storage_backend: ``real`` (files) or ``simulated``.
        ports: fixed ports (``rpc_port``, ``http_port``, ``admin_rpc_port``, ``admin_http_port``); missing
            ones are picked by the OS. Give the ports of a previous run to restart "the same" server.
        poll_interval_ms: how often the server expires write sessions and deletes.
        startup_config: path of a startup JSON (default: the built-in ``nfs_01`` + ``default``).
        debug_service: serve the DebugService (fault injection).
        extra_settings: more ``key=value`` settings for the config file.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        meta_store: str = "memory",
        storage_backend: str = "real",
        ports: Mapping[str, int] | None = None,
        poll_interval_ms: int = 100,
        startup_config: str | os.PathLike[str] | None = None,
        debug_service: bool = True,
        extra_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.meta_store = meta_store
        self.storage_backend = storage_backend
        self.fixed_ports = dict(ports or {})
        unknown = set(self.fixed_ports) - set(_PORT_KEYS)
        if unknown:
            raise ConnectorError(f"ports: unknown keys {sorted(unknown)} (known: {', '.join(_PORT_KEYS)})")
        self.poll_interval_ms = poll_interval_ms
        self.startup_config = startup_config
        self.debug_service = debug_service
        self.extra_settings = dict(extra_settings or {})
        self.ports: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------------------ addresses

    @property
    def http_address(self) -> str:
        """``http://127.0.0.1:<meta HTTP port>``."""
        return f"http://127.0.0.1:{self.ports['http_port']}"

    @property
    def grpc_address(self) -> str:
        """``grpc://127.0.0.1:<meta gRPC port>``."""
        return f"grpc://127.0.0.1:{self.ports['rpc_port']}"

    @property
    def storage_root(self) -> Path:
        """The root of the built-in ``nfs_01`` file storage."""
        return self.data_dir / "nfs"

    @property
    def log_path(self) -> Path:
        """Where the server's stderr goes."""
        return self.data_dir / "serve.log"

    def admin(self, transport: str = "http", **kwargs: Any) -> CacheClient:
        """A client with the admin and debug services (close it when done)."""
        if transport == "grpc":
            ports = self.ports
            return CacheClient.grpc("127.0.0.1", ports["rpc_port"], ports["admin_rpc_port"], **kwargs)
        return CacheClient.http(
            "127.0.0.1",
            self.ports["http_port"],
            self.ports["admin_http_port"],
            self.ports.get("debug_http_port"),
            **kwargs,
        )

    # ------------------------------------------------------------------------------ life cycle

    def _write_config(self) -> Path:
        lines = [f"kvcm.service.{key}={self.fixed_ports.get(key, 0)}" for key in _PORT_KEYS]
        lines.append(f"kvsim.poll_interval_ms={self.poll_interval_ms}")
        lines.append("kvsim.shutdown_grace_ms=2000")
        lines.extend(f"{k}={v}" for k, v in self.extra_settings.items())
        path = self.data_dir / "serve.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            sys.executable,
            "-m",
            "kvsim.cli.main",
            "serve",
            "--config",
            str(self._write_config()),
            "--data-dir",
            str(self.data_dir),
            "--meta-store",
            self.meta_store,
            "--storage-backend",
            self.storage_backend,
            "--host",
            "127.0.0.1",
        ]
        if self.debug_service:
            cmd.append("--enable-debug-service")
        if self.startup_config is not None:
            cmd += ["--startup-config", str(self.startup_config)]
        return cmd

    def start(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Start the process and wait until it has written ``ports.json``; returns the ports.

        Raises:
            ConnectorError: the process exited or did not come up within ``timeout_s``; the message ends
                with the tail of its log.
        """
        if self._proc is not None:
            raise ConnectorError("the server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.data_dir / "ports.json"
        ports_file.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ports_file.exists():
                text = ports_file.read_text(encoding="utf-8")
                if text.endswith("\n"):
                    self.ports = json.loads(text)
                    return self.ports
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close()
                raise ConnectorError(f"kvsim serve exited with code {code}: {self._tail()}")
            time.sleep(0.02)
        self.kill()
        raise ConnectorError(f"kvsim serve did not start within {timeout_s:g} s: {self._tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then wait for the drain (SIGKILL after ``timeout_s``); returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._close()
        return proc.returncode

    def kill(self) -> None:
        """``kill -9`` the process (a crash, for restart tests)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._close()

    def restart(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Kill the process and start it again on the same ports (a crash and a restart)."""
        self.fixed_ports = {k: int(self.ports[k]) for k in _PORT_KEYS if k in self.ports}
        self.kill()
        return self.start(timeout_s)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _close(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalServe"]
