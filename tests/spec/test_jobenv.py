"""The job environment: where each site's jobs get torch >= 2.6 + accelerate + transformers, and
`hpcai env build` / `env check` against the test sshd (the "login node") and the test Slurm."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcai.flows.resolve import prepare_job
from hpcai.render.setup import build_script
from hpcai.spec.jobenv import SQUASHFS_MOUNT, resolve, train_requirements
from hpcai.spec.jobspec import Overrides
from hpcai.spec.profiles import load_profile
from tests.conftest import run_cli
from tests.site import SITE, install_site_commands, user, user_ssh_config, write_site_profile

ACCOUNT = "EUHPC_D17_084"


def _job(cluster: str, **overrides: object) -> object:
    return prepare_job("llava", cluster, Overrides(account="proj_1", **overrides)).job  # type: ignore[arg-type]


def test_each_site_names_how_its_jobs_get_fsdp2() -> None:
    juwels = _job("juwels-booster")
    assert juwels.environment.kind == "venv"  # type: ignore[attr-defined]
    assert juwels.python.startswith("/p/project/proj_1/hpcai/envs/py3-")  # type: ignore[attr-defined]
    assert juwels.python.endswith("/bin/python")  # type: ignore[attr-defined]
    lumi = _job("lumi-g")
    assert lumi.container.startswith("/appl/local/laifs/containers/")  # type: ignore[attr-defined]
    assert lumi.environment.home.startswith("/project/proj_1/hpcai/envs/")  # type: ignore[attr-defined]
    assert lumi.environment.home.endswith(".sqsh") and lumi.python == f"{SQUASHFS_MOUNT}/bin/python"  # type: ignore[attr-defined]
    assert not any(r.startswith("torch") for r in lumi.environment.requirements)  # type: ignore[attr-defined]
    assert _job("polaris").environment.kind == "venv"  # type: ignore[attr-defined]
    assert _job("leonardo-booster").environment.kind == "venv"  # type: ignore[attr-defined]
    # A user's own image is used as it is; the local clusters build nothing.
    own = _job("juwels-booster", container="/p/project/proj_1/mine.sif")
    assert own.environment.kind == "container" and own.environment.home is None  # type: ignore[attr-defined]
    assert _job("local").environment.home is None  # type: ignore[attr-defined]


def test_the_environment_folder_changes_with_its_recipe_only() -> None:
    profile = load_profile("juwels-booster")
    places = {"user": "u", "account": "a", "state_dir": "/s"}
    first = resolve(profile, placeholders=places, container=None)
    assert resolve(profile, placeholders=places, container=None) == first
    changed = profile.model_copy(update={"environment": profile.environment.model_copy(update={"pip_index": "x"})})
    assert resolve(changed, placeholders=places, container=None).home != first.home
    assert first.requirements == train_requirements() and any(r.startswith("torch==") for r in first.requirements)


@pytest.mark.parametrize("cluster", ["juwels-booster", "lumi-g", "polaris", "leonardo-booster"])
def test_build_scripts_are_valid_bash_and_shellcheck_clean(cluster: str, tmp_path: Path) -> None:
    job = _job(cluster)
    script = build_script(load_profile(cluster), job.environment, rebuild=False)  # type: ignore[attr-defined]
    path = tmp_path / "build.sh"
    path.write_text("#!/bin/bash\n" + script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", "-S", "warning", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    if cluster == "lumi-g":
        assert "mksquashfs" in script and f":{SQUASHFS_MOUNT}" in script and "--rocm" not in script
    if cluster == "polaris":
        assert "conda activate base" in script


def _local_env_profile(config: Path, **environment: object) -> None:
    profile = yaml.safe_load((Path(__file__).parents[2] / "clusters" / "local-slurm.yaml").read_text())
    profile["launch"]["python"] = sys.executable  # the "site Python" the venv is layered on
    profile["environment"] = {"default": "venv", **environment}
    (config / "clusters").mkdir(parents=True, exist_ok=True)
    (config / "clusters" / "envslurm.yaml").write_text(yaml.safe_dump(profile))


@pytest.mark.slow
def test_a_failed_or_killed_build_is_never_used_and_the_next_build_starts_over(isolated_hpcai: Path) -> None:
    # internet: true -- the site says its login node has the index, so the build pips there (and fails).
    _local_env_profile(isolated_hpcai / "config", system_site_packages=False, internet=True)
    missing = run_cli("env", "check", "-c", "envslurm")
    assert missing.returncode == 2
    assert "is not built" in missing.stderr and "hpcai env build --cluster envslurm" in missing.stderr
    # Without its base's packages pip must download torch: with no index it fails, and says why.
    failed = run_cli("env", "build", "-c", "envslurm", env={"PIP_NO_INDEX": "1"}, timeout=300)
    assert failed.returncode == 3, failed.stdout
    assert "failed" in failed.stderr and "No matching distribution" in failed.stderr
    assert "Traceback" not in failed.stderr
    home = json.loads(run_cli("env", "check", "-c", "envslurm", "--json").stdout)["home"]
    assert Path(home).is_dir() and not (Path(home) / ".hpcai-env.json").exists()
    assert run_cli("submit", "llava", "-c", "envslurm").returncode == 2  # refused before queueing
    assert json.loads(run_cli("list", "--json").stdout) == []
    # A second build while one holds the lock says so instead of building next to it.
    Path(home + ".lock").mkdir()
    busy = run_cli("env", "build", "-c", "envslurm", timeout=120)
    assert busy.returncode == 3 and "another build" in busy.stderr
    # A lock whose builder died on this login node is taken over at once (the build then runs, and
    # fails as before for want of an index).
    (Path(home + ".lock") / "owner").write_text(f"{socket.gethostname()} 999999\n")
    taken = run_cli("env", "build", "-c", "envslurm", env={"PIP_NO_INDEX": "1"}, timeout=300)
    assert taken.returncode == 3 and "No matching distribution" in taken.stderr
    assert not Path(home + ".lock").exists()


@pytest.mark.usefixtures("slurm_cluster")
def test_a_build_starts_a_half_built_folder_over(isolated_hpcai: Path, probe_workload: str) -> None:
    _local_env_profile(isolated_hpcai / "config")
    home = Path(json.loads(run_cli("env", "check", "-c", "envslurm", "--json").stdout)["home"])
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # what a killed build may leave
    assert run_cli("submit", "llava", "-c", "envslurm").returncode == 2
    doctor = {c["name"]: c for c in json.loads(run_cli("doctor", "-c", "envslurm", "--json").stdout)["checks"]}
    assert doctor["job-environment"]["status"] == "fail"
    assert doctor["job-environment"]["fix"] == "`hpcai env build --cluster envslurm`."
    built = run_cli("env", "build", "-c", "envslurm", "--json", timeout=300)
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["state"] == "built" and result["check"]["ok"]
    assert (home / ".hpcai-env.json").is_file() and (home / "bin" / "python").is_symlink()
    doctor = {c["name"]: c for c in json.loads(run_cli("doctor", "-c", "envslurm", "--json").stdout)["checks"]}
    assert doctor["job-environment"]["status"] == "pass"
    # hpcai runs on the login node itself here (no ssh_host): the workload code and the hpcai package are
    # staged into the store on the cluster's filesystem, where the job's own environment finds them.
    submitted = run_cli("submit", "envprobe", "-c", "envslurm", "--json", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    run = json.loads(submitted.stdout)
    assert {a["what"] for a in run["staged"]} == {"workload code", "hpcai package"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (Path(run["run_dir"]) / "envprobe.json").exists():
        time.sleep(1)
    record = json.loads((Path(run["run_dir"]) / "envprobe.json").read_text())
    assert record["executable"] == f"{home}/bin/python"


@pytest.mark.usefixtures("slurm_cluster")
def test_env_build_over_ssh_then_a_job_imports_torch_and_accelerate_from_it(
    sshd: Path, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    root = tmp_path / "site"
    venv = {"environment": {"default": "venv", "filesystem": "work"}}
    write_site_profile(isolated_hpcai / "config", root, extra=venv)
    install_site_commands(sshd, root, ACCOUNT)
    env = {"HPCAI_SSH_CONFIG": str(user_ssh_config(tmp_path, sshd / "known_hosts")), "SSH_AUTH_SOCK": ""}
    onboarded = run_cli(
        "onboard", "-c", SITE, "-u", user(), "-A", ACCOUNT, "-i", str(sshd / "id_ed25519"), "--make-default",
        "--yes", "--no-doctor", env=env,
    )  # fmt: skip
    assert onboarded.returncode == 0, onboarded.stderr

    refused = run_cli("submit", "envprobe", env=env, timeout=120)
    assert refused.returncode == 2 and f"hpcai env build --cluster {SITE}" in refused.stderr
    assert json.loads(run_cli("list", "--json", env=env).stdout) == []

    built = run_cli("env", "build", "--json", env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    home = result["home"]
    assert result["state"] == "built" and home.startswith(f"{root}/work/{ACCOUNT}/hpcai/envs/")
    assert result["check"]["ok"] and result["check"]["versions"]["torch"].startswith("2.")
    again = run_cli("env", "build", env=env, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout

    submitted = run_cli("submit", "envprobe", "--json", env=env, timeout=180)
    assert submitted.returncode == 0, submitted.stderr
    run = json.loads(submitted.stdout)
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        state = json.loads(run_cli("status", run["run_id"], "--json", env=env).stdout)["state"]
        if state in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            break
        time.sleep(2)
    assert state == "COMPLETED"
    record = json.loads((Path(run["run_dir"]) / "envprobe.json").read_text())
    assert record["prefix"] == home and record["executable"] == f"{home}/bin/python"
    assert record["torch"].startswith("2.") and record["accelerate"]

    # The environment is taken away (a killed rebuild, a purge): refused before queueing again.
    (Path(home) / ".hpcai-env.json").unlink()
    again_refused = run_cli("submit", "envprobe", env=env, timeout=120)
    assert again_refused.returncode == 2 and "is not built" in again_refused.stderr
    # Past the pre-flight, the job itself stops at once and says why.
    forced = json.loads(run_cli("submit", "envprobe", "--no-preflight", "--json", env=env, timeout=120).stdout)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = json.loads(run_cli("status", forced["run_id"], "--json", env=env).stdout)
        if view["state"] not in {"SUBMITTING", "PENDING", "RUNNING", "COMPLETING", "SUBMITTED"}:
            break
        time.sleep(2)
    assert view["state"].startswith("FAILED")
    errors = "".join(p.read_text() for p in (Path(forced["run_dir"]) / "logs").glob("*.err"))
    assert f"hpcai env build --cluster {SITE}" in errors and "not built" in errors


@pytest.mark.usefixtures("slurm_cluster")
def test_env_check_as_a_job_reports_what_a_compute_node_sees() -> None:
    checked = run_cli("env", "check", "-c", "local-slurm", "--job", "--json", timeout=300)
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout)
    assert result["ok"] and result["versions"]["torch"].startswith("2.")
    job = result["job"]
    assert job["ok"] and job["state"] == "COMPLETED" and job["gpus_per_node"] == 0
    (node,) = job["nodes"]
    assert node["fsdp2"] is True and node["gpus"] == 0 and node["backend"] == "cpu" and not node["problems"]
    # A queue that does not start the job in time: said so, the job left to run (and cancellable).
    waited = run_cli("env", "check", "-c", "local-slurm", "--job", "--wait", "0", timeout=300)
    assert waited.returncode == 3 and "--wait sets how long" in " ".join(waited.stderr.split())
    run_id = waited.stderr.split("hpcai cancel ")[1].split("`")[0]
    assert run_cli("cancel", run_id, timeout=120).returncode == 0


def test_another_uenv_is_another_environment(isolated_hpcai: Path) -> None:
    """A venv on CSCS's uenv is made for that uenv's Python: another uenv (a profile override) gets a venv of
    its own instead of reusing one built on another Python."""
    from hpcai.spec.jobenv import resolve
    from hpcai.spec.profiles import load_profile

    places = {"user": "jdoe", "account": "a-g34", "state_dir": str(isolated_hpcai)}
    first = resolve(load_profile("alps-clariden"), placeholders=places, container=None)
    clusters = isolated_hpcai / "config" / "clusters"
    clusters.mkdir(parents=True, exist_ok=True)
    (clusters / "alps-clariden.yaml").write_text(
        "launch:\n  directives: [--uenv=pytorch/v2.9.1:/user-environment, --view=default]\n"
        "environment:\n  enter: [uenv, run, pytorch/v2.9.1:v1, --view=default, --]\n"
    )
    from hpcai.spec.read_once import forget

    forget()
    second = resolve(load_profile("alps-clariden"), placeholders=places, container=None)
    assert first.env_id != second.env_id and first.home != second.home
