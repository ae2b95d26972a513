"""kvsim/cache keeps to its layer: only kvsim.core from kvsim, only numpy/yaml from third parties, and
no wall clock, global randomness, threads, simpy or grpc (ARCHITECTURE.md import table)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import kvsim.cache

CACHE_DIR = Path(kvsim.cache.__file__).parent
ALLOWED_THIRD_PARTY = {"numpy", "yaml"}
# redis-py only inside the Redis store module (imported lazily by the store factory).
ALLOWED_IN = {"redis": {Path("store/redis.py")}}
BANNED_STDLIB = {"time", "random", "threading", "multiprocessing", "asyncio", "concurrent", "secrets"}
# numpy.random names that build an explicit, seedable generator (everything else is global state).
ALLOWED_NP_RANDOM = {"Generator", "PCG64", "SeedSequence", "default_rng"}


def sources() -> list[Path]:
    return sorted(p for p in CACHE_DIR.rglob("*.py") if "optimizer" not in p.relative_to(CACHE_DIR).parts)


def imported_modules(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_imports_follow_the_layer_table() -> None:
    offenders: list[str] = []
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        for module in imported_modules(tree):
            top = module.split(".")[0]
            rel = path.relative_to(CACHE_DIR)
            if top == "kvsim":
                if not (module.startswith("kvsim.core") or module.startswith("kvsim.cache")):
                    offenders.append(f"{rel}: {module}")
            elif rel in ALLOWED_IN.get(top, ()):
                continue
            elif top in BANNED_STDLIB or (
                top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY and top != "__future__"
            ):
                offenders.append(f"{rel}: {module}")
    assert offenders == []


def test_no_wall_clock_or_global_random_calls() -> None:
    offenders: list[str] = []
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain = ast.unparse(node)
                if chain.endswith(("datetime.now", "datetime.utcnow", "date.today", "os.urandom")):
                    offenders.append(f"{path.name}: {chain}")
                parts = chain.split(".")
                # `np.random.X` (the bare `np.random` node inside it is skipped: X decides).
                is_np_random = len(parts) >= 3 and parts[0] in {"np", "numpy"} and parts[1] == "random"
                if is_np_random and parts[2] not in ALLOWED_NP_RANDOM:
                    offenders.append(f"{path.name}: {chain}")
            if isinstance(node, ast.ImportFrom) and node.module in {"numpy.random", "datetime"}:
                names = {a.name for a in node.names}
                if node.module == "numpy.random" and not names <= ALLOWED_NP_RANDOM:
                    offenders.append(f"{path.name}: from numpy.random import {sorted(names)}")
    assert offenders == []


def test_package_init_does_not_import_the_optimizer() -> None:
    tree = ast.parse((CACHE_DIR / "__init__.py").read_text())
    assert not [m for m in imported_modules(tree) if "optimizer" in m]
