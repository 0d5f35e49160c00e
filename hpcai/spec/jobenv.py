"""The job's Python on a cluster: which interpreter a job runs, and the environment hpcai builds for it.

A site's modules rarely give torch >= 2.6 (FSDP2) with accelerate and transformers, so a profile names
the site's way to get them (`environment:` in the profile): a venv on top of the modules' Python built on
the login node (which reaches the package index; compute nodes may not), or the site's container image,
with the packages it lacks in a venv packed as one SquashFS file (LUMI). The environment's folder is
named by a hash of everything that goes into it, so the job script -- rendered on the laptop without a
connection -- knows its path, and a changed recipe is a new environment, never a half-changed old one.

A build writes its completion marker last (the venv's `.hpcai-env.json`, or the SquashFS file moved into
place), so a build killed midway is never used: the job script and the pre-flight check the marker, and
the next build starts that folder over.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hpcai.spec.profiles import ClusterProfile, expand_path

SQUASHFS_MOUNT = "/user-software"  # where LUMI's guide binds a packed venv inside the container
MARKER_NAME = ".hpcai-env.json"
BUILD_MARK = "HPCAI-ENV "
# hpcai's `train` extra, as pyproject.toml pins it: used when the installed metadata cannot be read.
_TRAIN_FALLBACK = ("torch==2.13.0", "accelerate==1.15.0", "transformers==5.23.0", "pillow>=10", "tensorboard>=2.16")
_EXTRA = re.compile(r"""^(?P<req>[^;]+);\s*extra\s*==\s*["']train["']\s*$""")

EnvKind = Literal["venv", "container", "modules", "own"]


class JobEnv(BaseModel):
    """Where the job's Python comes from, resolved for one job (part of the JobSpec)."""

    model_config = ConfigDict(frozen=True)

    kind: EnvKind = "modules"
    python: str = "python"  # the interpreter the job runs (inside the image when there is one)
    image: str | None = None
    home: str | None = None  # built by hpcai: the venv folder, or the SquashFS file
    env_id: str | None = None
    requirements: tuple[str, ...] = ()

    @property
    def built_by_hpcai(self) -> bool:
        return self.home is not None

    @property
    def packed(self) -> bool:
        return self.home is not None and self.home.endswith(".sqsh")

    @property
    def marker(self) -> str | None:
        """A path that exists once (and only once) the build finished."""
        if self.home is None:
            return None
        return self.home if self.packed else f"{self.home}/{MARKER_NAME}"

    @property
    def mount(self) -> str | None:
        """The container's --bind for a packed venv."""
        return f"{self.home}:{SQUASHFS_MOUNT}:image-src=/" if self.packed else None


def train_requirements() -> tuple[str, ...]:
    """The `train` extra of the installed hpcai: the versions hpcai is tested with."""
    try:
        found = [m.group("req").strip() for r in importlib.metadata.requires("hpcai") or [] if (m := _EXTRA.match(r))]
    except importlib.metadata.PackageNotFoundError:
        found = []
    return tuple(r.replace(" ", "") for r in found) or _TRAIN_FALLBACK


def _requirements(profile: ClusterProfile) -> tuple[str, ...]:
    wanted = train_requirements()
    if profile.environment.torch == "base":
        # The modules' or image's torch stays (a ROCm build from PyPI's CUDA wheels would replace it):
        # the pre-flight checks it is new enough.
        wanted = tuple(r for r in wanted if not re.match(r"torch\b(?![-_])", r))
    return wanted


def base_python(profile: ClusterProfile) -> str:
    """The interpreter the venv is built on, once the profile's modules are loaded."""
    return profile.launch.python if profile.launch.python not in (None, "current") else "python3"


def resolve(
    profile: ClusterProfile,
    *,
    placeholders: dict[str, str],
    container: str | None,
    own_python: str | None = None,
) -> JobEnv:
    """The job's environment: the user's own interpreter or image when given, else the profile's way."""
    spec = profile.environment
    if profile.launch.python == "current":
        return JobEnv(kind="modules", python=sys.executable)
    if own_python is not None:
        return JobEnv(kind="own", python=own_python, image=container)
    if container is not None and container != spec.image:
        return JobEnv(kind="container", python="python", image=container)  # the user's own image, as is
    if spec.default == "modules" and container is None:
        return JobEnv(kind="modules", python=profile.launch.python or "python")
    image = container or (spec.image if spec.default == "container" else None)
    if image is not None and spec.pack != "squashfs":
        return JobEnv(kind="container", python="python", image=image)
    requirements = _requirements(profile)
    env_id = _env_id(profile, image, requirements)
    fs = spec.filesystem or profile.runs_on
    root = expand_path(profile.filesystems[fs].path, placeholders, field=f"filesystems.{fs}.path")
    folder = f"{root.rstrip('/')}/{spec.subdir.strip('/')}"
    if image is not None:
        return JobEnv(
            kind="container", python=f"{SQUASHFS_MOUNT}/bin/python", image=image, home=f"{folder}/{env_id}.sqsh",
            env_id=env_id, requirements=requirements,
        )  # fmt: skip
    return JobEnv(
        kind="venv", python=f"{folder}/{env_id}/bin/python", home=f"{folder}/{env_id}", env_id=env_id,
        requirements=requirements,
    )  # fmt: skip


def _env_id(profile: ClusterProfile, image: str | None, requirements: tuple[str, ...]) -> str:
    spec = profile.environment
    recipe = {
        "image": image,
        "modules": [profile.modules.use, profile.modules.load, [] if image else profile.modules.software],
        "container_modules": profile.container.modules if image and profile.container else [],
        "conda_env": spec.conda_env,
        "base_python": base_python(profile),
        "system_site_packages": spec.system_site_packages,
        "pip_index": spec.pip_index,
        "requirements": list(requirements),
    }
    if spec.enter or profile.launch.directives:  # a site's software environment (CSCS's uenv) is the base too
        recipe["site_environment"] = [spec.enter, profile.launch.directives]
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"py{sys.version_info.major}-{digest[:12]}"


def missing_message(cluster: str, env: JobEnv) -> str:
    return (
        f"the job environment {env.home} on {cluster} is not built (or its build did not finish). "
        f"Build it once from your machine: `hpcai env build --cluster {cluster}` (it runs pip on the login node; "
        "minutes), then submit again."
    )
