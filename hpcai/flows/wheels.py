"""Job environments for login nodes without the package index, or of another platform (an aarch64 cluster
from an x86_64 laptop): the wheels are downloaded on this machine for the cluster's platform and Python
(pip's own `download --platform --python-version --only-binary`), staged as one content-addressed folder,
and installed there with `--no-index`. Only what the cluster's base Python lacks is downloaded (its
modules or image may already hold torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpcai.backends.transport.base import Transport
from hpcai.errors import EnvironmentFailure
from hpcai.render.setup import login_shell, setup_lines
from hpcai.shellquote import join
from hpcai.spec.jobenv import JobEnv, base_python
from hpcai.spec.profiles import ClusterProfile

DOWNLOAD_TIMEOUT_S = 3600

# Run by the cluster's base Python: the requirements it does not satisfy (pip's vendored packaging reads
# them; with no pip there, every one is missing).
_MISSING = """
import json, sys
from importlib import metadata
try:
    from pip._vendor.packaging.requirements import Requirement
except Exception:
    print(json.dumps(sys.argv[1:])); raise SystemExit
missing = []
for text in sys.argv[1:]:
    req = Requirement(text)
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        missing.append(text); continue
    if req.specifier and not req.specifier.contains(have, prereleases=True):
        missing.append(text)
print(json.dumps(missing))
"""


def missing_on_cluster(transport: Transport, profile: ClusterProfile, env: JobEnv) -> list[str]:
    """The environment's requirements that the cluster's base Python (after the profile's modules) lacks;
    all of them when it builds in a container or cannot tell."""
    if env.image is not None or not profile.environment.system_site_packages:
        return list(env.requirements)
    script = "\n".join([*setup_lines(profile, with_container=False),
                        join([base_python(profile), "-c", _MISSING, *env.requirements])])  # fmt: skip
    result = transport.run(login_shell(profile, script), timeout=300)
    try:
        found = json.loads(result.stdout.strip().splitlines()[-1]) if result.ok and result.stdout.strip() else None
    except ValueError:
        found = None
    if not isinstance(found, list) or not all(isinstance(r, str) for r in found):
        return list(env.requirements)
    return [r for r in env.requirements if r in found]


def download_wheels(requirements: list[str], dest: Path, profile: ClusterProfile) -> list[str]:
    """`pip download` of the requirements and everything they need, as wheels for the cluster's platform
    and Python, into `dest`; the wheel files' names."""
    spec = profile.environment
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest),
            "--only-binary=:all:"]  # fmt: skip
    if spec.platform is not None:
        argv += ["--platform", spec.platform, "--implementation", "cp"]
    if spec.python_version is not None or spec.platform is not None:
        argv += ["--python-version", spec.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"]
    if spec.pip_index:
        argv += ["--extra-index-url", spec.pip_index]
    try:
        result = subprocess.run([*argv, *requirements], capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EnvironmentFailure(
            f"pip download took over {DOWNLOAD_TIMEOUT_S // 60} min; nothing was staged."
        ) from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-6:])
        where = f" for {spec.platform}" if spec.platform else ""
        raise EnvironmentFailure(
            f"env build: downloading the wheels{where} on this machine failed (pip download, exit "
            f"{result.returncode}); a package without a wheel for the cluster's platform and Python cannot be "
            f"installed offline. pip said:\n{tail}"
        )
    return sorted(p.name for p in dest.glob("*.whl"))


def index_reachable(transport: Transport, profile: ClusterProfile) -> bool:
    """Whether pip on the login node reaches its package index, as the site configures pip there (a mirror, a
    proxy): `pip index versions pip`, one try. A pip too old to ask (or none) counts as reaching it: the
    build then goes as before and says what pip said."""
    argv = [base_python(profile), "-m", "pip", "index", "versions", "pip", "--retries", "0", "--timeout", "8",
            "--disable-pip-version-check"]  # fmt: skip
    result = transport.run(argv, timeout=60)
    said = result.stdout + result.stderr
    return result.ok or "unknown command" in said or "No module named pip" in said
