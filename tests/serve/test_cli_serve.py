"""``kvsim serve`` as a process: start, answer both transports, SIGTERM -> drain -> exit 0; settings from
a config file and the environment; clear errors for bad settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvsim.serve.client import connect


def kvsim(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvsim.cli.main", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_ports(proc: subprocess.Popen[str], path: Path, timeout_s: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        if proc.poll() is not None:
            raise AssertionError(f"kvsim serve exited with {proc.returncode}: {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("kvsim serve did not start in time")


def test_the_cli_module_does_not_import_grpc_or_aiohttp() -> None:
    code = "import sys, kvsim.cli.serve; print(sorted(m for m in ('grpc', 'aiohttp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_answers_both_transports_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "kvcm.conf"
    config.write_text(
        "kvcm.service.rpc_port=0\nkvcm.service.http_port=0\nkvcm.service.admin_rpc_port=0\n"
        "kvcm.service.admin_http_port=0\nkvcm.service.enable_debug_service=true\n"
    )
    data = tmp_path / "data"
    proc = kvsim(
        "serve",
        "--config",
        str(config),
        "--data-dir",
        str(data),
        "--storage-backend",
        "simulated",
        cwd=tmp_path,
        env={"KVSIM_META_STORE": "memory"},  # the environment overrides the default sqlite
    )
    try:
        ports = wait_for_ports(proc, data / "ports.json")
        assert ports["host"] == "127.0.0.1" and ports["rpc_port"] == ports["admin_rpc_port"]
        for transport in ("grpc", "http"):
            with connect(transport, "127.0.0.1", ports, timeout_s=10) as client:
                storages = client.list_storage()
                assert [s.global_unique_name for s in storages] == ["nfs_01"]
                assert storages[0].spec.root_path == str(data.resolve()) + "/nfs/"  # type: ignore[union-attr]
                client.clear_faults()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping: no new requests; draining in-flight ones" in err
    assert err.rstrip().endswith("kvsim.serve: stopped")
    lines = (data / "access.log").read_text().splitlines()
    assert [json.loads(line)["api"] for line in lines] == ["ListStorage", "ClearFaults"] * 2


def test_serve_with_no_arguments(tmp_path: Path) -> None:
    """With no arguments: loopback, the reference's ports, sqlite in ./kvsim-data."""
    for port in (6381, 6382, 6491, 6492):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use on this machine")
    proc = kvsim("serve", cwd=tmp_path)
    ports = wait_for_ports(proc, tmp_path / "kvsim-data" / "ports.json", timeout_s=30)
    try:
        assert (ports["rpc_port"], ports["http_port"], ports["admin_rpc_port"], ports["admin_http_port"]) == (
            6381,
            6382,
            6491,
            6492,
        )
        with connect("http", "127.0.0.1", ports) as client:
            assert client.check_health().is_health  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--meta-store", "mongo"], "--meta-store: meta store 'mongo': unknown kind"),
        (["--log-level", "LOUD"], "--log-level: 'LOUD' is not a log level"),
        (["--config", "missing.conf"], "--config missing.conf: No such file or directory"),
        (["--http-port", "6381"], "http_port 6381 is already used by rpc_port"),
        (["--rpc-port=-5"], "rpc_port -5 is not a port (0..65535; 0 means any free port)"),
        (["--admin-http-port", "70000"], "admin_http_port 70000 is not a port"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = kvsim("serve", *args, cwd=tmp_path)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("kvsim serve: error: ")
    assert message in err
