"""Submit as a value, over the test sshd and the real Slurm: the dry run shows the staged paths the real
submission uses, and a submission that stages data, a model and a container logs in exactly once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcai.store.db import Store
from tests.backends.transport.test_ssh import ssh_config
from tests.conftest import REPO, run_cli


def logins(sshd: Path) -> int:
    return (sshd / "sshd.log").read_text(errors="replace").count("Accepted publickey")


@pytest.fixture
def remote_site(sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> str:  # fmt: skip
    """A site profile (its own python, so code is staged too) reached over the test sshd."""
    import sys

    monkeypatch.setenv("HPCAI_SSH_CONFIG", str(ssh_config(tmp_path, sshd)))
    config = isolated_hpcai / "config"
    (config / "clusters").mkdir(parents=True, exist_ok=True)
    site = yaml.safe_load((REPO / "clusters" / "local-slurm.yaml").read_text())
    site["launch"]["python"] = sys.executable
    site["container"] = {"runtime": "apptainer", "flags": [], "binds": []}  # no apptainer here: the job fails
    (config / "clusters" / "remote-site.yaml").write_text(yaml.safe_dump(site))
    (config / "config.toml").write_text('[clusters.remote-site]\nssh_host = "hpcai-test"\n')
    return "remote-site"


def test_a_submit_that_stages_everything_logs_in_once_and_matches_its_dry_run(
    remote_site: str, sshd: Path, tmp_path: Path
) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    assert run_cli("data", "synth", "llava", str(data), "--samples", "8").returncode == 0
    model.mkdir()
    (model / "config.json").write_text("{}\n")
    container = tmp_path / "image.sif"
    container.write_bytes(os.urandom(50_000))
    args = ["llava", "--cluster", remote_site, "--set", f"data={data}", "--set", f"model_path={model}",
            "--container", str(container), "--run-id", "planned", "--json"]  # fmt: skip
    before = logins(sshd)
    dry = run_cli("submit", *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert logins(sshd) == before  # a plan is made on this machine alone
    plan = json.loads(dry.stdout)
    assert {a["what"] for a in plan["staging"]} == {"data", "model_path", "container", "workload code",
                                                     "hpcai package"}  # fmt: skip
    rendered = run_cli("render", *args)
    assert json.loads(rendered.stdout)["script"] == plan["script"]
    submitted = run_cli("submit", *args)
    assert submitted.returncode == 0, submitted.stderr
    assert logins(sshd) == before + 1  # staging 5 trees, budget, script, sbatch: one connection
    spec = Store().run("planned").spec
    assert spec == plan["job"]  # the submitted job is the planned one, staged paths included
    staged = {a["what"]: a["remote_path"] for a in json.loads(submitted.stdout)["staged"]}
    assert Path(staged["container"]).read_bytes() == container.read_bytes()
    assert spec["container"] == staged["container"] and spec["code_dir"] == staged["workload code"]
    assert run_cli("cancel", "planned").returncode == 0


def test_a_cluster_path_that_does_not_exist_there_is_refused_before_queueing(
    remote_site: str, sshd: Path, tmp_path: Path
) -> None:
    """An absolute path that is not on this machine is taken as the cluster's: checked there, in the same
    login, before anything is recorded or queued."""
    result = run_cli("submit", "llava", "--cluster", remote_site, "--set", "data=/no/such/dataset", "--run-id", "nd")
    assert result.returncode == 2 and "not found where the job runs" in result.stderr, result.stderr
    assert "data=/no/such/dataset" in result.stderr and "Traceback" not in result.stderr
    assert Store().runs() == []


def test_pack_data_squashfs_stages_one_image_that_the_container_mounts(
    remote_site: str, sshd: Path, tmp_path: Path, isolated_hpcai: Path
) -> None:
    """A profile with `pack_data: squashfs`: submit stages a local data folder as one SquashFS image, the job
    reads it at /hpcai-data/data through its container's bind, and the image (not the mount point, which
    exists only inside the container) is what must exist before queueing. Without a container: exit 2."""
    import shutil

    if shutil.which("mksquashfs") is None:
        pytest.skip("needs squashfs-tools")
    profile = isolated_hpcai / "config" / "clusters" / f"{remote_site}.yaml"
    site = yaml.safe_load(profile.read_text())
    site["pack_data"] = "squashfs"
    profile.write_text(yaml.safe_dump(site))
    data = tmp_path / "data"
    assert run_cli("data", "synth", "llava", str(data), "--samples", "8").returncode == 0
    args = ["llava", "--cluster", remote_site, "--set", f"data={data}", "--run-id", "squashed", "--json"]
    bare = run_cli("submit", *args, "--dry-run")
    assert bare.returncode == 2 and "runs without a container" in bare.stderr and "Traceback" not in bare.stderr
    container = tmp_path / "image.sif"
    container.write_bytes(os.urandom(50_000))
    dry = run_cli("submit", *args, "--container", str(container), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    image = next(a for a in plan["staging"] if a["what"] == "data")
    assert image["remote_path"].endswith("/data.sqfs") and image["files"] == 1
    assert plan["job"]["parameters"]["data"] == "/hpcai-data/data"
    assert f"--bind {image['remote_path']}:/hpcai-data/data:image-src=/" in plan["script"]
    submitted = run_cli("submit", *args, "--container", str(container))
    assert submitted.returncode == 0, submitted.stderr  # the image was found where the job runs
    assert Store().run("squashed").spec == plan["job"]
    listing = subprocess.run(["unsquashfs", "-l", image["remote_path"]], capture_output=True, text=True).stdout
    assert "squashfs-root/conversations.json" in listing and "squashfs-root/images/" in listing
    assert run_cli("cancel", "squashed").returncode == 0
