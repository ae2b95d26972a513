"""GPU profiles: datasheet numbers with units, roofline factors, which source serves each op family.

Each profile lives in ``kvsim/hardware/profiles/<NAME>/profile.yaml`` (package data), or in any folder a
user names with ``--gpu PATH``. Every number in the YAML carries its unit (``96 GiB``, ``4.0 TB/s``,
``148 TFLOPS``, ``3 us``) and is converted to SI base units here (bytes, bytes/s, FLOP/s, seconds).

A profile declares, per op family (:data:`OP_FAMILIES`), whether the predictor serves it from a measured
``table`` (a CSV beside the YAML, :mod:`kvsim.hardware.tables`), from a roofline with ``fitted``
efficiency parameters (``fitted.yaml`` beside the YAML, written by ``scripts/fit_h200.py`` or
``scripts/fit_h20.py``), or from the plain ``roofline``. Loading is strict: a family declared ``table``
without a table file, a missing or malformed table, or a family declared ``fitted`` without parameters is
refused with a one-line error that names the file. ``allow_roofline=True`` (the CLI's ``--allow-roofline``)
serves such families from the roofline instead and records which ones in :attr:`GpuProfile.downgraded`.

``fitted.yaml`` also carries the leave-one-out validation errors per family and source, which the
predictor turns into a step-time range and ``kvsim profiles`` shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from kvsim.core.errors import ConfigError, UserInputError
from kvsim.core.units import parse_bandwidth, parse_bytes, parse_flops, parse_time
from kvsim.hardware.tables import TABLE_SCHEMAS, Table, default_table_file, parse_table

OP_FAMILIES = ("gemm", "attention_prefill", "attention_decode", "elementwise", "communication", "host_copy")
SOURCE_CHOICES = ("table", "fitted", "roofline")
#: Attention backends SGLang offers on Hopper (FA3 is its default there); "unknown" marks a table whose
#: backend was not recorded (the AIConfigurator H20-3e attention rows, kernel_source "default").
ATTENTION_BACKENDS = ("fa3", "flashinfer", "triton")
FITTED_FILE = "fitted.yaml"
#: profile.yaml keys parse_profile interprets; any other key is kept in GpuProfile.extra
_KNOWN_KEYS = frozenset(
    {
        "name",
        "aliases",
        "memory",
        "memory_bandwidth",
        "compute",
        "sms",
        "l2_cache",
        "interconnect",
        "roofline",
        "sources",
        "calibration",
        "tables",
        "table_backends",
        "fitted",
    }
)


@dataclass(frozen=True, slots=True)
class RooflineFactors:
    """Empirical factors that turn datasheet peaks into achievable times."""

    compute_efficiency: float
    memory_efficiency: float
    kernel_latency_s: float
    kernel_gap_s: float
    cuda_graph_launch_s: float
    collective_latency_s: float
    pcie_efficiency: float


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """One GPU model as the simulator sees it (SI units throughout)."""

    name: str
    aliases: tuple[str, ...]
    memory_bytes: float
    memory_bandwidth: float  # bytes/s
    compute_flops: dict[str, float]  # dtype -> dense tensor FLOP/s
    sms: int
    l2_cache_bytes: float
    nvlink_bandwidth: float | None  # bytes/s per direction; None when the GPU has no NVLink
    pcie_bandwidth: float  # bytes/s per direction
    roofline: RooflineFactors
    sources: dict[str, str]
    calibrated: bool
    calibrated_by: str | None
    #: bytes/s of the inter-node network per GPU (one RDMA NIC each): what a disaggregated prefill
    #: server's KV moves over to its decode server; None when the profile does not say
    network_bandwidth: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: family -> parsed calibration table (every table the profile declares or ships under its default name)
    tables: dict[str, Table] = field(default_factory=dict)
    #: attention family -> the backend that measured its table when the table has no ``backend`` column
    table_backends: dict[str, str] = field(default_factory=dict)
    #: family -> fitted model entry from ``fitted.yaml`` (``model``, ``params``, ``timing_floor_us``, ...)
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: family -> source (or ``source:dtype``) -> {"median_rel_err", "rows", "method", ...}
    validation: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: time the tables' measurement method adds to every kernel (timing one call between CUDA events
    #: includes the host's launch latency); the predictor subtracts it from table and table-fitted times
    table_timing_floor_s: float = 0.0
    #: families declared ``table``/``fitted`` that ``allow_roofline`` turned into ``roofline``, with why
    downgraded: dict[str, str] = field(default_factory=dict)
    folder: str | None = None

    @property
    def memory_gib(self) -> float:
        """Device memory in GiB."""
        return self.memory_bytes / 1024**3

    def peak_flops(self, dtype: str) -> float:
        """Dense tensor-core FLOP/s for ``dtype`` (``bf16``/``fp16``/``fp8``); error when the GPU lacks it."""
        key = {"bfloat16": "bf16", "float16": "fp16", "fp8_e4m3": "fp8"}.get(dtype, dtype)
        if key not in self.compute_flops:
            raise UserInputError(f"GPU {self.name} has no {key} tensor cores")
        return self.compute_flops[key]

    @property
    def tp_link_bandwidth(self) -> float:
        """Per-direction bandwidth of the link tensor parallelism uses (NVLink, else PCIe)."""
        return self.nvlink_bandwidth if self.nvlink_bandwidth is not None else self.pcie_bandwidth

    def validation_error(self, family: str, source: str, dtype: str | None = None) -> float | None:
        """Median relative error of ``family`` served from ``source`` (leave-one-out where measured).

        Looks up ``source:dtype`` first, then ``source``; falls back to the family's ``prior_rel_err`` in
        ``fitted.yaml`` for fitted families without rows; ``None`` when nothing is known (roofline).
        """
        entries = self.validation.get(family, {})
        for key in ((f"{source}:{dtype}",) if dtype else ()) + (source,):
            entry = entries.get(key)
            if entry and entry.get("median_rel_err") is not None:
                return float(entry["median_rel_err"])
        if source == "fitted":
            prior = self.fitted.get(family, {}).get("prior_rel_err")
            if prior is not None:
                return float(prior)
        return None

    def with_sources(self, **sources: str) -> GpuProfile:
        """A copy serving the named families from other sources (e.g. ``gemm="roofline"``), checked."""
        merged = {**self.sources, **sources}
        _check_sources(merged, f"profile {self.name}")
        for family, source in sources.items():
            if source == "table" and family not in self.tables:
                raise ConfigError(f"profile {self.name}: no {family} table to serve {family} from")
            if source == "fitted" and family not in self.fitted:
                raise ConfigError(f"profile {self.name}: no fitted {family} parameters")
        return replace(self, sources=merged)

    def roofline_only(self) -> GpuProfile:
        """A copy that serves every op family from the plain roofline (datasheet peaks and factors)."""
        return replace(self, sources=dict.fromkeys(OP_FAMILIES, "roofline"))


Folder = Traversable | Path


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing {key!r}")
    return data[key]


def _check_sources(sources: dict[str, Any], where: str) -> None:
    for family in OP_FAMILIES:
        source = sources.get(family)
        if source not in SOURCE_CHOICES:
            raise ConfigError(
                f"{where}: sources.{family}={source!r} must be one of {', '.join(SOURCE_CHOICES)}"
            )
    unknown = sorted(set(sources) - set(OP_FAMILIES))
    if unknown:
        raise ConfigError(f"{where}: unknown op families {unknown}; valid: {', '.join(OP_FAMILIES)}")


def _display(folder: Folder | None, name: str) -> str:
    if folder is None:
        return name
    if isinstance(folder, Path):
        return str(folder / name)
    return f"kvsim/hardware/profiles/{folder.name}/{name}"


def _read_tables(
    data: dict[str, Any],
    folder: Folder | None,
    where: str,
    sources: dict[str, str],
    downgrade: dict[str, str],
) -> dict[str, Table]:
    """Parse every declared table and every table present under its default name."""
    declared = data.get("tables") or {}
    if not isinstance(declared, dict):
        raise ConfigError(f"{where}: tables must map op families to CSV file names")
    unknown = sorted(set(declared) - set(TABLE_SCHEMAS))
    if unknown:
        raise ConfigError(f"{where}: tables for unknown op families {unknown}")
    tables: dict[str, Table] = {}
    for family in TABLE_SCHEMAS:
        name = declared.get(family)
        wanted = sources.get(family) == "table"
        if folder is None:
            if wanted or name:
                downgrade[family] = f"{where}: sources.{family}=table but the profile has no table folder"
            continue
        file_name = str(name) if name else default_table_file(family)
        entry = folder / file_name
        display = _display(folder, file_name)
        if not entry.is_file():
            if name is None and not wanted:
                continue  # no table under the default name and none asked for: nothing to do
            downgrade[family] = (
                f"{where}: sources.{family}=table but its table {display} does not exist"
                if wanted
                else f"{where}: declared table {display} does not exist"
            )
            continue
        try:
            tables[family] = parse_table(entry.read_text(encoding="utf-8"), family, display)
        except ConfigError as exc:
            downgrade[family] = str(exc)
        except (OSError, UnicodeDecodeError) as exc:
            downgrade[family] = f"table {display}: cannot read ({exc})"
    return tables


def _read_fitted(
    data: dict[str, Any], folder: Folder | None, where: str, allow_roofline: bool
) -> dict[str, Any]:
    name = data.get("fitted")
    if folder is None:
        if name:
            raise ConfigError(f"{where}: fitted {name!r} named but the profile has no folder")
        return {}
    file_name = str(name) if name else FITTED_FILE
    entry = folder / file_name
    display = _display(folder, file_name)
    if not entry.is_file():
        if name and not allow_roofline:
            raise ConfigError(f"{where}: fitted parameters {display} do not exist")
        return {"_display": f"{display} (missing)"} if name else {}
    try:
        fitted = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{display}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(fitted, dict) or not isinstance(fitted.get("families", {}), dict):
        raise ConfigError(f"{display}: expected a mapping with 'families' and 'validation'")
    for family, entry_data in (fitted.get("families") or {}).items():
        if family not in OP_FAMILIES:
            raise ConfigError(f"{display}: unknown op family {family!r}")
        if not isinstance(entry_data, dict) or "model" not in entry_data or "params" not in entry_data:
            raise ConfigError(f"{display}: families.{family} needs 'model' and 'params'")
    fitted["_display"] = display
    return fitted


def _backend_factors(factors: dict[Any, Any], where: str) -> dict[str, float]:
    """Checked ``"measured->target": factor`` corrections (positive numbers between two named backends)."""
    checked: dict[str, float] = {}
    for pair, value in factors.items():
        measured, arrow, target = str(pair).partition("->")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not (measured and arrow and target) or not number > 0:
            raise ConfigError(
                f"{where}: attention_backend_factors {pair!r}: {value!r} is not 'a->b: factor > 0'"
            )
        checked[str(pair)] = number
    return checked


def parse_profile(
    data: dict[str, Any], where: str, folder: Folder | None = None, allow_roofline: bool = False
) -> GpuProfile:
    """Build a :class:`GpuProfile` from a parsed ``profile.yaml`` mapping; ``where`` names it in errors.

    ``folder`` is where its tables and ``fitted.yaml`` live (``None``: a profile with no files, which
    can only use ``fitted`` parameters given inline or the roofline). With ``allow_roofline`` a family
    whose declared table or parameters are missing or broken is served from the roofline instead of
    being refused.
    """
    name = str(_require(data, "name", where))
    compute = {
        k: parse_flops(v, f"{where}: compute.{k}") for k, v in _require(data, "compute", where).items()
    }
    link = data.get("interconnect") or {}
    roof = _require(data, "roofline", where)
    roofline = RooflineFactors(
        compute_efficiency=float(_require(roof, "compute_efficiency", where)),
        memory_efficiency=float(_require(roof, "memory_efficiency", where)),
        kernel_latency_s=parse_time(_require(roof, "kernel_latency", where), f"{where}: kernel_latency"),
        kernel_gap_s=parse_time(_require(roof, "kernel_gap", where), f"{where}: kernel_gap"),
        cuda_graph_launch_s=parse_time(
            _require(roof, "cuda_graph_launch", where), f"{where}: cuda_graph_launch"
        ),
        collective_latency_s=parse_time(
            _require(roof, "collective_latency", where), f"{where}: collective_latency"
        ),
        pcie_efficiency=float(roof.get("pcie_efficiency", 0.85)),
    )
    for factor in ("compute_efficiency", "memory_efficiency", "pcie_efficiency"):
        value = getattr(roofline, factor)
        if not 0 < value <= 1:
            raise ConfigError(f"{where}: roofline.{factor}={value} must lie in (0, 1]")
    sources = dict(_require(data, "sources", where))
    _check_sources(sources, where)
    table_problems: dict[str, str] = {}
    tables = _read_tables(data, folder, where, sources, table_problems)
    fitted_file = _read_fitted(data, folder, where, allow_roofline)
    fitted = dict(fitted_file.get("families") or {})
    serve_problems = {f: p for f, p in table_problems.items() if sources[f] == "table"}
    for family, problem in table_problems.items():
        # A declared table that is broken is an error even when another source serves the family.
        if family not in serve_problems and not allow_roofline:
            raise ConfigError(problem)
    for family in OP_FAMILIES:
        if sources[family] == "fitted" and family not in fitted:
            shown = fitted_file.get("_display") or _display(folder, FITTED_FILE)
            serve_problems[family] = f"{where}: sources.{family}=fitted but {shown} lacks {family} parameters"
    downgraded: dict[str, str] = {}
    for family, problem in serve_problems.items():
        if not allow_roofline:
            raise ConfigError(f"{problem} (run with --allow-roofline to use the roofline for {family})")
        sources[family] = "roofline"
        downgraded[family] = problem
    backends = {str(k): str(v) for k, v in (data.get("table_backends") or {}).items()}
    for family in backends:
        if family not in ("attention_prefill", "attention_decode"):
            raise ConfigError(f"{where}: table_backends.{family}: only attention tables have a backend")
    calibration = data.get("calibration") or {}
    floor = fitted_file.get("table_timing_floor_us", 0.0)
    extra = {k: v for k, v in data.items() if k not in _KNOWN_KEYS}
    # Backend corrections measured by a fitting script live in fitted.yaml; factors stated by hand in
    # profile.yaml take precedence over them.
    factors = {
        **(fitted_file.get("attention_backend_factors") or {}),
        **(extra.get("attention_backend_factors") or {}),
    }
    if factors:
        extra["attention_backend_factors"] = _backend_factors(factors, where)
    return GpuProfile(
        name=name,
        aliases=tuple(str(a) for a in data.get("aliases", [])),
        memory_bytes=parse_bytes(_require(data, "memory", where), f"{where}: memory"),
        memory_bandwidth=parse_bandwidth(
            _require(data, "memory_bandwidth", where), f"{where}: memory_bandwidth"
        ),
        compute_flops=compute,
        sms=int(_require(data, "sms", where)),
        l2_cache_bytes=parse_bytes(_require(data, "l2_cache", where), f"{where}: l2_cache"),
        nvlink_bandwidth=parse_bandwidth(link["nvlink"], f"{where}: nvlink") if "nvlink" in link else None,
        pcie_bandwidth=parse_bandwidth(_require(link, "pcie", f"{where}: interconnect"), f"{where}: pcie"),
        network_bandwidth=(
            parse_bandwidth(link["network"], f"{where}: network") if "network" in link else None
        ),
        roofline=roofline,
        sources=sources,
        calibrated=bool(calibration.get("calibrated", False)),
        calibrated_by=calibration.get("by"),
        extra=extra,
        tables=tables,
        table_backends=backends,
        fitted=fitted,
        validation=dict(fitted_file.get("validation") or {}),
        table_timing_floor_s=float(floor) * 1e-6,
        downgraded=downgraded,
        folder=None if folder is None else _display(folder, ""),
    )


def _profiles_root() -> Traversable:
    return resources.files("kvsim.hardware") / "profiles"


def load_profile_folder(folder: Folder, allow_roofline: bool = False) -> GpuProfile:
    """Load the profile in ``folder`` (``profile.yaml`` plus its tables and ``fitted.yaml``)."""
    entry = folder / "profile.yaml"
    where = f"profile {_display(folder, 'profile.yaml')}"
    if not entry.is_file():
        raise UserInputError(f"{where}: no such file")
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    return parse_profile(data, where, folder, allow_roofline)


@cache
def _bundled(allow_roofline: bool = False) -> dict[str, GpuProfile]:
    profiles: dict[str, GpuProfile] = {}
    for folder in sorted(_profiles_root().iterdir(), key=lambda e: e.name):
        if not (folder / "profile.yaml").is_file():
            continue
        profile = load_profile_folder(folder, allow_roofline)
        profiles[profile.name] = profile
    return profiles


def profile_names() -> list[str]:
    """Names of the bundled GPU profiles, sorted."""
    return sorted(_bundled())


def all_profiles() -> list[GpuProfile]:
    """Every bundled profile, sorted by name."""
    return [_bundled()[name] for name in profile_names()]


def load_profile(name: str, allow_roofline: bool = False) -> GpuProfile:
    """Return the bundled profile called ``name`` or one of its aliases (case-insensitive).

    ``name`` may also be a folder holding a ``profile.yaml`` (a profile the user calibrated).
    """
    path = Path(name)
    if (path / "profile.yaml").is_file():
        return load_profile_folder(path, allow_roofline)
    wanted = name.strip().lower()
    for profile in _bundled(allow_roofline).values():
        if wanted == profile.name.lower() or wanted in (a.lower() for a in profile.aliases):
            return profile
    # Profiles installed by `kvsim calibrate` come after the packaged ones and never shadow them.
    from kvsim.hardware.user_profiles import find_user_profile, user_profile_names

    found = find_user_profile(name, allow_roofline)
    if found is not None:
        return found
    user = user_profile_names()
    extra = f" (installed: {', '.join(user)})" if user else ""
    raise UserInputError(f"unknown GPU {name!r}; choose one of: {', '.join(profile_names())}{extra}")
