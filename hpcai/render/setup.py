"""Setup lines of job scripts: module loads, conda, the container command, the environment guard, and the
script that builds a job environment on the login node. Rendered here, from the spec (spec/jobenv.py
says what the environment is; this says how a script makes and enters it)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hpcai import __version__
from hpcai.shellquote import join, quote
from hpcai.spec.jobenv import BUILD_MARK, SQUASHFS_MOUNT, JobEnv, base_python, missing_message
from hpcai.spec.jobspec import JobSpec
from hpcai.spec.profiles import ClusterProfile


def module_lines(profile: ClusterProfile, with_container: bool) -> list[str]:
    modules = profile.modules
    lines = ["module purge"] if modules.purge else []
    lines += [f"module use {quote(path)}" for path in modules.use]
    load = list(modules.load)
    if with_container and profile.container is not None:
        load += profile.container.modules
    else:
        # The container brings its own Python stack; host modules would leak into it via the environment.
        load += modules.software
    if load:
        lines.append("module load " + join(load))
    return lines


def login_shell(profile: ClusterProfile, script: str) -> list[str]:
    """The argv that runs `script` on the cluster's login node: a login shell, so the site's module system
    is there; plain bash for the clusters on this machine."""
    if profile.scheduler == "local":
        return ["bash", "-c", script]
    # In the site's software environment where jobs get one from a scheduler option (CSCS's uenv).
    return [*profile.environment.enter, "bash", "-lc", script]


def setup_lines(profile: ClusterProfile, with_container: bool) -> list[str]:
    """Module loads (and `conda activate`) as the job script runs them before its Python."""
    lines = module_lines(profile, with_container)
    if profile.environment.conda_env and not with_container:
        # conda's activation scripts read unset variables: not under the script's `set -u`.
        lines.append(f"set +u; conda activate {quote(profile.environment.conda_env)}; set -u")
    return lines


def _pip_install(
    python: str, profile: ClusterProfile, requirements: tuple[str, ...], find_links: str | None = None
) -> list[str]:
    """pip install of the requirements: from the index, or -- `find_links`, wheels staged from the user's
    machine -- from that folder alone, never the network."""
    words: list[object] = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if find_links is not None:
        words += ["--no-index", "--find-links", find_links]
    elif profile.environment.pip_index:
        words += ["--extra-index-url", profile.environment.pip_index]
    return [join([*words, *requirements])] if requirements else []


# The venv's python sees the packages of the Python it was built on when that one is itself a venv
# (or conda env): `--system-site-packages` reaches only the base *installation*, so the base's own
# site-packages are added by a .pth file. Prints nothing.
_LAYER = """
import json, site, subprocess, sys, sysconfig
base = sys.argv[1]
paths = json.loads(subprocess.run([base, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                                  check=True, capture_output=True, text=True).stdout)
own = sysconfig.get_paths()["purelib"]
with open(own + "/_hpcai_base.pth", "w") as handle:
    handle.write("".join(p + "\\n" for p in paths))
"""


def build_script(
    profile: ClusterProfile, env: JobEnv, *, rebuild: bool, find_links: str | None = None, install: bool = True
) -> str:
    """The bash script that builds `env` on the login node, under a lock, marker last; with `find_links`
    pip installs offline from the wheels staged there; `install` False: the base has every requirement."""
    assert env.home is not None and env.marker is not None
    spec = profile.environment
    home, marker = quote(env.home), quote(env.marker)
    lines = [
        "set -euo pipefail",
        f"home={home}",
        'mkdir -p "$(dirname "$home")"',
        "# One build at a time: a second one says so and stops. A lock whose builder is gone (same login",
        "# node, process dead) is taken over at once; one from another login node after two hours.",
        'lock="$home.lock"',
        'if ! mkdir "$lock" 2>/dev/null; then',
        '  read -r owner_host owner_pid < "$lock/owner" 2>/dev/null || true',
        '  if { [ "${owner_host:-}" = "$(hostname)" ] && ! kill -0 "${owner_pid:-0}" 2>/dev/null; } \\',
        '    || [ -n "$(find "$lock" -maxdepth 0 -mmin +120 2>/dev/null)" ]; then',
        '    rm -rf "$lock"; mkdir "$lock"',
        f'  else echo "{BUILD_MARK}busy"; exit 0; fi',
        "fi",
        'printf \'%s %s\\n\' "$(hostname)" "$$" > "$lock/owner"',
        "trap 'rm -rf \"$lock\"' EXIT",
        f"rebuild={int(rebuild)}",
        f'if [ -e {marker} ] && [ "$rebuild" = 0 ]; then echo "{BUILD_MARK}ready"; exit 0; fi',
        "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_NO_CACHE_DIR=1  # no pip cache in a small $HOME",
    ]
    lines += setup_lines(profile, with_container=env.image is not None)
    site_flag = ["--system-site-packages"] if spec.system_site_packages else []
    if env.image is None:
        base = base_python(profile)
        lines += [
            "# A folder without the marker is what a killed build left: start it over.",
            'rm -rf "$home"',
            join([base, "-m", "venv", *site_flag, env.home]),
        ]
        if spec.system_site_packages:
            lines.append(join([f"{env.home}/bin/python", "-c", _LAYER, base]))
        lines += _pip_install(f"{env.home}/bin/python", profile, env.requirements if install else (), find_links)
        record = {"env_id": env.env_id, "requirements": list(env.requirements), "hpcai": __version__}
        lines += [
            f"printf '%s\\n' {quote(json.dumps(record))} > {marker}.tmp",
            f"mv {marker}.tmp {marker}",
        ]
    else:
        inside = ["set -euo pipefail", join(["python", "-m", "venv", *site_flag, SQUASHFS_MOUNT])]
        inside += _pip_install(f"{SQUASHFS_MOUNT}/bin/python", profile, env.requirements if install else (), find_links)
        words = container_prefix(profile, env.image)
        exec_words, image = words[:-1], words[-1]
        lines += [
            "# LUMI's way: the venv is made inside the image at its final path, then packed into one file.",
            'build="$home.build"',
            'rm -rf "$build" "$home.tmp"',
            'mkdir -p "$build"',
            join(exec_words)
            + ' --bind "$build":'
            + SQUASHFS_MOUNT
            + (f" --bind {quote(find_links)}" if find_links else "")  # the staged wheels, at the same path
            + " "
            + quote(str(image))
            + " bash -c "
            + quote("\n".join(inside)),
            'mksquashfs "$build" "$home.tmp" -processors 1 -no-xattrs -noappend -quiet',
            'rm -rf "$build"',
            'mv "$home.tmp" "$home"',
        ]
    lines.append(f'echo "{BUILD_MARK}built"')
    return "\n".join(lines) + "\n"


def container_prefix(
    profile: ClusterProfile, image: str | None, mount: str | None = None, data: Sequence[str] = ()
) -> list[object]:
    """`<runtime> exec [flags] [--bind ...] IMAGE`, the words that run a command in the job's container
    (`mount`: the packed job environment's bind; `data`: the data images' binds); none when the job has
    no container."""
    if image is None or profile.container is None:
        return []
    words: list[object] = [profile.container.runtime, "exec", *profile.container.flags]
    if profile.container.binds:
        words += ["--bind", ",".join(profile.container.binds)]
    if mount is not None:
        words += ["--bind", mount]
    for bind in data:
        words += ["--bind", bind]
    return [*words, image]


def environment_guard(job: JobSpec) -> list[str]:
    """Lines that stop the job at once when the environment hpcai builds for it is missing or half-built
    (the pre-flight refuses such a submission; this covers one deleted or rebuilt since)."""
    env = job.environment
    if env.marker is None:
        return []
    message = "hpcai: " + missing_message(job.cluster, env).replace("`", "")
    return [
        f"if [ ! -e {quote(env.marker)} ]; then",
        f"  echo {quote(message)} >&2",
        "  hpcai_event end 2",
        "  exit 2",
        "fi",
    ]
