"""User GPU profiles: profiles written by ``kvsim calibrate --install``, searched after the packaged ones.

A user profile is a folder ``<dir>/<NAME>/`` holding ``profile.yaml`` (the same schema as the packaged
profiles in ``kvsim/hardware/profiles/``) and the calibration tables beside it. The folders searched come
from :func:`kvsim.core.env.profile_search_dirs`: ``KVSIM_PROFILE_PATH`` (several folders separated by
``os.pathsep``) or, when unset, ``~/.config/kvsim/profiles``. Profiles never go into site-packages, so
upgrading kvsim never loses them and a read-only install still accepts new GPUs.

:func:`kvsim.hardware.profile.load_profile` asks :func:`find_user_profile` only after no packaged profile
matched, so a user profile can never shadow a packaged one.
"""

from __future__ import annotations

from pathlib import Path

from kvsim.core.env import profile_search_dirs
from kvsim.hardware.profile import GpuProfile, load_profile_folder

PROFILE_FILE = "profile.yaml"


def user_profile_dirs() -> list[Path]:
    """The folders searched for user profiles, in search order (they need not exist)."""
    return profile_search_dirs()


def install_dir() -> Path:
    """Where ``kvsim calibrate --install`` writes new profiles: the first searched folder."""
    return user_profile_dirs()[0]


def _profile_folders() -> list[Path]:
    folders = []
    for root in user_profile_dirs():
        if root.is_dir():
            folders.extend(
                p for p in sorted(root.iterdir(), key=lambda p: p.name) if (p / PROFILE_FILE).is_file()
            )
    return folders


def read_profile_file(path: Path, allow_roofline: bool = False) -> GpuProfile:
    """Load the profile whose ``profile.yaml`` is ``path`` (with the tables beside it)."""
    return load_profile_folder(Path(path).parent, allow_roofline)


def load_user_profiles(allow_roofline: bool = False) -> dict[str, GpuProfile]:
    """Every user profile by name; when two folders hold the same name, the earlier folder wins.

    Not cached: a profile installed during this process (``kvsim calibrate --install``) is seen at once.
    """
    found: dict[str, GpuProfile] = {}
    for folder in _profile_folders():
        profile = load_profile_folder(folder, allow_roofline)
        found.setdefault(profile.name, profile)
    return found


def user_profile_names() -> list[str]:
    """Names of the user profiles (folder names; ``profile.yaml`` is not parsed), sorted."""
    return sorted({folder.name for folder in _profile_folders()})


def find_user_profile(name: str, allow_roofline: bool = False) -> GpuProfile | None:
    """The user profile called ``name`` or one of its aliases (case-insensitive), or ``None``.

    Only the matching profile is parsed, so a broken profile elsewhere in the search path does not
    break lookups of the others.
    """
    wanted = name.strip().lower()
    for folder in _profile_folders():
        if folder.name.lower() == wanted:
            return load_profile_folder(folder, allow_roofline)
    for profile in load_user_profiles(allow_roofline).values():
        if wanted == profile.name.lower() or wanted in (a.lower() for a in profile.aliases):
            return profile
    return None
