"""Turn a calibration folder into a GPU profile that ``--gpu NAME`` finds.

The profile goes to ``<user profile dir>/<NAME>/``: ``profile.yaml`` (the packaged profiles' schema), the
measured tables it lists, and the run's ``meta.json``. The user profile dir is the first folder of
``KVSIM_PROFILE_PATH`` or ``~/.config/kvsim/profiles``, never site-packages.

Datasheet numbers: when the GPU's name matches a packaged profile (by alias, e.g. ``NVIDIA H200``), its
peak FLOPS, bandwidths and NVLink are kept and the measurements set the efficiency factors; otherwise the
measured maxima stand in for the peaks (and the efficiencies are 1 by construction). Either way the
``profile.yaml`` comments say which.
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from kvsim.calibrate.tables import META_FILE, SCHEMAS, read_meta, read_table
from kvsim.core.errors import UserInputError
from kvsim.hardware.profile import GpuProfile, all_profiles
from kvsim.hardware.user_profiles import PROFILE_FILE, install_dir, read_profile_file

#: Which profile op family each table serves.
TABLE_SOURCES = {
    "gemm": "gemm",
    "prefill_attention": "attention_prefill",
    "decode_attention": "attention_decode",
    "elementwise": "elementwise",
    "allreduce": "communication",
    "copy": "host_copy",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def packaged_match(gpu_name: str) -> GpuProfile | None:
    """The packaged profile whose name or alias equals ``gpu_name`` (case-insensitive), if any."""
    wanted = gpu_name.strip().lower()
    for profile in all_profiles():
        if wanted in {profile.name.lower(), *(a.lower() for a in profile.aliases)}:
            return profile
    return None


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise UserInputError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    for profile in all_profiles():
        if name.lower() in {profile.name.lower(), *(a.lower() for a in profile.aliases)}:
            raise UserInputError(
                f"--name {name!r} is a packaged profile's name or alias ({profile.name}); choose another name"
            )


def _fmt(value: float, unit: str, digits: int = 3) -> str:
    return f"{float(f'{value:.{digits}g}'):g} {unit}"


def build_profile(name: str, meta: dict[str, Any], tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The ``profile.yaml`` mapping for calibration ``meta`` and its ``tables`` (rows by family)."""
    base = packaged_match(str(meta.get("gpu", "")))
    peaks = meta.get("peak_tflops_measured") or {}
    bandwidth = meta.get("bandwidth_summary_GBps") or {}
    d2d = bandwidth.get("d2d_read_plus_write")
    h2d = max(bandwidth.get("h2d", 0.0), bandwidth.get("d2h", 0.0)) or None

    if base is not None:
        compute = {k: _fmt(v / 1e12, "TFLOPS", 4) for k, v in base.compute_flops.items()}
        bf16_peak = base.compute_flops.get("bf16", 0.0) / 1e12
        mem_bw = base.memory_bandwidth / 1e9  # GB/s
        pcie = base.pcie_bandwidth / 1e9
        nvlink = base.nvlink_bandwidth / 1e9 if base.nvlink_bandwidth else None
    else:
        if not peaks.get("bf16"):
            raise UserInputError(
                f"{meta.get('gpu')!r} is not a packaged GPU and the run measured no GEMM to take peaks from"
            )
        compute = {"bf16": _fmt(peaks["bf16"], "TFLOPS"), "fp16": _fmt(peaks["bf16"], "TFLOPS")}
        if peaks.get("fp8"):
            compute["fp8"] = _fmt(peaks["fp8"], "TFLOPS")
        bf16_peak = float(peaks["bf16"])
        if not d2d:
            raise UserInputError(
                f"{meta.get('gpu')!r} is not a packaged GPU and the run measured no copy for its bandwidth"
            )
        mem_bw, pcie, nvlink = float(d2d), float(h2d or 16.0), None

    backends = meta.get("backends") or {}
    launch = {row["what"]: row["latency_ms"] for row in tables.get("launch", [])}
    roofline = {
        "compute_efficiency": _clamp(_gemm_efficiency(tables.get("gemm", []), bf16_peak), 0.7),
        "memory_efficiency": _clamp(d2d / mem_bw if d2d else None, 0.8),
        "kernel_latency": _fmt(1e3 * launch.get("kernel_tiny_gpu", 0.003), "us"),
        "kernel_gap": _fmt(1e3 * _gap(launch), "us"),
        "cuda_graph_launch": _fmt(1e3 * launch.get("graph_replay_1", 0.020), "us"),
        "collective_latency": _fmt(1e3 * _collective(tables.get("allreduce", [])), "us"),
        "pcie_efficiency": _clamp(h2d / pcie if h2d and pcie else None, 0.85),
    }
    complete = {family: info.get("complete", False) for family, info in (meta.get("tables") or {}).items()}
    sources = {family: "roofline" for family in TABLE_SOURCES.values()}
    for table, family in TABLE_SOURCES.items():
        if table in tables and complete.get(table):
            sources[family] = "table"
    quick = bool(meta.get("quick"))
    by = f"kvsim calibrate on {meta.get('gpu')}, {meta.get('measured') or 'undated'}"
    if quick:
        by += " (--quick: CPU pipeline check, not a GPU)"
    if not meta.get("complete"):
        by += " (partial)"
    interconnect: dict[str, str] = {"pcie": _fmt(pcie, "GB/s")}
    if nvlink:
        interconnect = {"nvlink": _fmt(nvlink, "GB/s"), **interconnect}
    return {
        "name": name,
        "aliases": [],
        "memory": f"{meta['memory_gib']} GiB",
        "memory_bandwidth": _fmt(mem_bw / 1e3, "TB/s"),
        "compute": compute,
        "sms": int(meta.get("sms") or 1),
        "l2_cache": _fmt(max(float(meta.get("l2_mb") or 0.0), 0.001), "MB"),
        "interconnect": interconnect,
        "roofline": roofline,
        "sources": sources,
        "calibration": {
            "calibrated": True,
            "by": by,
            "complete": bool(meta.get("complete")),
            "quick": quick,
            "measured": meta.get("measured"),
            "gpu": meta.get("gpu"),
            "datasheet": f"packaged profile {base.name}" if base is not None else "measured maxima",
            "other_tables": sorted(SCHEMAS[t].file_name for t in tables if t not in TABLE_SOURCES),
        },
        # The loader keys tables by op family; e2e, launch and extend tables travel along for reports.
        "tables": {TABLE_SOURCES[t]: SCHEMAS[t].file_name for t in tables if t in TABLE_SOURCES},
        "table_backends": {"attention_prefill": str(backends.get("prefill_attention", "unknown"))},
    }


def _clamp(value: float | None, default: float) -> float:
    if value is None or not value > 0:
        return default
    return round(min(1.0, max(0.05, float(value))), 3)


def _gemm_efficiency(rows: list[dict[str, Any]], peak_tflops: float) -> float | None:
    """Median achieved / peak over the compute-bound bf16 GEMMs (M >= 2048)."""
    if not peak_tflops:
        return None
    achieved = [
        2 * r["m"] * r["n"] * r["k"] / (r["latency_ms"] * 1e-3) / 1e12
        for r in rows
        if r["dtype"] == "bf16" and r["m"] >= 2048 and r["latency_ms"] > 0
    ]
    return statistics.median(achieved) / peak_tflops if achieved else None


def _gap(launch: dict[str, float]) -> float:
    """Idle milliseconds per eager kernel: the eager per-kernel wall time less the kernel itself."""
    if "eager_tiny_per_kernel" in launch and "kernel_tiny_gpu" in launch:
        return max(launch["eager_tiny_per_kernel"] - launch["kernel_tiny_gpu"], 0.0005)
    return launch.get("launch_host", 0.002)


def _collective(rows: list[dict[str, Any]]) -> float:
    small = [r["latency_ms"] for r in rows if r["tp"] == 2]
    return min(small) if small else 0.010


def install_profile(
    source: Path,
    name: str,
    dest_root: Path | None = None,
    allow_partial: bool = False,
    force: bool = False,
) -> Path:
    """Install calibration folder ``source`` as profile ``name``; returns the profile's folder."""
    _check_name(name)
    meta = read_meta(source)
    if not meta.get("complete") and not allow_partial:
        unfinished = [n for n, t in (meta.get("tasks") or {}).items() if t.get("status") != "complete"]
        raise UserInputError(
            f"{source} is an incomplete calibration (not finished: {', '.join(unfinished) or 'unknown'}); "
            "rerun with a larger --budget-s, or pass --allow-partial to install it marked partial"
        )
    listed = meta.get("tables") or {}
    tables = {family: read_table(Path(source) / SCHEMAS[family].file_name, family) for family in listed}
    if not tables:
        raise UserInputError(f"{source}: the calibration wrote no tables")
    profile = build_profile(name, meta, tables)
    root = Path(dest_root) if dest_root is not None else install_dir()
    target = root / name
    if target.exists() and not force:
        raise UserInputError(f"profile {name!r} already exists at {target}; pass --force to replace it")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        header = (
            f"# {name}: written by `kvsim calibrate --install` from {Path(source).resolve()}.\n"
            f"# Datasheet numbers: {profile['calibration']['datasheet']}; efficiencies, latencies measured.\n"
        )
        body = yaml.safe_dump(profile, sort_keys=False, default_flow_style=False)
        (staging / PROFILE_FILE).write_text(header + body, encoding="utf-8")
        for family in tables:
            shutil.copy2(Path(source) / SCHEMAS[family].file_name, staging / SCHEMAS[family].file_name)
        shutil.copy2(Path(source) / META_FILE, staging / META_FILE)
        read_profile_file(staging / PROFILE_FILE)  # the loader must accept what we wrote
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
