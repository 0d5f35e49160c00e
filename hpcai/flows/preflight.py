"""Pre-flight: before a job is queued, the Python it will run has what the workload needs (torch imported for
real and asked for FSDP2; the other packages located, their versions read from their metadata).

The check runs on the login node (or this machine) with the job's own set-up -- its module loads, its
container, its interpreter -- and reports versions. A missing package or a torch too old for FSDP2 fails
the submission (exit 2) instead of a job that waits hours in a queue to die at `import`. A check that
cannot run at all on the login node (no `module` command, no container runtime there) is a warning, not a
refusal: the compute nodes may well have what the login node lacks. A passing result is cached per cluster
and environment for a day, so repeated submissions cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcai.backends.transport import Transport
from hpcai.errors import ValidationError
from hpcai.paths import state_dir
from hpcai.shellquote import join, quote
from hpcai.spec.jobenv import JobEnv
from hpcai.spec.jobspec import JobSpec
from hpcai.spec.profiles import ClusterProfile
from hpcai.spec.workloads import Workload

CACHE_TTL_S = 86400
MARK = "HPCAI-PREFLIGHT "
MISSING = "HPCAI-PREFLIGHT-NO-ENVIRONMENT"
_REQUIREMENT = re.compile(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9.]*))?")

# Runs on the target. Versions come from the installed distributions' metadata (fast); torch -- the
# package whose import breaks on a wrong CUDA/ROCm stack -- is really imported and asked for FSDP2. The
# others are located (find_spec) but not imported, which would double the check's time for little.
_PROBE = """
import importlib.metadata, importlib.util, json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "modules": {}}
for name in sys.argv[1:]:
    try:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError("No module named " + repr(name))
        if name == "torch":
            import torch
            version = str(torch.__version__)
            try:
                from torch.distributed.fsdp import fully_shard  # noqa: F401
                out["fsdp2"] = True
            except BaseException:
                out["fsdp2"] = False
        else:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "?"  # importable, installed under another distribution name (a user's module)
        out["modules"][name] = {"version": version}
    except BaseException as exc:
        out["modules"][name] = {"error": (type(exc).__name__ + ": " + str(exc))[:300]}
print("HPCAI-PREFLIGHT " + json.dumps(out))
"""


@dataclass
class PreflightResult:
    ok: bool
    checked: bool  # False: the check could not run here (a warning, not a refusal)
    summary: str
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    missing_environment: bool = False  # hpcai's job environment is not built: `hpcai env build` fixes it

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "summary": self.summary, "versions": self.versions,
                "cached": self.cached}  # fmt: skip


def job_extras(parameters: Mapping[str, object]) -> tuple[str, ...]:
    """Packages a job needs beyond its workload's because of how it was asked to run (tracker=wandb)."""
    return ("wandb",) if parameters.get("tracker") == "wandb" else ()


def requirements(workload: Workload, extras: tuple[str, ...] = ()) -> list[tuple[str, tuple[int, ...] | None]]:
    found = []
    for item in (*workload.spec.requires, *extras):
        match = _REQUIREMENT.fullmatch(item.strip())
        if match is None:
            continue
        minimum = tuple(int(p) for p in match.group(2).split(".") if p) if match.group(2) else None
        found.append((match.group(1), minimum))
    return found


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+]", text):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


@dataclass(frozen=True)
class JobEnvironment:
    """What decides which Python a job gets: the cluster's profile (modules), a container, the interpreter."""

    cluster: str
    profile: ClusterProfile
    python: str
    container: str | None = None
    built: JobEnv | None = None  # the environment hpcai builds for the job, when it is one

    @classmethod
    def of(cls, job: JobSpec, profile: ClusterProfile) -> JobEnvironment:
        built = job.environment if job.environment.built_by_hpcai else None
        return cls(job.cluster, profile, job.python, job.container, built)


def probe_command(env: JobEnvironment, workload: Workload, extras: tuple[str, ...] = ()) -> str:
    """The shell command that sets up the job's environment as its script does and runs the probe."""
    from hpcai.render.setup import container_prefix, setup_lines

    lines = ["set -e"]
    if env.built is not None and env.built.marker is not None:
        lines.append(f"if [ ! -e {quote(env.built.marker)} ]; then echo {quote(MISSING)}; exit 0; fi")
    lines += setup_lines(env.profile, env.container is not None)
    words = container_prefix(env.profile, env.container, env.built.mount if env.built else None)
    words += [env.python, "-c", _PROBE, *(name for name, _ in requirements(workload, extras))]
    lines.append(join(words))
    return "\n".join(lines)


def _cache_path() -> str:
    return str(state_dir() / "preflight.json")


def _cache_key(cluster: str, command: str) -> str:
    return hashlib.sha256(f"{cluster}\0{command}".encode()).hexdigest()


def _cached(key: str) -> dict[str, Any] | None:
    try:
        with open(_cache_path(), encoding="utf-8") as handle:
            entry = json.load(handle).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and time.time() - float(entry.get("time", 0)) < CACHE_TTL_S:
        return entry
    return None


def _remember(key: str, versions: dict[str, str]) -> None:
    path = _cache_path()
    try:
        with open(path, encoding="utf-8") as handle:
            cache = json.load(handle)
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    cache[key] = {"time": time.time(), "versions": versions}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(cache, handle)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs the next check


def run_preflight(
    transport: Transport,
    env: JobEnvironment,
    workload: Workload,
    *,
    use_cache: bool = True,
    extras: tuple[str, ...] = (),
) -> PreflightResult:
    needed = requirements(workload, extras)
    if not needed:
        return PreflightResult(True, True, "the workload needs no Python packages checked")
    profile = env.profile
    command = probe_command(env, workload, extras)
    key = _cache_key(env.cluster, command)
    entry = _cached(key) if use_cache else None
    built = env.built
    # A remembered pass says nothing of an environment deleted or half-rebuilt since: look (cheap).
    marker = built.marker if built is not None and entry is not None else None
    if built is not None and marker is not None and not transport.run(["test", "-e", marker], timeout=60).ok:
        return _not_built(env.cluster, built)
    if entry is not None:
        remembered = {str(k): str(v) for k, v in dict(entry.get("versions", {})).items()}
        return PreflightResult(True, True, _describe(remembered), remembered, cached=True)
    from hpcai.render.setup import login_shell

    result = transport.run(login_shell(profile, command), timeout=180)
    if built is not None and MISSING in result.stdout.split():
        return _not_built(env.cluster, built)
    line = next((x for x in result.stdout.splitlines() if x.startswith(MARK)), None)
    if line is None:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1][:300]
        plain = env.container is None and not profile.modules.load and not profile.modules.software
        if result.returncode == 127 and plain:
            return PreflightResult(False, True, f"`{env.python}` is not there: {detail}")
        return PreflightResult(True, False, f"could not run the check on the login node ({detail})")
    try:
        report = json.loads(line[len(MARK) :])
    except ValueError:
        return PreflightResult(True, False, "the check printed something unreadable")
    versions: dict[str, str] = {"python": str(report.get("python", "?"))}
    problems = []
    for name, minimum in needed:
        info = report.get("modules", {}).get(name, {})
        if "version" not in info:
            problems.append(f"{name} cannot be imported ({info.get('error', 'not installed')})")
            continue
        versions[name] = str(info["version"])
        if minimum is not None and _version_tuple(versions[name]) < minimum:
            wanted = ".".join(map(str, minimum))
            problems.append(f"{name} {versions[name]} is older than the {wanted} the workload needs")
    if "torch" in versions and report.get("fsdp2") is False and workload.spec.accelerate.get("fsdp_version") == 2:
        problems.append(f"torch {versions['torch']} has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    if problems:
        where = report.get("executable", env.python)
        return PreflightResult(False, True, f"{where}: " + "; ".join(problems), versions)
    _remember(key, versions)
    return PreflightResult(True, True, _describe(versions), versions)


def _not_built(cluster: str, built: JobEnv) -> PreflightResult:
    from hpcai.spec.jobenv import missing_message

    return PreflightResult(False, True, missing_message(cluster, built), missing_environment=True)


def _describe(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def require_preflight(result: PreflightResult, job: JobSpec, workload: Workload) -> None:
    """Refuse the submission when the job's environment cannot run the workload."""
    if result.ok:
        return
    if result.missing_environment:
        raise ValidationError(
            f"pre-flight: {result.summary} Nothing was queued. (--no-preflight skips this check; the job would "
            "then stop at its start.)"
        )
    packages = " ".join(f"'{item}'" for item in (*workload.spec.requires, *job_extras(job.parameters)))
    env = job.environment
    if env.built_by_hpcai:
        how = (
            f"rebuild hpcai's job environment: `hpcai env build --cluster {job.cluster} --rebuild` (when the "
            "torch it keeps from the site is too old, set `environment.torch: install` in your profile override)"
        )
    elif job.container is not None:
        how = "use a container image that has them"
    else:
        how = (
            f"use a container that has them (--container), or install them where `{job.python}` runs (e.g. "
            f"`pip install {packages}` in the environment the profile's modules set up)"
        )
    raise ValidationError(
        f"pre-flight on {job.cluster}: the job's Python cannot run workload {job.workload}: {result.summary}. "
        f"Nothing was queued. It needs {packages}: {how}. `hpcai env check --cluster {job.cluster}` and "
        "`hpcai doctor` run the same check; --no-preflight skips it."
    )
