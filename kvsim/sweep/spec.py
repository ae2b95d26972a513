"""The sweep file: an experiment file plus ``sweep:``, ``slo:`` and ``cost:`` sections.

::

    model: Qwen3-8B                 # the base experiment, as for `kvsim sim --config`
    gpu: H20
    workload: {dataset_name: mooncake, dataset_path: ..., num_prompts: 1000}
    sweep:
      name: mooncake-capacity       # default: the file's stem
      grid:                         # every combination of these (dotted experiment-file paths)
        gpu: [H20, H100]
        server.tp: [1, 2]
      variants:                     # named axes whose options set several paths at once
        l2:
          none: {server.enable_hierarchical_cache: false}
          500GB: {server.enable_hierarchical_cache: true, server.hicache_size: 500}
      sample: {count: 8, seed: 1}   # optional: a random sample of the grid instead of all of it
      goodput: {low: 0.05, high: 4, tolerance: 0.05, max_steps: 8}
      target_rate: 1.0              # optional: recommend the cheapest configuration reaching it
    slo: {p90_ttft_ms: 2 s, p90_tpot_ms: 50}
    cost: {gpu_hour: {H20: 1.0, H100: 2.25}, storage_gb_month: {host_dram: 0.15}}

A grid axis over the load path (``workload.request_rate``, or ``workload.mooncake_slowdown_factor`` for a
trace) is the *load axis*: its values become runs of each configuration instead of configurations,
and a configuration's goodput is then the highest of those rates that met the SLOs. With
``sweep.goodput`` each configuration's goodput is searched by bisection instead. With ``sample``, an
axis may be a range, ``{min: 16, max: 1024, log: true, integer: true}``, drawn from at random.

Experiment keys are checked by the experiment loader, so a sweep accepts exactly the paths ``kvsim sim
--config`` accepts (and a section added there later, such as ``cluster:``, as soon as it is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvsim.core.errors import ConfigError, UserInputError
from kvsim.core.rng import make_rng
from kvsim.sweep.cost import CostModel, parse_cost
from kvsim.sweep.goodput import GoodputSpec, parse_goodput
from kvsim.sweep.load import LoadKnob, knob_for
from kvsim.sweep.paths import nest, set_path, split_path
from kvsim.sweep.slo import SloSpec, parse_slo

#: Sections a sweep file adds to an experiment file.
SWEEP_SECTIONS = ("sweep", "slo", "cost")
SWEEP_KEYS = ("name", "grid", "variants", "sample", "goodput", "target_rate")
SAMPLE_KEYS = ("count", "seed")
RANGE_KEYS = ("min", "max", "log", "integer")
#: Experiment sections that make no sense to sweep (the sweep writes its own outputs).
UNSWEPT_SECTIONS = ("output",)


@dataclass(frozen=True, slots=True)
class Range:
    """A sampled axis: uniform (or log-uniform) between ``low`` and ``high``, optionally integer."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def draw(self, rng: Any) -> float | int:
        """One value drawn from ``rng`` (a numpy Generator)."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return round(value) if self.integer else float(f"{value:.6g}")


@dataclass(frozen=True, slots=True)
class Axis:
    """One grid axis: a path and its values (or, with ``sample``, a :class:`Range`)."""

    path: str
    values: tuple[Any, ...] = ()
    range: Range | None = None


@dataclass(frozen=True, slots=True)
class VariantAxis:
    """A named axis whose options each set several paths: ``(label, ((path, value), ...))``."""

    name: str
    options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """``sweep.sample``: draw ``count`` configurations at random (seeded) instead of the whole grid."""

    count: int
    seed: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Configuration:
    """One point of the sweep: everything but the load.

    Attributes:
        config_id: Position in the sweep: grid order, last axis fastest (a sample of a grid keeps grid
            order; a sample with ranges, the order of the draws).
        grid: The grid axes' paths and their values here.
        labels: The option chosen on each variant axis, ``(axis name, label)``.
        config: The complete experiment config (base with grid values and variant settings applied).
        knob: How this configuration's load is set.
        load_values: The values of the load axis when the grid has one (each is a run); None otherwise.
    """

    config_id: int
    grid: tuple[tuple[str, Any], ...]
    labels: tuple[tuple[str, str], ...]
    config: dict[str, Any]
    knob: LoadKnob
    load_values: tuple[Any, ...] | None = None

    def describe(self) -> str:
        """``gpu=H20 tp=2 l2=500GB``: the last component of each grid path, then the variant labels."""
        parts = [f"{path.rsplit('.', 1)[-1]}={value}" for path, value in self.grid]
        parts += [f"{name}={label}" for name, label in self.labels]
        return " ".join(parts) or "base"


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A parsed sweep file."""

    source: str
    name: str
    base: dict[str, Any]
    axes: tuple[Axis, ...]
    variants: tuple[VariantAxis, ...]
    sample: SampleSpec | None
    goodput: GoodputSpec | None
    slo: SloSpec | None
    cost: CostModel | None
    target_rate: float | None

    def configurations(self) -> list[Configuration]:
        """Expand the grid (or its sample) into configurations, checked key by key."""
        return expand(self)


def _check_path(base: Mapping[str, Any], path: str, value: Any, where: str) -> None:
    """Refuse a path the experiment loader would refuse (naming the valid keys), or one outside the
    experiment sections a run uses."""
    from kvsim.engines.experiment import merge_config

    parts = split_path(path, where)
    section = parts[0]
    if section in SWEEP_SECTIONS:
        raise ConfigError(f"{where}: {path} is a setting of the sweep itself, not of its runs")
    if section in UNSWEPT_SECTIONS:
        raise ConfigError(
            f"{where}: {section}.* settings do not apply to sweep runs (the sweep writes its own)"
        )
    # The loader checks sections and their keys; deeper components (kvcm.type_quotas.nfs) are checked
    # when each configuration is checked before running (kvsim.sweep.runner.preflight).
    head = ".".join(str(part) for part in parts[:2])
    merge_config(dict(base), nest(head, value if len(parts) <= 2 else {}), where)


def _parse_range(data: Mapping[str, Any], where: str) -> Range:
    unknown = sorted(set(data) - set(RANGE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(RANGE_KEYS)}")
    bounds = []
    for key in ("min", "max"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        bounds.append(float(value))
    low, high = bounds
    log = bool(data.get("log", False))
    if not low < high or (log and low <= 0):
        raise ConfigError(
            f"{where}: expected min < max{' and min > 0 for log' if log else ''}, got {low:g}, {high:g}"
        )
    return Range(low, high, log, bool(data.get("integer", False)))


def _parse_grid(data: Any, sampled: bool) -> tuple[Axis, ...]:
    if data is None:
        return ()
    if not isinstance(data, Mapping):
        raise ConfigError("sweep.grid: expected a mapping of experiment path to a list of values")
    axes = []
    for path, values in data.items():
        where = f"sweep.grid.{path}"
        split_path(path, "sweep.grid")
        if isinstance(values, Mapping):
            if not sampled:
                raise ConfigError(f"{where}: a range needs sweep.sample (a grid lists its values)")
            axes.append(Axis(path, range=_parse_range(values, where)))
        elif isinstance(values, list):
            if not values:
                raise ConfigError(f"{where}: no values; an empty axis leaves the grid empty")
            keys = [repr(v) for v in values]
            if len(set(keys)) != len(keys):
                raise ConfigError(f"{where}: a value appears twice in {values!r}")
            axes.append(Axis(path, tuple(values)))
        else:
            raise ConfigError(f"{where}: expected a list of values, got {values!r}")
    return tuple(axes)


def _parse_variants(data: Any, grid_paths: set[str]) -> tuple[VariantAxis, ...]:
    if data is None:
        return ()
    if not isinstance(data, Mapping):
        raise ConfigError("sweep.variants: expected a mapping of axis name to {label: {path: value, ...}}")
    axes = []
    for name, options in data.items():
        where = f"sweep.variants.{name}"
        if not isinstance(options, Mapping) or not options:
            raise ConfigError(f"{where}: expected a non-empty mapping of label to {{path: value, ...}}")
        parsed = []
        for label, settings in options.items():
            settings = settings or {}
            if not isinstance(settings, Mapping):
                raise ConfigError(f"{where}.{label}: expected a mapping of path to value, got {settings!r}")
            for path in settings:
                split_path(path, f"{where}.{label}")
                if path in grid_paths:
                    raise ConfigError(f"{where}.{label}: {path} is also a grid axis; set it in one place")
            parsed.append((str(label), tuple(settings.items())))
        axes.append(VariantAxis(str(name), tuple(parsed)))
    return tuple(axes)


def _positive_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{where}: expected a positive number, got {value!r}")
    return float(value)


def load_sweep(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and check a sweep file.

    Args:
        path: The YAML file.
        overrides: Dotted paths set before checking (``{"workload.num_prompts": 200,
            "sweep.goodput.max_steps": 4}``), as ``kvsim sweep --set`` does.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown section or key (the message names it and the
            valid ones), an empty axis, or inconsistent sweep settings.
    """
    from kvsim.engines.experiment import SECTIONS, default_config, load_config_file, merge_config

    where = str(path)
    data: dict[str, Any] = load_config_file(path)
    for key, value in (overrides or {}).items():
        data = set_path(data, key, value)
    valid_sections = (*SECTIONS, *SWEEP_SECTIONS)
    for section in data:
        if section not in valid_sections:
            raise ConfigError(f"{where}: unknown section {section!r}; valid: {', '.join(valid_sections)}")
    sweep = data.pop("sweep", None)
    slo_data = data.pop("slo", None)
    cost_data = data.pop("cost", None)
    if sweep is None:
        raise ConfigError(
            f"{where}: no sweep: section; a sweep file is an experiment file plus sweep: (grid, variants, "
            "sample, goodput), slo: and cost:"
        )
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"{where}: sweep: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = [key for key in sweep if key not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"sweep: unknown key {unknown[0]!r}; valid: {', '.join(SWEEP_KEYS)}")
    base = merge_config(default_config(), data, where)

    sample = None
    if sweep.get("sample") is not None:
        raw = sweep["sample"]
        if not isinstance(raw, Mapping):
            raise ConfigError("sweep.sample: expected a mapping such as {count: 8, seed: 1}")
        bad = [key for key in raw if key not in SAMPLE_KEYS]
        if bad:
            raise ConfigError(f"sweep.sample: unknown key {bad[0]!r}; valid: {', '.join(SAMPLE_KEYS)}")
        count, seed = raw.get("count"), raw.get("seed", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"sweep.sample.count: expected an integer >= 1, got {count!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"sweep.sample.seed: expected an integer >= 0, got {seed!r}")
        sample = SampleSpec(count, seed)

    axes = _parse_grid(sweep.get("grid"), sampled=sample is not None)
    for axis in axes:
        probe = axis.values[0] if axis.values else axis.range.low  # type: ignore[union-attr]
        _check_path(base, axis.path, probe, "sweep.grid")
    variants = _parse_variants(sweep.get("variants"), {axis.path for axis in axes})
    for variant in variants:
        for label, settings in variant.options:
            for setting, value in settings:
                _check_path(base, setting, value, f"sweep.variants.{variant.name}.{label}")

    slo = parse_slo(slo_data)
    goodput = parse_goodput(sweep.get("goodput"))
    target = sweep.get("target_rate")
    target_rate = None if target is None else _positive_number(target, "sweep.target_rate")
    if goodput is not None and slo is None:
        raise ConfigError(
            "sweep.goodput needs an slo: section (the goodput is the highest rate meeting the SLOs)"
        )
    if target_rate is not None and slo is None:
        raise ConfigError("sweep.target_rate needs an slo: section (it is compared with each goodput)")
    name = sweep.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"sweep.name: expected a non-empty string, got {name!r}")
    return SweepSpec(
        source=where,
        name=name,
        base=base,
        axes=axes,
        variants=variants,
        sample=sample,
        goodput=goodput,
        slo=slo,
        cost=parse_cost(cost_data),
        target_rate=target_rate,
    )


Point = tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...]]


def _points(spec: SweepSpec, axes: tuple[Axis, ...]) -> list[Point]:
    """The grid points (grid settings, chosen variant options) in grid order, or the sample of them."""
    variant_choices = [[(v.name, label, settings) for label, settings in v.options] for v in spec.variants]
    if spec.sample is not None and any(axis.range is not None for axis in axes):
        # Ranges cannot be enumerated: draw each point's values independently, dropping repeats.
        rng = make_rng(spec.sample.seed)
        points: list[Point] = []
        seen: set[str] = set()
        for _ in range(spec.sample.count):
            grid = tuple(
                (
                    axis.path,
                    axis.range.draw(rng) if axis.range else axis.values[int(rng.integers(len(axis.values)))],
                )
                for axis in axes
            )
            chosen = tuple(choices[int(rng.integers(len(choices)))] for choices in variant_choices)
            key = repr((grid, [(name, label) for name, label, _ in chosen]))
            if key not in seen:
                seen.add(key)
                points.append((grid, chosen))
        return points
    sizes = [len(axis.values) for axis in axes] + [len(choices) for choices in variant_choices]
    total = math.prod(sizes)
    if spec.sample is not None and spec.sample.count < total:
        indices = sorted(
            int(i) for i in make_rng(spec.sample.seed).choice(total, spec.sample.count, replace=False)
        )
    else:
        indices = list(range(total))
    points = []
    for index in indices:
        digits = []
        for size in reversed(sizes):  # last axis fastest, as itertools.product
            index, digit = divmod(index, size)
            digits.append(digit)
        digits.reverse()
        grid = tuple((axis.path, axis.values[d]) for axis, d in zip(axes, digits, strict=False))
        chosen = tuple(choices[d] for choices, d in zip(variant_choices, digits[len(axes) :], strict=True))
        points.append((grid, chosen))
    return points


def expand(spec: SweepSpec) -> list[Configuration]:
    """The configurations of a sweep (see the module docstring).

    Raises:
        UserInputError: an empty grid, a load axis beside a goodput search, or a trace file that is
            missing.
    """
    base_knob = knob_for(spec.base)
    load_axis = next((axis for axis in spec.axes if axis.path == base_knob.path), None)
    if load_axis is not None:
        if spec.goodput is not None:
            raise ConfigError(
                f"sweep.grid.{load_axis.path}: sweep.goodput searches the load itself; drop this axis or "
                "sweep.goodput"
            )
        if load_axis.range is not None:
            raise ConfigError(f"sweep.grid.{load_axis.path}: the load axis must list its values")
    other = tuple(axis for axis in spec.axes if axis is not load_axis)
    if not spec.axes and not spec.variants:
        raise UserInputError(
            "sweep: the grid is empty (neither sweep.grid nor sweep.variants has an axis); add one, "
            "e.g. grid: {server.tp: [1, 2]}"
        )
    configurations = []
    for config_id, (grid, chosen) in enumerate(_points(spec, other)):
        config = spec.base
        for path, value in grid:
            config = set_path(config, path, value)
        for _, _, settings in chosen:
            for path, value in settings:
                config = set_path(config, path, value)
        configurations.append(
            Configuration(
                config_id=config_id,
                grid=grid,
                labels=tuple((name, label) for name, label, _ in chosen),
                config=config,
                knob=knob_for(config),
                load_values=None if load_axis is None else load_axis.values,
            )
        )
    if not configurations:
        raise UserInputError("sweep: the grid is empty: no configuration to run")
    return configurations


__all__ = [
    "Axis",
    "Configuration",
    "Range",
    "SampleSpec",
    "SweepSpec",
    "VariantAxis",
    "expand",
    "load_sweep",
]
