"""`hpcai budget` and the budget guard on `submit`, against the test site (sshd + Slurm + saldo fixture)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from hpcai.store.db import BudgetReading, Store
from tests.conftest import run_cli
from tests.site import SITE, install_site_commands, user, user_ssh_config, write_site_profile


def setup_site(sshd: Path, config: Path, tmp_path: Path, account: str) -> dict[str, str]:
    root = tmp_path / "site"
    write_site_profile(config, root)
    install_site_commands(sshd, root, account)
    env = {"HPCAI_SSH_CONFIG": str(user_ssh_config(tmp_path, sshd / "known_hosts")), "SSH_AUTH_SOCK": ""}
    done = run_cli(
        "onboard", "-c", SITE, "-u", user(), "-A", account, "-i", str(sshd / "id_ed25519"), "--make-default",
        "--yes", "--no-doctor", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return env


def test_budget_shows_what_is_left_and_prices_a_job(
    sshd: Path, slurm_cluster: str, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    env = setup_site(sshd, isolated_hpcai / "config", tmp_path, "EUHPC_D17_084")
    result = run_cli("budget", "--nodes", "4", "--time", "02:00:00", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cost"] == {"nodes": 4, "hours": 2.0, "amount": 256.0, "unit": "local core-hours"}
    assert data["remaining_after"] == 25000 - 256
    assert {a["account"] for a in data["allocations"]} == {"EUHPC_D17_084", "EUHPC_D17_001"}
    workload = json.loads(run_cli("budget", "probe", "--json", env=env).stdout)["cost"]  # probe: 1 node, 10 min
    assert workload == {"nodes": 1, "hours": round(10 / 60, 4), "amount": round(32 / 6, 2), "unit": "local core-hours"}
    shown = run_cli("budget", "-N", "1", env=env)
    assert "EUHPC_D17_084 *" in shown.stdout and "24,968 would be left on EUHPC_D17_084" in shown.stdout
    assert "per day: not known yet" in shown.stdout  # readings of a few seconds: no rate yet


def test_budget_forecasts_when_the_allocation_is_spent_from_its_readings(
    sshd: Path, slurm_cluster: str, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    """Two days ago the site's saldo said 21,000 used, today 25,000: 2,000 a day, 25,000 left, so spent in
    12.5 days, before the allocation ends (2027-03-01); submit carries the same forecast."""
    env = setup_site(sshd, isolated_hpcai / "config", tmp_path, "EUHPC_D17_084")
    Store().record_budget_reading(
        BudgetReading(SITE, "EUHPC_D17_084", time.time() - 2 * 86400, 21_000, 50_000, "local core-hours")
    )
    result = run_cli("budget", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (mine,) = [a for a in json.loads(result.stdout)["allocations"] if a["account"] == "EUHPC_D17_084"]
    ahead = mine["forecast"]
    assert round(ahead["burn"]["per_day"]) == 2_000 and "2 readings over 2.0 days" in ahead["burn"]["source"]
    assert round(ahead["days_left"], 1) == 12.5 and ahead["spent_before_end"] is True
    assert ahead["spent_on"] == (dt.date.today() + dt.timedelta(days=12.5)).isoformat()
    shown = run_cli("budget", env=env)
    assert "(before it ends)" in shown.stdout and "the site's budget command" in shown.stdout
    submitted = run_cli("submit", "probe", "--time", "00:05:00", "--json", env=env, timeout=180)
    assert submitted.returncode == 0, submitted.stderr
    assert round(json.loads(submitted.stdout)["budget"]["forecast"]["burn"]["per_day"]) == 2_000


def test_submit_refuses_a_run_the_budget_cannot_pay_unless_forced(
    sshd: Path, slurm_cluster: str, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    env = setup_site(sshd, isolated_hpcai / "config", tmp_path, "EUHPC_D17_001")
    refused = run_cli("submit", "probe", "--time", "00:30:00", env=env, timeout=120)
    assert refused.returncode == 2, refused.stdout
    message = " ".join(refused.stderr.split())
    assert "can cost 16 local core-hours (1 node(s) x 0.5 h x 32 per node-hour)" in message
    assert "'EUHPC_D17_001' has only -2 left" in message and "--force-budget" in message
    assert "Account EUHPC_D17_084 has 25,000 left (-A EUHPC_D17_084)" in message
    assert json.loads(run_cli("list", "--json", env=env).stdout) == []  # nothing was submitted

    moved = run_cli("submit", "probe", "--time", "00:30:00", "-A", "EUHPC_D17_084", "--json", env=env, timeout=180)
    assert moved.returncode == 0, moved.stderr
    budget = json.loads(moved.stdout)["budget"]
    assert budget["remaining"] == 25000 and budget["cost"]["amount"] == 16 and budget["note"] is None

    forced = run_cli("submit", "probe", "--time", "00:30:00", "--force-budget", "--json", env=env, timeout=180)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["budget"]["note"] == "over budget, submitted because of --force-budget"
    for run in (json.loads(moved.stdout)["run_id"], json.loads(forced.stdout)["run_id"]):
        assert run_cli("cancel", run, env=env, timeout=120).returncode == 0


def test_an_account_the_site_does_not_know_is_refused_at_submit(
    sshd: Path, slurm_cluster: str, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    env = setup_site(sshd, isolated_hpcai / "config", tmp_path, "EUHPC_D17_084")
    refused = run_cli("submit", "probe", "-A", "EUHPC_TYPO", env=env, timeout=120)
    assert refused.returncode == 2
    assert "'EUHPC_TYPO' is not one of your accounts" in " ".join(refused.stderr.split())
