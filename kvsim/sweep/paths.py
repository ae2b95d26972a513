"""Dotted paths into an experiment config: ``gpu``, ``server.tp``, ``kvcm.type_quotas.nfs``,
``kvcm.storages.0.tier``, ``cluster.instances``.

A path names one value of the nested mapping an experiment file becomes; each component is a mapping
key, or a list index written as a number. Nothing here knows which sections exist: the experiment
loader (:func:`kvsim.engines.experiment.merge_config`) says which keys are valid, so a section added to
experiment files later (``cluster:``) can be swept as soon as the loader accepts it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kvsim.core.errors import ConfigError

#: Returned by :func:`get_path` when a path is absent and no default was given.
MISSING: Any = object()


def split_path(path: str, where: str = "path") -> tuple[str | int, ...]:
    """Split ``"a.b.0.c"`` into ``("a", "b", 0, "c")``; an empty component is a one-line error."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: {path!r} is not a path such as server.tp")
    parts = path.split(".")
    if any(not part.strip() for part in parts):
        raise ConfigError(f"{where}: {path!r} is not a path such as server.tp")
    return tuple(int(part) if part.isdigit() else part for part in parts)


def get_path(config: Mapping[str, Any], path: str, default: Any = MISSING) -> Any:
    """The value at ``path`` in ``config``, or ``default`` when some component is absent."""
    node: Any = config
    for part in split_path(path):
        in_list = isinstance(part, int) and isinstance(node, list) and part < len(node)
        if not (in_list or (isinstance(node, Mapping) and part in node)):
            return default
        node = node[part]
    return node


def set_path(config: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``config`` with ``path`` set to ``value``, creating mappings on the way.

    Raises:
        ConfigError: a component runs into a value that is neither a mapping nor a list, or a list index
            is out of range.
    """
    result = copy.deepcopy(dict(config))
    parts = split_path(path)
    node: Any = result
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(f"{path}: {here} is not an index of a list of {len(node)}")
            if last:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: cannot set a key inside {type(node).__name__} value at {here}")
        if last:
            node[part] = copy.deepcopy(value)
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
    return result


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested mapping keyed by dotted path; a list becomes one JSON string.

    Lists are kept whole because their elements (a KVCM section's storages) only make sense together.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten(value, f"{name}."))
            else:
                flat[name] = None
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, sort_keys=True, default=str)
        else:
            flat[name] = value
    return flat


def nest(path: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for ``"a.b"``: one setting as an experiment-file override."""
    return set_path({}, path, value)
