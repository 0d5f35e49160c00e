"""Cluster profiles: what hpcai knows about a site, one YAML file each, validated by these models.

Shipped profiles live in `clusters/`; a file of the same name in `<config dir>/clusters/` is merged over
the shipped one (so a user can change one value when a site changes), a file of a new name adds a cluster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hpcai.errors import ConfigError, NotFoundError, closest
from hpcai.spec.profile_files import profile_names, profile_source, shipped_profile_dir, user_profile_dir
from hpcai.spec.profile_parts import (
    ENV_NAME,
    SECRET_NAME,
    Access,
    Budget,
    Container,
    Environment,
    Filesystem,
    Launch,
    Modules,
    NodeShape,
    Partition,
    PbsSettings,
    Qos,
    Quota,
    Strict,
)
from hpcai.spec.read_once import remembered
from hpcai.spec.yamlfiles import deep_merge, load_model, read_yaml_mapping


class ClusterProfile(Strict):
    description: str = Field(description="One line about the machine")
    aliases: list[str] = Field(default=[], description="Short names accepted by --cluster")
    scheduler: Literal["slurm", "pbs", "local"] = Field(description="Batch system")
    access: Access
    partitions: list[Partition] = Field(min_length=1, description="Partitions (Slurm) or queues (PBS)")
    qos: list[Qos] = Field(default=[], description="Quality-of-service levels")
    node: NodeShape
    accelerator: Literal["cuda", "rocm", "cpu"] = Field(description="GPU vendor stack")
    modules: Modules = Modules()
    container: Container | None = None
    environment: Environment = Environment()
    env: dict[str, str] = Field(default={}, description="Communication and runtime variables (NCCL/RCCL...)")
    filesystems: dict[str, Filesystem] = Field(min_length=1)
    runs_on: str = Field(description="Filesystem (key of `filesystems`) that holds run directories")
    runs_subdir: str = Field(default="hpcai/runs", description="Run directories' folder inside `runs_on`")
    caches: str | None = Field(
        default=None,
        description="Filesystem (key of `filesystems`) for the caches of jobs (HF_HOME, TORCH_HOME, XDG_CACHE_HOME "
        "in <its path>/<user>/.cache) where $HOME is small; a value the user exported wins. Unset: $HOME's",
    )
    compute_internet: bool = Field(description="Whether compute nodes reach the internet")
    account_required: bool = Field(default=True, description="Jobs must name an account/budget")
    launch: Launch
    pbs: PbsSettings | None = None
    budget: Budget = Budget()
    quota: Quota = Quota()
    pack_data: bool | Literal["squashfs"] = Field(
        default=False,
        description="Stage a local data folder given to submit (--set data=DIR) packed: `true`, into tar shards, "
        "as `hpcai stage --pack` does; `squashfs`, as one SquashFS image the job's container mounts at "
        "/hpcai-data/data (as `hpcai stage --squashfs`). For sites that cap the number of files per project",
    )
    sources: list[str] = Field(default=[], description="Where these facts come from")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"not valid variable names: {', '.join(bad)}")
        secret = [k for k in value if SECRET_NAME.search(k)]
        if secret:
            raise ValueError(
                f"{', '.join(secret)} look(s) like a secret, and profile variables are written into every job "
                "script: keep it in a file on the cluster readable only by you (chmod 600) and let your code "
                "read it there"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterProfile:
        if self.runs_on not in self.filesystems:
            raise ValueError(f"runs_on '{self.runs_on}' is not one of filesystems: {', '.join(self.filesystems)}")
        if self.caches is not None and self.caches not in self.filesystems:
            raise ValueError(f"caches '{self.caches}' is not one of filesystems: {', '.join(self.filesystems)}")
        if sum(p.default for p in self.partitions) > 1:
            raise ValueError("only one partition may be marked default")
        known = {q.name for q in self.qos}
        for part in self.partitions:
            unknown = [q for q in [*part.qos, part.default_qos] if q is not None and q not in known]
            if unknown:
                raise ValueError(f"partition {part.name} names undefined qos {', '.join(unknown)}")
        env_fs = self.environment.filesystem
        if env_fs is not None and env_fs not in self.filesystems:
            raise ValueError(
                f"environment.filesystem '{env_fs}' is not one of filesystems: {', '.join(self.filesystems)}"
            )
        if self.environment.default == "container" and (self.environment.image is None or self.container is None):
            raise ValueError("environment.default: container needs environment.image and a `container:` section")
        if self.pack_data == "squashfs" and self.container is None:
            raise ValueError("pack_data: squashfs needs a `container:` section (the job's container mounts the image)")
        if self.environment.pack == "squashfs" and self.container is None:
            raise ValueError("environment.pack: squashfs needs a `container:` section (the venv is built in it)")
        if self.scheduler == "pbs" and self.pbs is None:
            raise ValueError("a pbs scheduler needs a `pbs:` section")
        return self

    def partition(self, name: str | None) -> Partition:
        if name is None:
            return next((p for p in self.partitions if p.default), self.partitions[0])
        for part in self.partitions:
            if part.name == name:
                return part
        names = [p.name for p in self.partitions]
        raise NotFoundError(
            f"--partition: '{name}' is not a partition of this cluster.{closest(name, names)} "
            f"Known: {', '.join(names)}."
        )

    def qos_named(self, name: str) -> Qos | None:
        return next((q for q in self.qos if q.name == name), None)


def resolve_alias(name: str) -> str:
    """The profile name for `name`, which may be an alias (e.g. leonardo -> leonardo-booster)."""
    if profile_source(name):
        return name
    for candidate in profile_names():
        for path in profile_source(candidate):
            aliases = read_yaml_mapping(path).get("aliases") or []
            if isinstance(aliases, list) and name in aliases:
                return candidate
    return name


def load_profile(name: str) -> ClusterProfile:
    """The validated profile (shipped file with the user's overrides merged over it); validated once per
    command (see read_once)."""
    name = resolve_alias(name)
    return remembered(f"profile:{name}", lambda: _read_profile(name))


def _read_profile(name: str) -> ClusterProfile:
    files = profile_source(name)
    if not files:
        known = profile_names()
        raise NotFoundError(
            f"unknown cluster '{name}'.{closest(name, known)} Known clusters: {', '.join(known)}. "
            f"Add your own as {user_profile_dir()}/{name}.yaml (see README, 'Adding a cluster')."
        )
    data: dict[str, object] = {}
    for path in files:
        data = deep_merge(data, read_yaml_mapping(path))
    source = " merged over ".join(str(p) for p in reversed(files))
    return load_model(ClusterProfile, data, source)


def load_all_profiles() -> dict[str, ClusterProfile]:
    return {name: load_profile(name) for name in profile_names()}


def expand_path(pattern: str, values: dict[str, str], *, field: str) -> str:
    """Fill `{user}`, `{account}`, `{state_dir}` into a filesystem path pattern."""
    try:
        return pattern.format_map(values)
    except (IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{field}: the path '{pattern}' is not a valid pattern ({exc}); only {{user}}, {{account}} and "
            "{state_dir} may appear in braces (write a literal brace as {{ or }})."
        ) from None
    except KeyError as exc:
        missing = exc.args[0]
        hint = (
            "pass --account or set `account` for this cluster in config.toml"
            if missing == "account"
            else ("set `user` for this cluster in config.toml" if missing == "user" else "remove it from the pattern")
        )
        raise ConfigError(f"{field}: the path '{pattern}' needs {{{missing}}}, which is not known: {hint}.") from exc


__all__ = [
    "ClusterProfile",
    "ConfigError",
    "load_all_profiles",
    "load_profile",
    "profile_names",
    "profile_source",
    "shipped_profile_dir",
    "user_profile_dir",
]
