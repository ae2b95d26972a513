"""Enforce the import table of docs/architecture.md by parsing every module's imports.

Each kvsim package may import only the kvsim packages its row allows, and some rows ban third-party
modules (``kvsim.cache`` never imports simpy, grpc, the wall clock or global randomness; engines never
import grpc; core imports nothing but the standard library and numpy).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvsim"

EVERYTHING_BELOW_CLUSTER = {
    "core",
    "hardware",
    "models",
    "perf",
    "calibrate",
    "cache",
    "cache.optimizer",
    "workloads",
    "metrics",
    "engines",
    "serve",
    "connectors",
}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "hardware": {"core"},
    "models": {"core"},
    "perf": {"core", "hardware", "models"},
    "calibrate": {"core", "hardware", "models", "perf"},
    "cache": {"core"},
    "cache.optimizer": {"core", "cache", "workloads", "models"},
    "workloads": {"core", "models", "cache"},
    "metrics": {"core", "models"},
    "engines": {"core", "perf", "cache", "workloads", "metrics", "hardware", "models"},
    "serve": {"core", "cache"},
    "connectors": {"core", "cache", "serve"},
    "cluster": EVERYTHING_BELOW_CLUSTER,
    "sweep": EVERYTHING_BELOW_CLUSTER | {"cluster"},
    "cli": EVERYTHING_BELOW_CLUSTER | {"cluster", "sweep", "cli"},
}
THIRD_PARTY_BANNED: dict[str, set[str]] = {
    "cache": {"simpy", "grpc", "time", "random", "threading", "aiohttp"},
    "cache.optimizer": {"grpc"},
    "engines": {"grpc"},
    "workloads": {"grpc", "simpy"},
    "metrics": {"grpc", "simpy"},
    "perf": {"grpc", "simpy"},
    "calibrate": {"grpc", "simpy"},
    "hardware": {"grpc", "simpy"},
    "models": {"grpc", "simpy"},
}
#: Workloads may use the cache for block keys only.
WORKLOADS_CACHE_MODULES = {"kvsim.cache", "kvsim.cache.keys"}
_GLOBAL_NP_RANDOM = re.compile(r"\bnp\.random\.(?!Generator|PCG64|SeedSequence|default_rng\b)\w+\(")
STDLIB = set(sys.stdlib_module_names)


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if len(parts) == 1:
        return "root"
    if parts[0] == "cache" and len(parts) > 2 and parts[1] == "optimizer":
        return "cache.optimizer"
    return parts[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "kvsim":
                names.extend(f"kvsim.{alias.name}" for alias in node.names if not alias.name.startswith("_"))
    return names


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "kvsim" or len(parts) == 1:
        return None
    if parts[1] == "cache" and len(parts) > 2 and parts[2] == "optimizer":
        return "cache.optimizer"
    return parts[1]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layer_table(path: Path) -> None:
    layer = _layer(path)
    if layer == "root" or "_pb2" in path.name:
        return
    allowed = ALLOWED.get(layer)
    assert allowed is not None, f"package kvsim/{layer} has no row in the import table"
    for module in _imports(path):
        target = _target_layer(module)
        top = module.split(".")[0]
        if target is not None:
            if target == layer:
                continue
            assert target in allowed, f"kvsim/{layer} may not import {module}"
            if layer == "workloads" and target == "cache":
                assert module in WORKLOADS_CACHE_MODULES, (
                    f"workloads may use kvsim.cache block keys only: {module}"
                )
        elif top != "kvsim":
            assert top not in THIRD_PARTY_BANNED.get(layer, set()), f"kvsim/{layer} may not import {top}"
            if layer == "core":
                assert top in STDLIB or top in {"numpy", "__future__"}, f"kvsim/core may not import {top}"


def test_cache_never_uses_global_randomness_or_wall_clock() -> None:
    for path in (PACKAGE / "cache").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not _GLOBAL_NP_RANDOM.search(text), f"{path.name} uses the global numpy random state"
        assert "datetime.now" not in text and "datetime.utcnow" not in text, f"{path.name} reads the clock"


def test_cache_init_does_not_import_the_optimizer() -> None:
    init = PACKAGE / "cache" / "__init__.py"
    if init.exists():
        assert all("optimizer" not in m for m in _imports(init))


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    """The parser must see imports inside functions and `from kvsim import x` forms."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import simpy\n    from kvsim import engines\n")
    assert _imports(bad) == ["simpy", "kvsim", "kvsim.engines"]
