"""Onboard + doctor end to end: the test sshd as a site's login node, the test Slurm behind it, the site's
budget and quota commands as fixture scripts. A good set-up passes; each broken piece fails with its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.site import BUDGETS, SITE, install_command, install_site_commands, user, user_ssh_config, write_site_profile


@pytest.fixture
def site(sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "site"
    ssh_config = user_ssh_config(tmp_path, sshd / "known_hosts")
    env = {"HPCAI_SSH_CONFIG": str(ssh_config), "SSH_AUTH_SOCK": ""}
    return {"root": root, "env": env, "ssh_config": ssh_config, "sshd": sshd, "config": isolated_hpcai / "config"}


def onboard(site: dict[str, Any], account: str, *extra: str, identity: Path | None = None) -> dict[str, Any]:
    result = run_cli(
        "onboard", "--cluster", SITE, "--user", user(), "--account", account, "--host-alias", "testsite",
        "--identity", str(identity or site["sshd"] / "id_ed25519"), "--data-on", "work", "--make-default",
        "--yes", "--json", *extra, env=site["env"], timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    data["returncode"] = result.returncode
    return data


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["doctor"]}


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_a_good_set_up_passes_every_check_for_each_sites_budget_format(site: dict[str, Any], budget: str) -> None:
    account = BUDGETS[budget]["good"]
    write_site_profile(site["config"], site["root"], budget=budget)
    install_site_commands(site["sshd"], site["root"], account, budget=budget)
    report = onboard(site, account)
    checks = by_name(report)
    assert report["returncode"] == 0, json.dumps(report["doctor"], indent=1)
    assert {n for n, c in checks.items() if c["status"] == "pass"} >= {
        "config", "ssh-config", "ssh-key", "host-key", "login", "scheduler", "account", "budget", "quota",
        "purge", "python", "offline",
    }  # fmt: skip
    assert checks["budget"]["allocation"]["account"] == account and checks["budget"]["allocation"]["remaining"] > 0
    assert "HF_HUB_OFFLINE=1" in checks["offline"]["summary"]


def test_onboard_writes_config_and_ssh_entry_and_is_idempotent(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    before = site["ssh_config"].read_text()
    first = onboard(site, "EUHPC_D17_084")
    assert first["returncode"] == 0 and first["ssh_config"]["changed"] and first["config"]["changed"]
    text = site["ssh_config"].read_text()
    assert text.startswith(before) and text.count("Host testsite") == 1
    assert f"HostName 127.0.0.1\n  User {user()}\n  Port {os.environ['HPCAI_SSHD_PORT']}" in text
    assert Path(first["ssh_config"]["backup"]).read_text() == before
    assert first["public_key"] == (site["sshd"] / "id_ed25519.pub").read_text().strip()  # to paste in the portal
    config = (site["config"] / "config.toml").read_text()
    assert 'default_cluster = "testsite"' in config and 'account = "EUHPC_D17_084"' in config
    assert 'ssh_host = "testsite"' in config and 'data_filesystem = "work"' in config
    second = onboard(site, "EUHPC_D17_084")
    assert not second["ssh_config"]["changed"] and not second["config"]["changed"]
    assert second["ssh_config"]["backup"] is None and site["ssh_config"].read_text() == text
    assert len(list(site["ssh_config"].parent.glob("config.hpcai-backup-*"))) == 1
    # The real ssh client reads the entry hpcai wrote, and reaches the site with it.
    probe = subprocess.run(["ssh", "-F", str(site["ssh_config"]), "-o", "BatchMode=yes", "testsite", "echo", "in"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert probe.stdout == "in\n", probe.stderr


def test_missing_key_fails_with_how_to_create_and_register_it(site: dict[str, Any], tmp_path: Path) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    report = onboard(site, "EUHPC_D17_084", identity=tmp_path / "keys" / "id_site")
    check = by_name(report)["ssh-key"]
    assert report["returncode"] == 1 and check["status"] == "fail"
    assert f"ssh-keygen -t ed25519 -f {tmp_path / 'keys' / 'id_site'}" in check["fix"]
    assert "Upload your public key" in check["fix"]
    assert by_name(report)["login"]["status"] == "skip" and by_name(report)["budget"]["status"] == "skip"
    assert any("does not exist yet" in note for note in report["notes"])


def test_expired_certificate_fails_with_the_sites_renewal_step(site: dict[str, Any], tmp_path: Path) -> None:
    write_site_profile(site["config"], site["root"], method="ssh-certificate")
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keys / "id_ed25519"
    shutil.copy(site["sshd"] / "id_ed25519", key)
    shutil.copy(site["sshd"] / "id_ed25519.pub", keys / "id_ed25519.pub")
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-s", str(site["sshd"] / "ca"), "-I", "daily-cert", "-n", user(),
                    "-V", "20200101:20200102", str(keys / "id_ed25519.pub")], check=True)  # fmt: skip
    report = onboard(site, "EUHPC_D17_084", identity=key)
    check = by_name(report)["certificate"]
    assert report["returncode"] == 1 and check["status"] == "fail" and "expired" in check["summary"]
    assert "daily-cert" in check["summary"] and "step ssh login" in check["fix"]
    # A fresh certificate (valid for two hours) passes and logs in.
    subprocess.run(["ssh-keygen", "-q", "-s", str(site["sshd"] / "ca"), "-I", "fresh-cert", "-n", user(),
                    "-V", "-5m:+2h", str(keys / "id_ed25519.pub")], check=True)  # fmt: skip
    report = onboard(site, "EUHPC_D17_084", identity=key)
    fresh = by_name(report)["certificate"]
    assert fresh["status"] == "pass" and 1.9 < fresh["hours_left"] <= 2.0, fresh
    assert by_name(report)["login"]["status"] == "pass"


def test_unknown_host_key_fails_with_the_offered_fingerprint(site: dict[str, Any], tmp_path: Path) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    site["ssh_config"].write_text(site["ssh_config"].read_text().replace(str(site["sshd"] / "known_hosts"), str(empty)))
    report = onboard(site, "EUHPC_D17_084")
    check = by_name(report)["host-key"]
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(site["sshd"] / "host_ed25519.pub")], capture_output=True,
                                 text=True, check=True).stdout.split()[1]  # fmt: skip
    assert report["returncode"] == 1 and check["status"] == "fail" and fingerprint in check["summary"]
    assert "ssh testsite" in check["fix"] and empty.read_text() == ""  # nothing accepted behind the user's back


def test_wrong_account_fails_naming_the_users_real_accounts(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D99_999")
    report = onboard(site, "EUHPC_D99_999")
    check = by_name(report)["account"]
    assert report["returncode"] == 1 and check["status"] == "fail"
    assert "EUHPC_D17_001, EUHPC_D17_084" in check["summary"] and "--account EUHPC_D17_001" in check["fix"]


def test_exhausted_budget_fails_and_points_at_the_account_with_hours_left(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_001")
    report = onboard(site, "EUHPC_D17_001")
    check = by_name(report)["budget"]
    assert report["returncode"] == 1 and check["status"] == "fail" and "exhausted" in check["summary"]
    assert "EUHPC_D17_084" in check["fix"] and "PI" in check["fix"]
    assert by_name(report)["account"]["status"] == "pass"


def test_full_quota_fails_naming_the_filesystem(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084", work_used="1.0T")
    report = onboard(site, "EUHPC_D17_084")
    check = by_name(report)["quota"]
    assert report["returncode"] == 1 and check["status"] == "fail"
    assert check["summary"].startswith(f"work ({site['root']}/work/EUHPC_D17_084): 100% of space")
    assert "delete old runs" in check["fix"]
    # Nearly out of inodes (96 %) fails too, the space being fine.
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084", work_files="2.7k")
    inodes = by_name(onboard(site, "EUHPC_D17_084"))["quota"]
    assert inodes["status"] == "fail" and "96% of files" in inodes["summary"]


def test_doctor_alone_reports_in_words_and_exit_code(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_001")
    onboard(site, "EUHPC_D17_001", "--no-doctor")
    result = run_cli("doctor", env=site["env"], timeout=120)
    assert result.returncode == 1
    assert "✘ fail  budget" in result.stdout and "fix:" in result.stdout and "✔ pass  login" in result.stdout
    assert "1 check(s) failed: budget" in result.stdout


def test_onboard_here_writes_no_ssh_entry_and_missing_answers_are_named(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"])
    before = site["ssh_config"].read_text()
    missing = run_cli("onboard", "--cluster", SITE, "--yes", env=site["env"])
    assert missing.returncode == 2 and "pass --user" in missing.stderr and "Traceback" not in missing.stderr
    here = run_cli("onboard", "--cluster", SITE, "--user", user(), "--account", "EUHPC_D17_084", "--here", "--yes",
                   "--json", "--no-doctor", env=site["env"])  # fmt: skip
    assert here.returncode == 0, here.stderr
    data = json.loads(here.stdout)
    assert data["ssh_config"] is None and data["settings"]["ssh_host"] is None and data["doctor"] is None
    assert site["ssh_config"].read_text() == before
    assert "ssh_host" not in (site["config"] / "config.toml").read_text()


def test_purge_risk_warns_and_the_container_runtime_is_looked_for(site: dict[str, Any]) -> None:
    write_site_profile(site["config"], site["root"], extra={"container": {"runtime": "apptainer", "flags": []}})
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    staged = site["root"] / "scratch" / user() / "hpcai" / "store" / "objects" / "ab" / "abcdef"
    staged.parent.mkdir(parents=True)
    staged.write_text("old data")
    sixty_days_ago = time.time() - 60 * 86400
    os.utime(staged, (sixty_days_ago, sixty_days_ago))
    (site["sshd"] / "sitebin" / "apptainer").unlink(missing_ok=True)
    report = onboard(site, "EUHPC_D17_084")
    checks = by_name(report)
    assert checks["purge"]["status"] == "warn" and "1 file(s) under" in checks["purge"]["summary"]
    assert "deletes files after 40 days" in checks["purge"]["summary"] and "hpcai stage" in checks["purge"]["fix"]
    assert checks["container"]["status"] == "fail" and "`apptainer` is not available" in checks["container"]["summary"]
    assert report["returncode"] == 1
    install_command(site["sshd"], "apptainer", "apptainer version 1.3.4\n")
    report = onboard(site, "EUHPC_D17_084")
    assert by_name(report)["container"]["status"] == "pass" and report["returncode"] == 0  # a warning is no failure
    assert str(site["sshd"] / "sitebin" / "apptainer") in by_name(report)["container"]["summary"]


def test_a_user_outside_the_sites_container_group_is_warned(site: dict[str, Any]) -> None:
    """JSC lets only users who asked for it run containers: doctor asks `id -Gn` on the login node."""
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    install_command(site["sshd"], "apptainer", "apptainer version 1.3.4\n")
    request = "In JuDoor, under Software, request access to the container runtime."
    container = {"runtime": "apptainer", "group": "hpcai-no-such-group", "group_request": request}
    write_site_profile(site["config"], site["root"], extra={"container": container})
    checks = by_name(onboard(site, "EUHPC_D17_084"))
    assert checks["container"]["status"] == "warn" and "not in the group 'hpcai-no-such-group'" in checks[
        "container"]["summary"]  # fmt: skip
    assert checks["container"]["fix"] == request
    mine = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    write_site_profile(site["config"], site["root"], extra={"container": {**container, "group": mine}})
    assert by_name(onboard(site, "EUHPC_D17_084"))["container"]["status"] == "pass"


def test_a_passphrase_key_needs_the_agent_and_works_through_it(site: dict[str, Any], tmp_path: Path) -> None:
    write_site_profile(site["config"], site["root"])
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    key = tmp_path / "keys" / "id_jsc"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret pass", "-C", "jsc", "-f", str(key)], check=True)
    with (site["sshd"] / "authorized_keys").open("a") as keys:  # the site has the public key (JuDoor upload)
        keys.write(Path(f"{key}.pub").read_text())
    report = onboard(site, "EUHPC_D17_084", identity=key)
    check = by_name(report)["ssh-key"]
    assert check["status"] == "warn" and "has a passphrase and no agent" in check["summary"]
    assert f"ssh-add {key}" in check["fix"] and by_name(report)["login"]["status"] == "fail"

    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    agent_env = dict(line.split(";")[0].split("=", 1) for line in agent.splitlines() if line.startswith("SSH_"))
    try:
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho 's3cret pass'\n")
        askpass.chmod(0o700)
        subprocess.run(["ssh-add", str(key)], env={**os.environ, **agent_env, "SSH_ASKPASS": str(askpass),
                       "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}, check=True, capture_output=True)  # fmt: skip
        site["env"]["SSH_AUTH_SOCK"] = agent_env["SSH_AUTH_SOCK"]
        report = onboard(site, "EUHPC_D17_084", identity=key)
        checks = by_name(report)
        assert checks["ssh-key"]["status"] == "pass" and "1 key(s) in the agent" in checks["ssh-key"]["summary"]
        assert checks["login"]["status"] == "pass" and report["returncode"] == 0
    finally:
        subprocess.run(["kill", agent_env["SSH_AGENT_PID"]], check=False)


def test_a_pbs_site_is_checked_through_qstat(site: dict[str, Any]) -> None:
    pbs = {
        "scheduler": "pbs",
        "pbs": {"select_extra": [], "place": None},
        "launch": {
            "launcher": "direct",
            "machine_rank_var": "HPCAI_MACHINE_RANK",
            "master_port": "from-job-id",
            "gpu_request": "none",
            "python": sys.executable,
        },
    }
    write_site_profile(site["config"], site["root"], budget="sbank", extra=pbs)
    install_site_commands(site["sshd"], site["root"], "MyProj", budget="sbank")
    report = onboard(site, "MyProj")
    checks = by_name(report)
    assert report["returncode"] == 0, json.dumps(report["doctor"], indent=1)
    assert checks["scheduler"]["summary"] == "PBS answers; queues debug."
    assert checks["python"]["status"] == "pass" and checks["budget"]["allocation"]["unit"] == "node-hours"
    pbs["partitions"] = [{"name": "prod", "max_nodes": 10, "max_walltime": "24:00:00", "default": True}]
    write_site_profile(site["config"], site["root"], budget="sbank", extra=pbs)
    renamed = by_name(onboard(site, "MyProj"))["scheduler"]
    assert renamed["status"] == "warn" and "no queue prod" in renamed["summary"]


def test_leonardo_style_certificate_held_only_by_the_agent(site: dict[str, Any], tmp_path: Path) -> None:
    """`step ssh login` leaves a 12-hour certificate in the agent and nothing on disk that the site
    trusts by itself: the key alone is not authorized, only the CA-signed certificate is."""
    write_site_profile(site["config"], site["root"], method="ssh-certificate")
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    key = tmp_path / "agent-only" / "id_step"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(site["sshd"] / "ca"), "-I", "step-cert", "-n", user(),
                    "-V", "-5m:+12h", f"{key}.pub"], check=True)  # fmt: skip
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    agent_env = dict(line.split(";")[0].split("=", 1) for line in agent.splitlines() if line.startswith("SSH_"))
    try:
        subprocess.run(["ssh-add", str(key)], env={**os.environ, **agent_env}, check=True, capture_output=True)
        for path in (key, Path(f"{key}-cert.pub")):
            path.unlink()  # only the agent holds them now, as after `step ssh login`
        site["env"]["SSH_AUTH_SOCK"] = agent_env["SSH_AUTH_SOCK"]
        report = onboard(site, "EUHPC_D17_084", "--identity", "")
        checks = by_name(report)
        assert "IdentityFile" not in site["ssh_config"].read_text().split(">>> hpcai")[1]
        assert checks["certificate"]["status"] == "pass" and "step-cert" in checks["certificate"]["summary"]
        assert 11.8 < checks["certificate"]["hours_left"] <= 12 and checks["login"]["status"] == "pass"
        assert report["returncode"] == 0, json.dumps(report["doctor"], indent=1)
    finally:
        subprocess.run(["kill", agent_env["SSH_AGENT_PID"]], check=False)


def test_certificate_sites_need_no_key_file_and_say_so(site: dict[str, Any], tmp_path: Path) -> None:
    write_site_profile(site["config"], site["root"], method="ssh-certificate")
    result = onboard(site, "EUHPC_D17_084", "--no-doctor", identity=tmp_path / "absent")
    assert any("no key file is needed" in note and "--identity ''" in note for note in result["notes"])
    assert "IdentitiesOnly" not in site["ssh_config"].read_text()  # the agent's certificate must stay usable


def test_a_sites_software_environment_is_entered_on_the_login_node(site: dict[str, Any]) -> None:
    """CSCS: jobs get PyTorch from a uenv (#SBATCH --uenv); on the login node the same comes from `uenv run
    IMAGE --view=default -- CMD`. Doctor's Python check and the job environment's pre-flight run through the
    profile's `environment.enter`, here a stand-in `siteenv` that logs its arguments and runs the command."""
    install_site_commands(site["sshd"], site["root"], "EUHPC_D17_084")
    sitebin = site["sshd"] / "sitebin"
    log = site["root"] / "siteenv.log"
    (sitebin / "siteenv").write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\nwhile [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'
    )
    (sitebin / "siteenv").chmod(0o755)
    enter = ["siteenv", "run", "pytorch/v2.8.0:v1", "--view=default", "--"]
    write_site_profile(site["config"], site["root"], extra={"environment": {"enter": enter}})
    checks = by_name(onboard(site, "EUHPC_D17_084"))
    assert checks["python"]["status"] == "pass", checks["python"]
    entered = log.read_text().splitlines()
    assert any(line.startswith("run pytorch/v2.8.0:v1 --view=default -- ") and "sys.version_info" in line
               for line in entered), entered  # fmt: skip
    assert any(" -- bash -lc " in line for line in entered), entered  # the pre-flight, in a login shell in it
