"""KVCM optimizer configs: instance groups with quotas, per-instance policies and KVCM's eviction modes.

The config is the JSON file KVCM's ``optimizer_main`` reads (reference study §5.1)::

    {"trace_file_path": "...", "trace_type": "qwen_bailian", "output_result_path": "...",
     "eviction_params": {"eviction_mode": 3, "eviction_batch_size_per_instance": 100},
     "instance_groups": [{"group_name": "g", "quota_capacity": 120000, "used_percentage": 1.0,
                          "hierarchical_eviction_enabled": false, "storages": [...],
                          "instances": [{"instance_id": "instance", "block_size": 16,
                                         "eviction_policy_type": "lru",
                                         "eviction_policy_params": {"sample_rate": 0.1}}]}]}

Replay rules (KVCM's ``OptEvictionManager``), which differ from the plain replay in *when* and *from
whom* blocks are evicted:

- every instance has its own cache and policy; a group's usage is the sum of its instances' blocks;
- after every write, ``excess = usage - floor(capacity x used_percentage)`` where ``capacity`` is
  ``quota_capacity`` (blocks), or the first storage's ``capacity`` with hierarchical eviction;
- mode 1 (GROUP_ROUGH): round-robin over the group's instances in config order, each evicting up to
  ``batch`` blocks per round, until the excess is covered or a round evicts nothing;
- mode 2 (INSTANCE_ROUGH): the writing instance evicts ``batch`` blocks at a time until the excess is
  covered (it may overshoot);
- mode 3 (INSTANCE_PRECISE): like 2, the last batch cut to the exact excess.

With one instance, ``used_percentage`` 1 and a batch of 1, every mode is the plain replay.
kvsim extensions: any kvsim policy name may be used (``eviction_policy_params`` may carry
``sample_rate`` and ``ttl_seconds``), and ``trace_type`` may be any format ``kvsim optimize`` reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvsim.cache.optimizer.policies import POLICIES, PolicyParams, ReplayPolicy, make_policy
from kvsim.cache.optimizer.replay import ReplayResult, Timeline, _record
from kvsim.cache.optimizer.trace import FORMATS, Trace
from kvsim.core import ConfigError

EVICTION_MODES = {1: "GROUP_ROUGH", 2: "INSTANCE_ROUGH", 3: "INSTANCE_PRECISE"}


@dataclass(frozen=True)
class InstanceConfig:
    """One instance: its id, block size, policy and policy knobs."""

    instance_id: str
    block_size: int
    policy: str
    sample_rate: float = 0.1
    ttl_s: float = 300.0


@dataclass(frozen=True)
class GroupConfig:
    """One instance group: its quota (blocks) and instances."""

    name: str
    quota_capacity: int
    used_percentage: float
    instances: tuple[InstanceConfig, ...]
    hierarchical: bool = False
    first_storage_capacity: int | None = None

    @property
    def capacity(self) -> int:
        """The capacity the excess is measured against (see the module docstring)."""
        if self.hierarchical and self.first_storage_capacity is not None:
            return self.first_storage_capacity
        return self.quota_capacity

    @property
    def quota(self) -> int:
        """``floor(capacity x used_percentage)``: usage above it is evicted."""
        return int(self.capacity * self.used_percentage)


@dataclass(frozen=True)
class OptimizerConfig:
    """A parsed KVCM optimizer config."""

    trace_file_path: str | None
    trace_type: str | None
    output_result_path: str | None
    eviction_mode: int
    batch: int
    groups: tuple[GroupConfig, ...]

    @property
    def instance_ids(self) -> list[str]:
        """Every configured instance id, in config order."""
        return [i.instance_id for g in self.groups for i in g.instances]

    @property
    def block_size(self) -> int:
        """The one block size of the configured instances."""
        return self.groups[0].instances[0].block_size

    def with_overrides(self, policy: str | None = None, capacity: int | None = None) -> OptimizerConfig:
        """The config with every instance's policy and/or every group's quota replaced (for sweeps)."""
        groups = []
        for g in self.groups:
            instances = g.instances
            if policy is not None:
                instances = tuple(replace(i, policy=policy) for i in instances)
            quota = g.quota_capacity if capacity is None else capacity
            # An explicit capacity replaces the hierarchical first-storage capacity too.
            groups.append(
                replace(
                    g,
                    instances=instances,
                    quota_capacity=quota,
                    hierarchical=g.hierarchical and capacity is None,
                )
            )
        return replace(self, groups=tuple(groups))


def _field(
    obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if name not in obj:
        if default is ...:
            raise ConfigError(f"{where}: missing field {name!r}")
        return default
    value = obj[name]
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: {name} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: {name} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_config(data: object, source: str = "config") -> OptimizerConfig:
    """Validate a config object (already parsed from JSON).

    Raises:
        ConfigError: One line naming the field that is wrong.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    trace_type = _field(data, "trace_type", str, source, None)
    if trace_type is not None and trace_type not in FORMATS:
        raise ConfigError(f"{source}: trace_type {trace_type!r} is not one of {', '.join(FORMATS)}")
    eviction = _field(data, "eviction_params", dict, source, {})
    mode = _field(eviction, "eviction_mode", int, f"{source}: eviction_params", 3)
    if mode not in EVICTION_MODES:
        raise ConfigError(f"{source}: eviction_mode must be 1, 2 or 3, got {mode}")
    batch = _field(eviction, "eviction_batch_size_per_instance", int, f"{source}: eviction_params", 100)
    if batch <= 0:
        raise ConfigError(f"{source}: eviction_batch_size_per_instance must be > 0, got {batch}")
    raw_groups = _field(data, "instance_groups", list, source)
    if not raw_groups:
        raise ConfigError(f"{source}: instance_groups is empty")
    groups = []
    seen: set[str] = set()
    for gi, g in enumerate(raw_groups):
        where = f"{source}: instance_groups[{gi}]"
        if not isinstance(g, dict):
            raise ConfigError(f"{where}: expected an object")
        name = _field(g, "group_name", str, where, f"group{gi}")
        quota = _field(g, "quota_capacity", int, where)
        if quota <= 0:
            raise ConfigError(f"{where}: quota_capacity must be > 0 blocks, got {quota}")
        used = _field(g, "used_percentage", (int, float), where, 1.0)
        if not 0 < used <= 1:
            raise ConfigError(f"{where}: used_percentage must be in (0, 1], got {used}")
        hier = _field(g, "hierarchical_eviction_enabled", bool, where, False)
        storages = _field(g, "storages", list, where, [])
        first_cap = None
        if hier:
            if not storages or not isinstance(storages[0], dict):
                raise ConfigError(f"{where}: hierarchical eviction needs storages with a capacity")
            first_cap = _field(storages[0], "capacity", int, f"{where}: storages[0]")
            if first_cap <= 0:
                raise ConfigError(f"{where}: storages[0].capacity must be > 0 blocks, got {first_cap}")
        instances = []
        for ii, inst in enumerate(_field(g, "instances", list, where)):
            iw = f"{where}: instances[{ii}]"
            if not isinstance(inst, dict):
                raise ConfigError(f"{iw}: expected an object")
            iid = _field(inst, "instance_id", str, iw)
            if iid in seen:
                raise ConfigError(f"{iw}: instance_id {iid!r} appears twice")
            seen.add(iid)
            bs = _field(inst, "block_size", int, iw, 16)
            if bs <= 0:
                raise ConfigError(f"{iw}: block_size must be > 0, got {bs}")
            policy = _field(inst, "eviction_policy_type", str, iw, "lru")
            if policy not in POLICIES:
                raise ConfigError(
                    f"{iw}: eviction_policy_type {policy!r} is not one of {', '.join(POLICIES)}"
                )
            params = _field(inst, "eviction_policy_params", dict, iw, {})
            rate = _field(params, "sample_rate", (int, float), iw, 0.1)
            ttl = _field(params, "ttl_seconds", (int, float), iw, 300.0)
            instances.append(InstanceConfig(iid, bs, policy, float(rate), float(ttl)))
        if not instances:
            raise ConfigError(f"{where}: no instances")
        groups.append(GroupConfig(name, quota, float(used), tuple(instances), hier, first_cap))
    sizes = {i.block_size for g in groups for i in g.instances}
    if len(sizes) > 1:
        raise ConfigError(f"{source}: instances use different block sizes {sorted(sizes)}; kvsim replays one")
    path = _field(data, "trace_file_path", str, source, None)
    out = _field(data, "output_result_path", str, source, None)
    return OptimizerConfig(path, trace_type, out, mode, batch, tuple(groups))


def load_config(path: str | os.PathLike[str]) -> OptimizerConfig:
    """Read and validate a config file (a relative ``trace_file_path`` is taken from the config's folder
    when it does not exist relative to the working directory).

    Raises:
        ConfigError: Unreadable file, bad JSON or a bad field (one line).
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config not found: {file}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config {file}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: not valid JSON ({err.msg}, line {err.lineno})") from None
    cfg = parse_config(data, str(file))
    if cfg.trace_file_path and not Path(cfg.trace_file_path).exists():
        beside = file.parent / cfg.trace_file_path
        if beside.exists():
            cfg = replace(cfg, trace_file_path=str(beside))
    return cfg


def replay_config(
    trace: Trace,
    cfg: OptimizerConfig,
    *,
    seed: int = 1,
    timeline: bool = False,
    victims: bool = False,
) -> list[ReplayResult]:
    """Replay ``trace`` under ``cfg``'s groups, policies and eviction mode (see the module docstring).

    Args:
        trace: Loaded with ``instances=cfg.instance_ids`` (accesses of other instances dropped).
        cfg: The config.
        seed: Seed of ``random_lru`` streams.
        timeline: Record every read.
        victims: Record evicted keys in order (per group, across its instances).

    Returns:
        One result per instance group, in config order.
    """
    by_name = {i.instance_id: (gi, i) for gi, g in enumerate(cfg.groups) for i in g.instances}
    pols: list[ReplayPolicy] = []
    group_of: list[int] = []
    for name in trace.instances:
        gi, inst = by_name[name]
        group = cfg.groups[gi]
        params = PolicyParams(sample_rate=inst.sample_rate, ttl_s=inst.ttl_s, seed=seed, batch=cfg.batch)
        pol = make_policy(inst.policy, trace, group.quota, params)
        if victims:
            pol.victims = []
        pols.append(pol)
        group_of.append(gi)
    # Group members in config order (KVCM's round-robin order); instances absent from the trace hold nothing.
    members: list[list[int]] = [[] for _ in cfg.groups]
    index = {name: i for i, name in enumerate(trace.instances)}
    for gi, g in enumerate(cfg.groups):
        members[gi] = [index[i.instance_id] for i in g.instances if i.instance_id in index]
    results = [
        ReplayResult(
            "+".join(sorted({i.policy for i in g.instances})),
            g.quota,
            group=g.name,
            timeline=Timeline(per_instance=[]) if timeline else None,
            victims=[] if victims else None,
        )
        for g in cfg.groups
    ]
    bs = trace.block_size
    mode, batch = cfg.eviction_mode, cfg.batch
    expires = [p.name == "ttl" for p in pols]
    for r in range(trace.n_requests):
        ii = trace.inst[r]
        pol = pols[ii]
        gi = group_of[ii]
        res = results[gi]
        now = trace.times[r]
        if expires[ii]:
            res.evicted_blocks += pol.expire(now)
        rb, wb = trace.reads[r], trace.writes[r]
        k = 0
        if rb:
            k = pol.read(rb)
            length = trace.lengths[r]
            ht = min(k * bs, length)
            res.requests += 1
            res.read_blocks += len(rb)
            res.hit_blocks += k
            res.read_tokens += length
            res.hit_tokens += ht
            if res.timeline is not None:
                _record(res.timeline, now, ii, len(rb), k, length, ht, pol.size, trace.masks.get(r))
                assert res.timeline.per_instance is not None
                res.timeline.per_instance.append(tuple(p.size for p in pols))
        if wb:
            res.inserted_blocks += pol.touch(wb, r, now)
            res.evicted_blocks += _evict_group(pols, members[gi], ii, cfg.groups[gi].quota, mode, batch)
        elif rb:
            pol.after_read(rb, k, r, now)
    for gi, res in enumerate(results):
        if victims:
            assert res.victims is not None
            for ii in members[gi]:
                res.victims.extend(trace.keys[b] for b in pols[ii].victims or [])
    return results


def _evict_group(
    pols: list[ReplayPolicy], members: list[int], writer: int, quota: int, mode: int, batch: int
) -> int:
    """Evict per KVCM's mode after a write by ``writer``; return the blocks evicted."""
    excess = sum(pols[i].size for i in members) - quota
    if excess <= 0:
        return 0
    total = 0
    if mode == 1:
        while total < excess:
            round_total = 0
            for i in members:
                round_total += pols[i].evict(batch)
            if not round_total:
                break
            total += round_total
        return total
    pol = pols[writer]
    while total < excess:
        want = batch if mode == 2 else min(batch, excess - total)
        got = pol.evict(want)
        if not got:
            break
        total += got
    return total


def describe(cfg: OptimizerConfig) -> dict[str, Any]:
    """A JSON-able summary of the config (for ``summary.json``)."""
    return {
        "eviction_mode": cfg.eviction_mode,
        "eviction_mode_name": EVICTION_MODES[cfg.eviction_mode],
        "eviction_batch_size_per_instance": cfg.batch,
        "groups": [
            {
                "group_name": g.name,
                "quota_capacity": g.quota_capacity,
                "used_percentage": g.used_percentage,
                "quota_blocks": g.quota,
                "instances": [{"instance_id": i.instance_id, "policy": i.policy} for i in g.instances],
            }
            for g in cfg.groups
        ],
    }
