"""The one place kvsim reads environment variables (besides the CLI entry points).

Library code asks these helpers instead of touching :data:`os.environ`, so that the set of variables kvsim
honours stays small, documented and easy to fake in tests (``monkeypatch.setenv``).

Variables read here:

``KVSIM_PROFILE_PATH``
    Extra folders holding user GPU profiles (``<folder>/<NAME>/profile.yaml``), separated by
    :data:`os.pathsep`. When unset, user profiles live in ``$XDG_CONFIG_HOME/kvsim/profiles`` (by default
    ``~/.config/kvsim/profiles``).

Settings of ``kvsim serve``
    Each dotted key of ``kvsim.serve.config`` (``kvcm.service.rpc_port``, ``kvsim.data_dir``, ...) under its
    own name or its UPPER_SNAKE form (``KVCM_SERVICE_RPC_PORT``, ``KVSIM_DATA_DIR``); see
    :func:`env_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROFILE_PATH_VAR = "KVSIM_PROFILE_PATH"


def env_str(name: str) -> str | None:
    """Return the variable ``name`` stripped of surrounding blanks, or ``None`` when unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def env_paths(name: str) -> list[Path] | None:
    """Return the :data:`os.pathsep`-separated folders in ``name`` (``~`` expanded, empty items dropped).

    ``None`` means the variable is unset or empty, so that callers can tell "use the default" from
    "the user listed these folders".
    """
    value = env_str(name)
    if value is None:
        return None
    return [Path(item).expanduser() for item in value.split(os.pathsep) if item.strip()]


def user_config_dir() -> Path:
    """kvsim's per-user configuration folder: ``$XDG_CONFIG_HOME/kvsim``, else ``~/.config/kvsim``."""
    base = env_str("XDG_CONFIG_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".config"
    return root / "kvsim"


def profile_search_dirs() -> list[Path]:
    """Folders searched for user GPU profiles, in order (``KVSIM_PROFILE_PATH`` or the default one)."""
    listed = env_paths(PROFILE_PATH_VAR)
    if listed:
        return listed
    return [user_config_dir() / "profiles"]


def env_settings(keys: Iterable[str]) -> dict[str, str]:
    """The values the environment gives for dotted setting ``keys`` (``kvcm.service.rpc_port``).

    A key is looked up under its own dotted name first and then under its UPPER_SNAKE form
    (``KVCM_SERVICE_RPC_PORT``); unset or empty variables are left out. Used by ``kvsim serve``, whose
    precedence is defaults < config file < environment < flags.
    """
    found: dict[str, str] = {}
    for key in keys:
        for name in (key, key.replace(".", "_").upper()):
            value = env_str(name)
            if value is not None:
                found[key] = value
                break
    return found
