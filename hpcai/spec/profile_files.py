"""Where cluster profiles are: the shipped files and the user's own. No pydantic here: the listing of
profiles (`clusters list`, hpcai.spec.profile_index) must not pay for importing the validation models."""

from __future__ import annotations

import re
from pathlib import Path

from hpcai.paths import config_dir, data_dir


def shipped_profile_dir() -> Path:
    return data_dir("clusters")


def user_profile_dir() -> Path:
    return config_dir() / "clusters"


def _yaml_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))}


def profile_names() -> list[str]:
    return sorted(set(_yaml_files(shipped_profile_dir())) | set(_yaml_files(user_profile_dir())))


_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def profile_source(name: str) -> list[Path]:
    """The files that make up profile `name`: the shipped one and/or the user's override."""
    if not _PROFILE_NAME.fullmatch(name):
        return []
    return [d[name] for d in (_yaml_files(shipped_profile_dir()), _yaml_files(user_profile_dir())) if name in d]
