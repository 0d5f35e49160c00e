"""The user's own settings per cluster (`<config dir>/config.toml`): user name, account, paths."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hpcai.errors import ConfigError
from hpcai.paths import config_dir
from hpcai.spec.read_once import remembered
from hpcai.spec.yamlfiles import load_model, not_utf8


class ClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = Field(default=None, description="Your login name on the cluster")
    account: str | None = Field(default=None, description="Default account/budget/project for jobs")
    container: str | None = Field(default=None, description="Default container image (.sif) on the cluster")
    python: str | None = Field(
        default=None,
        description="An interpreter of your own on the cluster for jobs (e.g. your conda env's python); hpcai's "
        "job environment is then neither built nor used",
    )
    ssh_host: str | None = Field(
        default=None,
        description="Reach the cluster over SSH through this ~/.ssh/config Host (unset: hpcai runs on the "
        "login node itself)",
    )
    data_filesystem: str | None = Field(
        default=None,
        description="Filesystem (a key of the profile's `filesystems`) where staged data lives; unset: runs_on",
    )


class UserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_cluster: str = Field(default="local", description="Cluster used when --cluster is not given")
    clusters: dict[str, ClusterSettings] = Field(default={}, description="Per-cluster settings")

    def for_cluster(self, name: str) -> ClusterSettings:
        return self.clusters.get(name, ClusterSettings())


def config_path() -> Path:
    return config_dir() / "config.toml"


def load_user_config() -> UserConfig:
    """The user config; read once per command (see read_once)."""
    return remembered("config", _read_user_config)


def _read_user_config() -> UserConfig:
    path = config_path()
    if not path.is_file():
        return UserConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}. Fix the syntax at that line.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}). Check its permissions.") from None
    return load_model(UserConfig, data, str(path))
