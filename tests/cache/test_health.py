"""Storage status: probe settings, the hysteresis, each backend's probe, and what the manager does with
the results (unavailable storages skipped by writes and reads, high water, per-storage reclaim,
operator overrides, metrics)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kvsim.cache import (
    BlockMask,
    CacheError,
    CacheManager,
    ErrorCode,
    MooncakeStorageSpec,
    NfsStorageSpec,
    SimulatedBackend,
    StorageConfig,
    default_instance_group,
)
from kvsim.cache.backends import FileBackend, MooncakeBackend, real_backend_factory
from kvsim.cache.health import ProbeResult, ProbeSettings, StorageHealth, excess_bytes
from kvsim.core import FixedTimer, ManualClock

from .conftest import T0, finish, make_manager, prefix, register, start, uris, write

SPEC = 4096  # bytes per block (one spec)


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"period_s": 0}, "storage_probe.period_s: must be a finite number > 0, got 0"),
        ({"period_s": float("inf")}, "storage_probe.period_s: must be a finite number > 0, got inf"),
        ({"fail_after": 0}, "storage_probe.fail_after: must be an integer in 1..1000, got 0"),
        ({"recover_after": 1001}, "storage_probe.recover_after: must be an integer in 1..1000, got 1001"),
        ({"high_water": 1.5}, "storage_probe.high_water: must be a number in (0, 1], got 1.5"),
        ({"reclaim_water": 0}, "storage_probe.reclaim_water: must be a number in (0, 1], got 0"),
        (
            {"high_water": 0.8, "reclaim_water": 0.9},
            "storage_probe.reclaim_water: must be <= high_water 0.8, got 0.9",
        ),
        ({"probe_bytes": 0}, "storage_probe.probe_bytes: must be an integer in 1..1048576, got 0"),
    ],
)
def test_probe_settings_out_of_range(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CacheError) as err:
        ProbeSettings(**changes)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    assert message in str(err.value)


def test_hysteresis_counts_streaks() -> None:
    health = StorageHealth(fail_after=2, recover_after=3)
    bad, good = ProbeResult(False, error="x"), ProbeResult(True)
    assert [health.record(r) for r in (bad, good, bad, bad)] == [False, False, False, True]
    assert not health.healthy and health.failures == 2
    assert [health.record(r) for r in (good, good, bad, good, good, good)] == [
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert health.healthy and health.successes == 3 and health.probes == 10
    health.record(bad)
    health.record(bad)
    assert not health.healthy
    assert health.force_healthy() is True
    assert health.healthy and health.failures == 0
    assert health.force_healthy() is False


def test_excess_bytes() -> None:
    assert excess_bytes(95, 100, 0.9) == 5
    assert excess_bytes(90, 100, 0.9) == 0
    assert excess_bytes(50, 0, 0.9) == 0
    assert ProbeResult(True, used_bytes=3, total_bytes=4).usage_ratio == 0.75
    assert ProbeResult(True, used_bytes=3, total_bytes=0).usage_ratio is None


# ------------------------------------------------------------------------------------------ backends


class FakeStatvfs:
    """``os.statvfs`` of a filesystem of ``blocks`` 4-KiB blocks with ``free`` of them free (none
    reserved for root), for paths under ``under`` (all paths when None)."""

    def __init__(self, blocks: int, free: int, under: Path | None = None) -> None:
        self.blocks = blocks
        self.free = free
        self.under = under
        self.real = os.statvfs

    def __call__(self, path: Any) -> Any:
        st = self.real(path)
        if self.under is not None and not str(path).startswith(str(self.under)):
            return st
        fields = {
            "f_frsize": 4096,
            "f_blocks": self.blocks,
            "f_bfree": self.free,
            "f_bavail": self.free,
        }
        return type(
            "StatResult", (), {**{f: getattr(st, f) for f in dir(st) if f.startswith("f_")}, **fields}
        )


@pytest.fixture(autouse=True)
def roomy_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every filesystem looks 10 % full unless a test says otherwise, so the host's disk never matters."""
    monkeypatch.setattr(os, "statvfs", FakeStatvfs(blocks=1000, free=900))


def nfs(root: Path, name: str) -> StorageConfig:
    return StorageConfig(name, NfsStorageSpec(f"{root}/", 1))


def test_file_probe_round_trip_and_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FileBackend(nfs(tmp_path / "a", "nfs_a"))
    monkeypatch.setattr(os, "statvfs", FakeStatvfs(blocks=1000, free=250))
    result = backend.probe(FixedTimer(step=0.002), 4096)
    assert result == ProbeResult(True, 0.002, 750 * 4096, 1000 * 4096, "")
    assert result.usage_ratio == 0.75
    assert os.listdir(tmp_path / "a") == []  # the probe file is gone

    shutil.rmtree(tmp_path / "a")
    gone = backend.probe(FixedTimer(step=0.002), 4096)
    assert not gone.ok and gone.error == f"storage 'nfs_a': root '{tmp_path}/a/' does not exist"


def test_file_probe_fails_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FileBackend(nfs(tmp_path / "a", "nfs_a"))

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    result = backend.probe(FixedTimer(step=0.5), 16)
    assert not result.ok
    assert result.latency_s == 0.5
    assert result.error.endswith(": No space left on device")
    assert os.listdir(tmp_path / "a") == []


class FakeMooncake:
    def __init__(self, answer: int | Exception) -> None:
        self.answer = answer

    def is_exist(self, key: str) -> int:
        assert key == "__kvsim_probe__"
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def remove(self, key: str) -> int:
        return 0

    def close(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("answer", "ok", "error"),
    [
        (0, True, ""),
        (1, True, ""),
        (-1, False, "storage 'mc': master answered -1"),
        (RuntimeError("connection refused"), False, "storage 'mc': connection refused"),
    ],
)
def test_mooncake_probe_asks_the_master(answer: int | Exception, ok: bool, error: str) -> None:
    config = StorageConfig("mc", MooncakeStorageSpec(master_service_entry="m:1"))
    backend = MooncakeBackend(config, client_factory=lambda spec: FakeMooncake(answer))
    result = backend.probe(FixedTimer(step=0.001), 64)
    assert (result.ok, result.error) == (ok, error)


def test_simulated_probe_follows_its_fault_model() -> None:
    backend = SimulatedBackend(nfs(Path("/sim"), "sim"), capacity_bytes=8192)
    backend.create(["a"], 4096)
    assert backend.probe(FixedTimer(), 64) == ProbeResult(True, 0.0, 4096, 8192)
    backend.set_down(True)
    assert backend.probe(FixedTimer(), 64) == ProbeResult(
        False, error="storage 'sim' is down: scripted outage"
    )
    with pytest.raises(Exception, match="is down"):
        backend.create(["b"], 4096)
    backend.set_down(False)
    assert backend.probe(FixedTimer(), 64).ok


# ------------------------------------------------------------------------------------------ manager


def two_storages(
    tmp_path: Path, clock: ManualClock, settings: ProbeSettings, **kwargs: Any
) -> tuple[CacheManager, Path, Path]:
    """A manager over two real NFS roots, ``nfs_a`` first in the group's candidates, one instance."""
    mgr = make_manager(
        clock, backend_factory=real_backend_factory(), defaults=False, storage_probe=settings, **kwargs
    )
    a, b = tmp_path / "a", tmp_path / "b"
    mgr.add_storage(nfs(a, "nfs_a"))
    mgr.add_storage(nfs(b, "nfs_b"))
    group = default_instance_group()
    assert group.cache_config is not None
    cc = dataclasses.replace(
        group.cache_config,
        reclaim_strategy=dataclasses.replace(group.cache_config.reclaim_strategy, delay_before_delete_ms=0),
    )
    mgr.create_instance_group(
        dataclasses.replace(group, storage_candidates=("nfs_a", "nfs_b"), cache_config=cc)
    )
    register(mgr, specs=(("tp0", SPEC),))
    return mgr, a, b


def storage_of(mgr: CacheManager, keys: list[int]) -> list[str]:
    res = start(mgr, keys)
    finish(mgr, res.write_session_id, BlockMask(offset=len(res.locations)))
    return sorted({u.split("/")[2] for loc in uris(res.locations) for u in loc})


def test_unwritable_storage_stops_receiving_writes_within_one_period_and_recovers(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = ProbeSettings(period_s=5.0, fail_after=1, recover_after=2)
    mgr, a, _ = two_storages(tmp_path, clock, settings, timer=FixedTimer(step=0.001))
    assert mgr.poll().storage_health_changes == 0
    assert storage_of(mgr, [1, 2]) == ["nfs_a"]
    assert uris(prefix(mgr, [1, 2]))[0][0].startswith("file://nfs_a/")

    shutil.rmtree(a)  # the mount went away
    clock.advance(5.0)
    assert mgr.poll().storage_health_changes == 1
    status = mgr.storage_status()["nfs_a"]
    assert (status.available, status.healthy, status.enabled) == (False, False, True)
    assert status.last_error == f"storage 'nfs_a': root '{a}/' does not exist"
    assert storage_of(mgr, [3]) == ["nfs_b"]
    assert prefix(mgr, [1, 2]) == ()  # its locations are not handed out
    m = mgr.metrics()
    assert m.value("data_storage.healthy_status", type="file", unique_name="nfs_a") == 0.0
    assert m.value("data_storage.healthy_status", type="file", unique_name="nfs_b") == 1.0
    assert m.value("data_storage.probe_fail_counter", type="file", unique_name="nfs_a") == 1
    assert m.value("data_storage.probe_counter", type="file", unique_name="nfs_a") == 2

    a.mkdir()  # back; two good probes are needed
    clock.advance(5.0)
    assert mgr.poll().storage_health_changes == 0
    assert prefix(mgr, [1, 2]) == ()
    clock.advance(4.0)
    mgr.poll()  # not a period yet: no probe
    assert mgr.storage_status()["nfs_a"].probes == 3
    clock.advance(1.0)
    assert mgr.poll().storage_health_changes == 1
    assert len(prefix(mgr, [1, 2])) == 2
    assert storage_of(mgr, [4]) == ["nfs_a"]
    assert mgr.metrics().value("data_storage.became_healthy_counter", type="file", unique_name="nfs_a") == 1


def test_operator_overrides(tmp_path: Path, clock: ManualClock) -> None:
    settings = ProbeSettings(period_s=1.0, fail_after=2, recover_after=2)
    mgr, a, _ = two_storages(tmp_path, clock, settings)
    mgr.disable_storage("nfs_a")  # healthy by its probes, but the operator keeps it out
    mgr.poll()
    assert storage_of(mgr, [1]) == ["nfs_b"]
    mgr.enable_storage("nfs_a")
    shutil.rmtree(a)
    for _ in range(2):
        clock.advance(1.0)
        mgr.poll()
    assert not mgr.storage_status()["nfs_a"].available
    mgr.enable_storage("nfs_a")  # the operator vouches for it: back at once
    assert mgr.storage_status()["nfs_a"].available
    a.mkdir()
    assert storage_of(mgr, [2]) == ["nfs_a"]


def test_a_prober_that_raises_has_failed(tmp_path: Path, clock: ManualClock) -> None:
    def broken(backend: Any) -> ProbeResult:
        raise RuntimeError("boom")

    mgr, _, _ = two_storages(tmp_path, clock, ProbeSettings(fail_after=1), prober=broken)
    assert mgr.poll().storage_health_changes == 2
    status = mgr.storage_status()["nfs_b"]
    assert status.last_error == "storage 'nfs_b': probe raised RuntimeError('boom')"
    with pytest.raises(CacheError, match=r"all storages of instance group .default. are unavailable"):
        start(mgr, [1])


def test_filling_directory_stops_writes_and_triggers_reclaim(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ProbeSettings(period_s=1.0, high_water=0.95, reclaim_water=0.80)
    mgr, a, _ = two_storages(tmp_path, clock, settings)
    write(mgr, list(range(1, 41)))  # 40 blocks of 4 KiB on nfs_a
    assert storage_of(mgr, [100]) == ["nfs_a"]

    fs = FakeStatvfs(blocks=100, free=50, under=a)  # half full: nothing happens
    monkeypatch.setattr(os, "statvfs", fs)
    clock.advance(1.0)
    assert mgr.poll().reclaimed_locations == 0
    assert mgr.storage_usage_ratio("nfs_a") == 0.5

    fs.free = 4  # 96 % full: above the high water and the reclaim level
    clock.advance(1.0)
    result = mgr.poll()
    assert mgr.storage_status()["nfs_a"].at_high_water
    assert mgr.storage_usage_ratio("nfs_a") == 0.96
    # 96 of 100 blocks used, 80 may stay: 16 blocks of 4 KiB, all kvsim's, are reclaimed (LRU first).
    assert result.reclaimed_locations == 16
    assert storage_of(mgr, [101]) == ["nfs_b"]
    assert mgr.metrics().value("data_storage.storage_usage_ratio", type="file", unique_name="nfs_a") == 0.96
    assert [k for k in range(1, 41) if prefix(mgr, [k])] == list(range(17, 41))
    assert mgr.metrics().value("cache_reclaimer.storage_trigger_count", instance_group="default") == 1

    # The next reclaim rounds do not take more until a new probe says so.
    clock.advance(0.5)
    assert mgr.poll().reclaimed_locations == 0
    fs.free = 30
    clock.advance(0.5)
    assert mgr.poll().reclaimed_locations == 0
    assert not mgr.storage_status()["nfs_a"].at_high_water
    assert storage_of(mgr, [102]) == ["nfs_a"]


def test_every_storage_at_high_water_refuses_the_write(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr, _, _ = two_storages(tmp_path, clock, ProbeSettings(high_water=0.9, reclaim_water=0.9))
    monkeypatch.setattr(os, "statvfs", FakeStatvfs(blocks=10, free=0))
    mgr.poll()
    with pytest.raises(CacheError) as err:
        start(mgr, [1])
    assert err.value.code == ErrorCode.INTERNAL_ERROR
    assert "every available storage ('nfs_a', 'nfs_b') is at its high-water mark 0.9" in str(err.value)


def test_accounting_usage_counts_without_probes_of_the_filesystem(clock: ManualClock) -> None:
    def factory(config: StorageConfig) -> SimulatedBackend:
        return SimulatedBackend(config, capacity_bytes=10 * SPEC)

    mgr = make_manager(
        clock, backend_factory=factory, storage_probe=ProbeSettings(high_water=0.5, reclaim_water=0.5)
    )
    register(mgr, specs=(("tp0", SPEC),))
    write(mgr, [1, 2, 3, 4, 5])
    assert mgr.storage_usage_ratio("nfs_01") == 0.5
    with pytest.raises(CacheError, match=r"high-water mark 0\.5"):
        start(mgr, [6])


def test_probes_set_the_next_deadline(clock: ManualClock) -> None:
    mgr = make_manager(clock, storage_probe=ProbeSettings(period_s=2.0))
    assert mgr.next_deadline() == float("-inf")
    mgr.poll()
    assert mgr.next_deadline() == T0 + 2.0
    assert make_manager(ManualClock(T0)).next_deadline() is None


def test_without_probe_settings_nothing_is_probed(clock: ManualClock) -> None:
    calls: list[str] = []

    def prober(backend: Any) -> ProbeResult:
        calls.append(backend.name)
        return ProbeResult(False)

    mgr = make_manager(clock, prober=prober)
    clock.advance(100.0)
    mgr.poll()
    assert calls == []
    assert mgr.storage_status()["nfs_01"].available


def test_an_unavailable_storage_outside_the_candidates_is_not_read(
    tmp_path: Path, clock: ManualClock
) -> None:
    mgr, a, _ = two_storages(tmp_path, clock, ProbeSettings(period_s=1.0))
    write(mgr, [1])
    group = mgr.get_instance_group("default")
    mgr.update_instance_group(dataclasses.replace(group, storage_candidates=("nfs_b",), version=1), 0)
    assert len(prefix(mgr, [1])) == 1  # still on nfs_a, which is up
    shutil.rmtree(a)
    clock.advance(1.0)
    mgr.poll()
    assert prefix(mgr, [1]) == ()
