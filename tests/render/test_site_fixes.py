"""Faults an audit of the rendered scripts against the sites' own guides found (docs: ../shared/notes/clusters.md,
"Turn-3 audit"): caches in $HOME, a container that cannot see the NCCL plugin it is told to use, a queue
suggested without saying its jobs can be killed at any time, pip's cache in $HOME during `env build`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcai.errors import ValidationError
from hpcai.render.setup import build_script
from hpcai.spec.jobspec import Overrides, resolve_jobspec
from hpcai.spec.profiles import load_profile
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.workloads import load_workload
from tests.render.test_script import CASES, STATE, render_case

SITES = ["juwels-booster", "leonardo-booster", "lumi-g", "polaris"]


def _job(cluster: str, **overrides: object):  # type: ignore[no-untyped-def]
    return resolve_jobspec(
        cluster=cluster, profile=load_profile(cluster), workload=load_workload("llava"),
        overrides=Overrides(run_id="audit", account="proj", **overrides),  # type: ignore[arg-type]
        settings=ClusterSettings(user="jdoe"), state_dir=Path(STATE),
    )  # fmt: skip


@pytest.mark.parametrize(
    "name", sorted(n for n in CASES if n.split("-")[0] in {"juwels", "leonardo", "lumi", "polaris"})
)
def test_every_site_keeps_the_jobs_caches_out_of_home(name: str) -> None:
    """HF_HOME and TORCH_HOME (and the rest of ~/.cache) on project or scratch storage, each a default that
    a user's own export outranks; the home file system holds none of them."""
    cluster = CASES[name][0]
    profile = load_profile(cluster)
    home = profile.filesystems["home"].path.split("{")[0].rstrip("/")
    script = render_case(name)
    for variable in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        found = re.findall(rf"^export {variable}=(.*)$", script, flags=re.MULTILINE)
        assert found, f"{name}: no {variable}"
        value = found[-1].strip('"')
        assert not value.startswith(home) and "$HOME" not in value and "~" not in value, (name, variable, value)
    assert 'export HF_HOME="${HF_HOME:-' in script or "export HF_HOME=/scratch/" in script  # LUMI's guide's own


@pytest.mark.parametrize("cluster", SITES)
def test_a_container_sees_the_nccl_plugin_the_job_names(cluster: str) -> None:
    """Where the profile puts a network plugin on LD_LIBRARY_PATH (Polaris' AWS libfabric plugin, which
    NCCL_NET names), a job in a container has its folders bound and gets the path passed in: without it
    NCCL stops with "network AWS Libfabric not found" (ALCF's container guide binds /opt, /var/run/palsd/)."""
    profile = load_profile(cluster)
    if profile.container is None or not profile.launch.library_path:
        pytest.skip(f"{cluster}: no library path to hand into a container")
    script = render_case(f"{cluster}-1n-container")
    binds = re.search(r"--bind (\S+) ", script)
    assert binds is not None
    bound = binds.group(1).split(",")
    for folder in profile.launch.library_path:
        assert any(folder == b.rstrip("/") or folder.startswith(b.rstrip("/") + "/") for b in bound), (folder, bound)
    runtime = profile.container.runtime.upper()
    assert script.index(f'export {runtime}ENV_LD_LIBRARY_PATH="$LD_LIBRARY_PATH"') > script.index(
        "export LD_LIBRARY_PATH="
    )
    if cluster == "polaris":
        assert {"/opt", "/var/run/palsd/"} <= set(bound)
    # Without a container nothing is handed in.
    assert f"{runtime}ENV_LD_LIBRARY_PATH" not in render_case(f"{cluster}-1n")


def test_a_suggested_queue_says_when_its_jobs_can_be_killed() -> None:
    """Polaris: 1 node for 3 h fits no debug queue; the queues that allow it are named with what they cost
    (`preemptable`: killed at any time, without warning)."""
    with pytest.raises(ValidationError) as refused:
        _job("polaris", nodes=1, time="03:00:00")
    message = str(refused.value)
    assert "preemptable (its jobs can be killed at any time, without warning" in message, message
    assert "capacity (one running job per user)" in message, message


def test_the_environment_build_keeps_no_pip_cache_in_home() -> None:
    job = _job("leonardo-booster")
    script = build_script(load_profile("leonardo-booster"), job.environment, rebuild=False)
    assert "PIP_NO_CACHE_DIR=1" in script
