"""Storage tiers: the packaged table, units, user tiers and strict loading."""

from __future__ import annotations

import pytest

from kvsim.core.errors import ConfigError
from kvsim.hardware.storage import (
    TIER_KEYS,
    all_storage_tiers,
    load_storage_tier,
    parse_storage_tier,
    storage_tier_names,
)


def test_packaged_tiers_load_with_sources() -> None:
    assert storage_tier_names() == ("host_dram", "nfs", "3fs", "mooncake", "hisim_disk")
    for name, tier in all_storage_tiers().items():
        assert tier.name == name
        assert tier.read_bandwidth > 0 and tier.write_bandwidth > 0
        assert tier.source, f"{name} says where its numbers come from"


def test_packaged_numbers_in_si_units() -> None:
    nfs = load_storage_tier("nfs")
    assert (nfs.read_bandwidth, nfs.write_bandwidth) == (1.1e9, 1.0e9)
    assert (nfs.read_latency_s, nfs.write_latency_s) == (1e-3, 2e-3)
    assert nfs.capacity_bytes == 100e12
    three_fs = load_storage_tier("3fs")
    assert three_fs.read_bandwidth == 40 * 1024**3
    assert load_storage_tier("mooncake").read_bandwidth == 87e9 / 4  # one of four 200 Gbps NICs
    hisim = load_storage_tier("hisim_disk")
    assert (hisim.read_bandwidth, hisim.read_latency_s, hisim.capacity_bytes) == (4e9, 0.0, None)
    # 1000 Qwen3-8B tokens (147,456 B each) at HiSim's 4 GB/s: the 36.9 ms HiSim's report quotes.
    assert hisim.read_seconds(1000 * 147_456) == pytest.approx(0.0369, abs=1e-4)


def test_user_tier_from_a_mapping_or_a_base() -> None:
    tier = load_storage_tier(
        {
            "name": "ssd",
            "read_bandwidth": "7 GB/s",
            "write_bandwidth": "5 GB/s",
            "read_latency": "80 us",
            "write_latency": "20 us",
            "capacity": "4 TB",
        }
    )
    assert (tier.name, tier.read_bandwidth, tier.capacity_bytes) == ("ssd", 7e9, 4e12)
    assert tier.write_latency_s == pytest.approx(20e-6)
    faster = load_storage_tier({"base": "nfs", "read_bandwidth": "2.5 GB/s"})
    assert (faster.name, faster.read_bandwidth, faster.write_bandwidth) == ("nfs*", 2.5e9, 1.0e9)
    assert tier.write_seconds(5e9) == pytest.approx(1.0 + 2e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ssd", "unknown storage tier 'ssd'; packaged tiers: host_dram, nfs"),
        ({"base": "tape"}, "storage tier base 'tape' is unknown"),
        ({"base": "nfs", "iops": 5}, "unknown keys \\['iops'\\]"),
        ({"read_bandwidth": "1 GB/s"}, "missing write_bandwidth, read_latency, write_latency, capacity"),
        ({"base": "nfs", "read_bandwidth": 5}, "read_bandwidth: 5 has no unit"),
        ({"base": "nfs", "read_bandwidth": "0 GB/s"}, "bandwidths must be > 0"),
        ({"base": "nfs", "capacity": "lots"}, "cannot read quantity 'lots'"),
        ({"base": "nfs", "write_latency": "-1 ms"}, "latencies must be >= 0"),
    ],
)
def test_bad_tiers_are_refused(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_storage_tier(spec)  # type: ignore[arg-type]


def test_tier_keys_are_what_parse_accepts() -> None:
    entry = {
        "description": "d",
        "read_bandwidth": "1 GB/s",
        "write_bandwidth": "1 GB/s",
        "read_latency": "0 us",
        "write_latency": "0 us",
        "capacity": "unlimited",
        "source": "s",
    }
    assert set(entry) == set(TIER_KEYS)
    assert parse_storage_tier("t", entry).capacity_bytes is None
