"""What the connector modules import: from the service only ``kvsim.serve.client`` (the layer table's
row), from the cache its public types and keys, and never an engine or torch at import time, so that
``kvsim.connectors`` works where SGLang, vLLM and torch are not installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kvsim" / "connectors"
#: The modules that subclass an engine's base class, and the engine they import.
ENGINE_MODULES = {"sglang_backend.py": "sglang", "vllm_connector.py": "vllm"}


def top_level_imports(path: Path) -> list[str]:
    """Modules imported at module level (not inside functions)."""
    names: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def all_imports(path: Path) -> list[str]:
    """Every module imported anywhere in the file."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_connectors_use_only_the_service_client_and_the_cache_model(path: Path) -> None:
    for module in all_imports(path):
        if module.startswith("kvsim.serve"):
            assert module == "kvsim.serve.client", f"{path.name} imports {module}"
        if module.startswith("kvsim.cache"):
            assert module == "kvsim.cache", f"{path.name} imports {module}: use the public kvsim.cache names"
        assert module.split(".")[0] != "kvsim" or module.split(".")[1] in (
            "cache",
            "serve",
            "connectors",
            "core",
        )
    heavy = {"torch", "sglang", "vllm", "mooncake"} - {ENGINE_MODULES.get(path.name, "")}
    assert not heavy & {m.split(".")[0] for m in top_level_imports(path)}, (
        f"{path.name} imports {heavy} at import"
    )


def test_importing_the_package_loads_no_engine_and_no_torch() -> None:
    code = (
        "import sys, kvsim.connectors, kvsim.connectors.sglang_adapter, kvsim.connectors.vllm_adapter; "
        "print(sorted(m for m in ('torch', 'sglang', 'vllm', 'mooncake') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
