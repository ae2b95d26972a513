"""Storage status in a running server: the probe settings, the deadline prober, and a real file storage
whose directory disappears and comes back while ``kvsim serve``'s poll probes it (GetMetrics and
``GET /metrics`` report health and usage; writes stop and resume by themselves)."""

from __future__ import annotations

import dataclasses
import http.client
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    CacheError,
    LocationSpecInfo,
    ModelDeployment,
    RegisterInstanceRequest,
    StartWriteCacheRequest,
)
from kvsim.cache.health import ProbeResult, ProbeSettings
from kvsim.cache.store import MemoryStore
from kvsim.core import ConfigError, WallClock
from kvsim.serve.client import CacheClient
from kvsim.serve.config import probe_settings, resolve_settings
from kvsim.serve.probes import DeadlineProber
from kvsim.serve.server import ServerThread, build_cache
from kvsim.serve.service import KvcmService

from .conftest import make_settings


def test_probe_settings_from_the_config_layers() -> None:
    settings = resolve_settings(
        {"kvsim.storage_probe_period_ms": "250", "kvsim.storage_high_water": "0.9"},
        {"kvsim.storage_recover_after": "5"},
        {"storage_fail_after": 2},
    )
    assert probe_settings(settings) == ProbeSettings(
        period_s=0.25, fail_after=2, recover_after=5, high_water=0.9, reclaim_water=0.9
    )
    assert probe_settings(resolve_settings({"kvsim.storage_probe_period_ms": "0"})) is None
    assert probe_settings(resolve_settings()) == ProbeSettings(period_s=5.0)


@pytest.mark.parametrize(
    ("file_values", "flags", "message"),
    [
        (
            {"kvsim.storage_high_water": "1.5"},
            {},
            "kvsim.storage_high_water='1.5': must be a fraction in (0, 1]",
        ),
        ({"kvsim.storage_fail_after": "0"}, {}, "kvsim.storage_fail_after='0': must be > 0, got 0"),
        ({"kvsim.storage_probe_period_ms": "-5"}, {}, "must be a finite number >= 0, got -5"),
        (
            {"kvsim.storage_reclaim_water": "0.99"},
            {},
            "storage_probe.reclaim_water: must be <= high_water 0.95, got 0.99",
        ),
        ({}, {"storage_recover_after": 5000}, "storage_probe.recover_after: must be an integer in 1..1000"),
        ({}, {"storage_probe_timeout_s": 0.0}, "storage_probe_timeout_s: must be > 0, got 0"),
    ],
)
def test_bad_probe_settings_are_one_line_errors(
    file_values: dict[str, str], flags: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_settings(file_values, None, flags)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


class SlowBackend:
    """A backend whose probe blocks until released."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def probe(self, timer: Any, probe_bytes: int) -> ProbeResult:
        self.release.wait(10)
        return ProbeResult(True, 0.5)


def test_deadline_prober_fails_a_hung_probe_and_does_not_pile_up() -> None:
    prober = DeadlineProber(0.05)
    backend = SlowBackend()
    try:
        late = prober(backend)  # type: ignore[arg-type]
        assert late == ProbeResult(False, 0.05, error="storage 'slow': probe did not answer within 0.05 s")
        stuck = prober(backend)  # type: ignore[arg-type]
        assert stuck.error == "storage 'slow': an earlier probe has not returned yet (hung storage?)"
        backend.release.set()
        deadline = time.monotonic() + 5
        while True:
            result = prober(backend)  # type: ignore[arg-type]
            if result.ok or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert result == ProbeResult(True, 0.5)
    finally:
        backend.release.set()
    with pytest.raises(ValueError, match="timeout_s: must be > 0"):
        DeadlineProber(0)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> float:
    """Poll ``check`` until it holds; return the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def scrape(host: str, port: int) -> str:
    """``GET /metrics`` of the admin HTTP port."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode("utf-8")
    finally:
        conn.close()


def storage_gauges(client: CacheClient) -> dict[str, float]:
    values = {}
    for metric in client.get_metrics().metrics:  # type: ignore[attr-defined]
        tags = {t.tag_key: t.tag_value for t in metric.metric_tags}
        if tags.get("unique_name") == "nfs_01" and metric.metric_name.startswith("data_storage."):
            value = metric.metric_value
            values[metric.metric_name] = (
                value.float_value if value.HasField("float_value") else value.int_value
            )
    return values


def test_a_vanished_directory_stops_writes_within_one_period_and_recovers(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        storage_backend="real",
        poll_interval_s=0.02,
        storage_probe_period_s=0.2,
        storage_recover_after=2,
    )
    mgr = build_cache(settings, clock=WallClock(), store=MemoryStore())
    root = tmp_path / "nfs"
    with ServerThread(KvcmService(mgr, clock=mgr.clock), settings) as thread:
        ep = thread.endpoints
        assert ep is not None
        with CacheClient.grpc(ep.host, ep.rpc_port, ep.admin_rpc_port) as client:
            client.register_instance(
                RegisterInstanceRequest(
                    instance_group="default",
                    instance_id="i1",
                    block_size=16,
                    location_spec_infos=(LocationSpecInfo("tp0", 4096),),
                    model_deployment=ModelDeployment(model_name="m", dtype="bf16"),
                )
            )
            wait_for(
                "a first probe", lambda: storage_gauges(client).get("data_storage.probe_counter", 0) >= 1
            )
            gauges = storage_gauges(client)
            assert gauges["data_storage.healthy_status"] == 1.0
            assert 0.0 < gauges["data_storage.storage_usage_ratio"] < 1.0  # the real disk's figure
            assert gauges["data_storage.probe_latency_us"] > 0.0
            text = scrape(ep.host, ep.admin_http_port)
            assert 'kvcm_data_storage_healthy_status{type="file",unique_name="nfs_01"} 1' in text
            assert 'kvcm_data_storage_storage_usage_ratio{type="file",unique_name="nfs_01"} 0.' in text

            def write(key: int) -> bool:
                try:
                    client.start_write_cache(StartWriteCacheRequest(instance_id="i1", block_keys=[key]))
                except CacheError:
                    return False
                return True

            assert write(1)
            shutil.rmtree(root)  # the mount went away
            assert not write(2)  # the backend never makes its root again
            took = wait_for(
                "the storage to be taken out",
                lambda: storage_gauges(client)["data_storage.healthy_status"] == 0.0,
            )
            assert took < 0.2 + 0.5  # one probe period (plus scheduling slack)
            with pytest.raises(CacheError, match="are unavailable"):
                client.start_write_cache(StartWriteCacheRequest(instance_id="i1", block_keys=[3]))

            root.mkdir()
            wait_for("the storage to come back", lambda: write(4))
            assert storage_gauges(client)["data_storage.healthy_status"] == 1.0
            assert storage_gauges(client)["data_storage.became_healthy_counter"] == 1.0


def test_settings_default_to_probing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert dataclasses.asdict(settings)["storage_probe_period_s"] == 5.0
    mgr = build_cache(settings, clock=WallClock(), store=MemoryStore())
    mgr.poll()
    assert mgr.storage_status()["nfs_01"].probes == 1
