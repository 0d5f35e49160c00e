"""Pre-flight: a job whose Python cannot import what the workload needs is refused before it is queued."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from hpcai.store.db import Store
from tests.conftest import REPO, run_cli

_REPORT = {
    "python": "3.10.4",
    "executable": "/appl/cineca-ai/bin/python",
    "modules": {
        "torch": {"version": "2.2.1+cu121"},
        "accelerate": {"error": "ModuleNotFoundError: No module named accelerate"},
        "transformers": {"version": "4.38.0"},
    },
    "fsdp2": False,
}
# A site Python with the stack of a 2024 module: torch 2.2 (no FSDP2), no accelerate.
FAKE_OLD_TORCH = f"#!/bin/sh\necho 'HPCAI-PREFLIGHT {json.dumps(_REPORT)}'\n"


def local_cluster_with_python(config: Path, name: str, python: str, **launch: object) -> str:
    profile = yaml.safe_load((REPO / "clusters" / "local.yaml").read_text())
    profile["launch"]["python"] = python
    profile.update(launch)
    (config / "clusters").mkdir(parents=True, exist_ok=True)
    (config / "clusters" / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    return name


def test_a_python_without_torch_is_refused_before_queueing(isolated_hpcai: Path) -> None:
    cluster = local_cluster_with_python(isolated_hpcai / "config", "bare", "/usr/bin/python3")
    result = run_cli("submit", "llava", "--cluster", cluster, "--run-id", "bare")
    assert result.returncode == 2, result.stderr
    assert "torch cannot be imported" in result.stderr and "Nothing was queued" in result.stderr
    assert "Traceback" not in result.stderr and Store().runs() == []


def test_an_old_torch_and_a_missing_accelerate_are_named(isolated_hpcai: Path, tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text(FAKE_OLD_TORCH)
    fake.chmod(0o755)
    cluster = local_cluster_with_python(isolated_hpcai / "config", "old", str(fake))
    result = run_cli("submit", "clip", "--cluster", cluster, "--run-id", "old")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "torch 2.2.1+cu121 is older than the 2.6" in message and "accelerate cannot be imported" in message
    assert "has no FSDP2" in message and Store().runs() == []
    skipped = run_cli("submit", "clip", "--cluster", cluster, "--run-id", "old", "--no-preflight", "--json")
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["preflight"] is None  # the user's call
    run_cli("cancel", "old")


def test_a_passing_check_is_cached_and_the_probe_workload_needs_none(probe_workload: str) -> None:
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    first = run_cli("submit", "llava", "--cluster", "local", "--set", "max_steps=1", "--run-id", "a", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)["preflight"]
    assert report["ok"] and not report["cached"] and report["versions"]["torch"]
    second = run_cli("submit", "llava", "--cluster", "local", "--set", "max_steps=1", "--run-id", "b", "--json")
    assert json.loads(second.stdout)["preflight"]["cached"]
    probe = run_cli("submit", probe_workload, "--cluster", "local", "--set", "lines=1", "--run-id", "p", "--json")
    assert json.loads(probe.stdout)["preflight"]["summary"].startswith("the workload needs no")
    for run in ("a", "b", "p"):
        run_cli("cancel", run)


def test_a_check_that_cannot_run_on_the_login_node_warns_and_submits(isolated_hpcai: Path) -> None:
    cluster = local_cluster_with_python(
        isolated_hpcai / "config", "modules", sys.executable, modules={"load": ["site-python/3.11"]}
    )
    result = run_cli("submit", "clip", "--cluster", cluster, "--set", "max_steps=1", "--run-id", "m")
    assert result.returncode == 0, result.stderr
    assert "pre-flight on modules skipped" in result.stderr
    run_cli("cancel", "m")


def test_doctor_runs_the_same_check(isolated_hpcai: Path) -> None:
    cluster = local_cluster_with_python(isolated_hpcai / "config", "bare", "/usr/bin/python3")
    report = run_cli("doctor", "--cluster", cluster, "--json")
    checks = {c["name"]: c for c in json.loads(report.stdout)["checks"]}
    check = checks["job-environment"]
    assert check["status"] == "fail" and "torch cannot be imported" in check["summary"]
    assert report.returncode == 1


def test_tracker_wandb_needs_wandb_in_the_jobs_python(isolated_hpcai: Path, tmp_path: Path) -> None:
    """The offline wandb tracker is imported by the job: a Python without it is refused before queueing."""
    report = {"python": "3.12.1", "executable": "/site/python", "fsdp2": True, "modules": {
        "torch": {"version": "2.13.0"}, "accelerate": {"version": "1.15.0"}, "transformers": {"version": "5.23.0"},
        "wandb": {"error": "ModuleNotFoundError: No module named 'wandb'"}}}  # fmt: skip
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho 'HPCAI-PREFLIGHT {json.dumps(report)}'\n")
    fake.chmod(0o755)
    cluster = local_cluster_with_python(isolated_hpcai / "config", "nowandb", str(fake))
    result = run_cli("submit", "clip", "--cluster", cluster, "--set", "tracker=wandb", "--run-id", "w")
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "wandb cannot be imported" in message and "'wandb'" in message, message
    assert "Traceback" not in result.stderr and Store().runs() == []
