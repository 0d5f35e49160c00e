"""Where hpcai finds its shipped data, the user's configuration and its state."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Shipped `templates`, `clusters` or `workloads`: inside the wheel, else the source checkout."""
    installed = _PACKAGE_DIR / "_data" / kind
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / kind


def config_dir() -> Path:
    """`$HPCAI_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hpcai`, else `~/.config/hpcai`."""
    explicit = os.environ.get("HPCAI_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "hpcai"


def state_dir() -> Path:
    """`$HPCAI_HOME`, else `$XDG_STATE_HOME/hpcai`, else `~/.local/state/hpcai`."""
    explicit = os.environ.get("HPCAI_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "hpcai"
