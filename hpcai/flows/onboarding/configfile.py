"""Writing the user's config.toml: only the keys onboarding owns, comments and other keys kept (tomlkit)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from hpcai.errors import ConfigError
from hpcai.spec.userconfig import ClusterSettings, config_path, load_user_config


@dataclass(frozen=True)
class ConfigChange:
    path: Path
    changed: bool
    backup: Path | None


def update_cluster_settings(cluster: str, values: dict[str, str | None], *, make_default: bool = False) -> ConfigChange:
    """Set `[clusters.<cluster>]` keys (None leaves a key as it is) and optionally `default_cluster`."""
    path = config_path()
    load_user_config()  # a malformed file is reported (file, field, fix) before anything is written
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    document = tomlkit.parse(text)
    clusters = document.get("clusters")
    if clusters is None:
        clusters = tomlkit.table(is_super_table=True)
        document["clusters"] = clusters
    section = clusters.get(cluster)
    if section is None:
        section = tomlkit.table()
        clusters[cluster] = section
    if not isinstance(section, Table):
        raise ConfigError(f"{path}: clusters.{cluster} must be a table ([clusters.{cluster}]). Fix it by hand first.")
    for key, value in values.items():
        if key not in ClusterSettings.model_fields:
            raise AssertionError(f"unknown cluster setting {key}")
        if value is not None:
            section[key] = value
    if make_default:
        document["default_cluster"] = cluster
    new_text = tomlkit.dumps(document)
    if new_text == text:
        return ConfigChange(path, False, None)
    backup = None
    if path.is_file():
        backup = path.with_name(f"{path.name}.hpcai-backup-{dt.datetime.now():%Y%m%d-%H%M%S-%f}")
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)
    from hpcai.backends.session import Session

    Session.settings_changed()
    load_user_config()  # what was written must read back as valid
    return ConfigChange(path, True, backup)
