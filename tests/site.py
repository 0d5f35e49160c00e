"""A fake *site* in front of the real test sshd and test Slurm: a cluster profile whose login node is the
sshd, and the site's own commands (saldo, jutil, lumi-allocations, sbank, lumi-quota) as fixture scripts
on the sshd sessions' PATH printing the outputs in tests/fixtures/site-commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from tests.conftest import FIXTURES

SITE = "testsite"
BUDGETS = {
    "saldo": {"query": "saldo -b", "command": "saldo", "unit": "local core-hours", "per_node_hour": 32,
              "good": "EUHPC_D17_084", "empty": "EUHPC_D17_001"},
    "jutil": {"query": "jutil user cpuquota -o parsable", "command": "jutil", "unit": "core-hours",
              "per_node_hour": 48, "good": "jureap1", "empty": "jureap2"},
    "lumi-allocations": {"query": "lumi-allocations", "command": "lumi-allocations", "unit": "GPU-hours",
                         "per_node_hour": 4, "good": "project_465000123", "empty": "project_465000999"},
    "sbank": {"query": "sbank-list-allocations -r polaris", "command": "sbank-list-allocations",
              "unit": "node-hours", "per_node_hour": 1, "good": "MyProj", "empty": "EmptyProj"},
}  # fmt: skip
FIXTURE_FILE = {"saldo": "saldo.txt", "jutil": "jutil.txt", "lumi-allocations": "lumi-allocations.txt",
                "sbank": "sbank.txt"}  # fmt: skip


def user() -> str:
    return os.environ.get("USER") or __import__("getpass").getuser()


def install_command(sshd: Path, name: str, output: str) -> None:
    """`name` on the sessions' PATH, printing `output` (whatever its arguments)."""
    sitebin = sshd / "sitebin"
    (sitebin / f"{name}.out").write_text(output)
    script = sitebin / name
    script.write_text(f'#!/bin/sh\ncat "{sitebin}/{name}.out"\n')
    script.chmod(0o755)


def write_site_profile(
    config_dir: Path,
    root: Path,
    *,
    budget: str = "saldo",
    method: str = "ssh-key",
    quota: str = "lumi-quota",
    extra: dict[str, object] | None = None,
) -> None:
    spec = BUDGETS[budget]
    profile = {
        "description": "A test site: the test sshd as its login node, the test Slurm behind it",
        "scheduler": "slurm",
        "access": {
            "login_hosts": ["127.0.0.1"],
            "port": int(os.environ["HPCAI_SSHD_PORT"]),
            "method": method,
            "key_types": ["ed25519"],
            "steps": [
                "Ask your PI to add you to the project.",
                "Upload your public key in the site portal.",
                "Every day - get a certificate with `step ssh login you@example.org`.",
            ],
        },
        "partitions": [{"name": "debug", "max_nodes": 2, "max_walltime": "01:00:00", "default": True}],
        "node": {"gpus": 0, "cpus": 2, "memory_gb": 4},
        "accelerator": "cpu",
        "filesystems": {
            "home": {"path": f"{root}/home/{{user}}", "quota": "22 GB"},
            "work": {"path": f"{root}/work/{{account}}", "quota": "1 TB"},
            "scratch": {"path": f"{root}/scratch/{{user}}", "purge_days": 40},
        },
        "runs_on": "work",
        "compute_internet": False,
        "account_required": True,
        "launch": {
            "launcher": "srun",
            "machine_rank_var": "SLURM_PROCID",
            "master_port": "from-job-id",
            "gpu_request": "none",
            "emulate_nodes": True,
            "python": sys.executable,
        },
        "budget": {
            "commands": [spec["query"]],
            "query": spec["query"],
            "format": budget,
            "unit": spec["unit"],
            "per_node_hour": spec["per_node_hour"],
        },
        "quota": {"query": "lumi-quota", "format": "lumi-quota"} if quota == "lumi-quota" else {"format": "df"},
    }
    profile.update(extra or {})
    (config_dir / "clusters").mkdir(parents=True, exist_ok=True)
    (config_dir / "clusters" / f"{SITE}.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))


def install_site_commands(
    sshd: Path, root: Path, account: str, *, budget: str = "saldo", work_used: str = "6.4G", work_files: str = "100k"
) -> None:
    install_command(sshd, BUDGETS[budget]["command"], (FIXTURES / "site-commands" / FIXTURE_FILE[budget]).read_text())
    quota = (FIXTURES / "site-commands" / "lumi-quota.txt").read_text()
    install_command(
        sshd,
        "lumi-quota",
        quota.format(root=root, user=user(), account=account, work_used=work_used, work_files=work_files),
    )
    for sub in (f"home/{user()}", f"work/{account}", f"scratch/{user()}"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def user_ssh_config(tmp_path: Path, known_hosts: Path) -> Path:
    """The user's own ~/.ssh/config before onboarding: lines hpcai must never touch."""
    path = tmp_path / "ssh" / "config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# my own settings\nHost github.com\n  User git\n\nHost *\n"
        f"  UserKnownHostsFile {known_hosts}\n  ServerAliveInterval 30\n"
    )
    return path
