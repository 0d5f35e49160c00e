"""`hpcai onboard` in a real pseudo-terminal, answered prompt by prompt as a newcomer would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect

from tests.conftest import REPO
from tests.site import SITE, install_site_commands, user, user_ssh_config, write_site_profile


def test_interactive_onboarding_asks_explains_writes_and_checks(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    root = tmp_path / "site"
    write_site_profile(isolated_hpcai / "config", root)
    install_site_commands(sshd, root, "EUHPC_D17_084")
    ssh_config = user_ssh_config(tmp_path, sshd / "known_hosts")
    env = {**os.environ, "HPCAI_SSH_CONFIG": str(ssh_config), "SSH_AUTH_SOCK": "", "COLUMNS": "200", "NO_COLOR": "1"}
    child = pexpect.spawn(
        sys.executable, ["-m", "hpcai", "onboard"], cwd=str(REPO), env=env, encoding="utf-8", timeout=60,
        dimensions=(50, 200),
    )  # fmt: skip
    log = []
    try:
        child.expect("Cluster")
        child.sendline("no-such-cluster")  # a typo is asked again, not a traceback
        child.expect("Please select one of the available options")
        child.sendline(SITE)
        child.expect("Getting access to testsite")  # the site's procedure first, before any other question
        child.expect("1. Ask your PI to add you to the project.")
        child.expect("Your login name on testsite")
        child.sendline(user())
        child.expect("Account / project that pays for your jobs")
        child.sendline("EUHPC_D17_084")
        child.expect(r"Where staged data should live .*purged after 40 days")
        child.sendline("work")
        child.expect(r"Name for the SSH Host entry.*\(testsite\)")
        child.sendline("")  # the default
        child.expect("SSH key file")
        child.sendline(str(sshd / "id_ed25519"))
        child.expect(r"Write the `Host testsite` entry to .*\[y/n\]")
        child.sendline("y")
        child.expect(r"Make testsite your default cluster\?.*\[y/n\]")
        child.sendline("y")
        child.expect("hpcai doctor")
        child.expect("all checks passed.", timeout=120)
        child.expect(pexpect.EOF)
    finally:
        log.append(child.before)
        child.close()
    assert child.exitstatus == 0, log
    config = (isolated_hpcai / "config" / "config.toml").read_text()
    assert 'default_cluster = "testsite"' in config and 'account = "EUHPC_D17_084"' in config
    assert "Host testsite" in ssh_config.read_text() and ssh_config.read_text().startswith("# my own settings")


def test_a_missing_key_can_be_created_in_the_terminal_with_a_passphrase(
    sshd: Path, isolated_hpcai: Path, tmp_path: Path
) -> None:
    from hpcai.backends.transport.ssh_config import load_private_key

    root = tmp_path / "site"
    write_site_profile(isolated_hpcai / "config", root)
    ssh_config = user_ssh_config(tmp_path, sshd / "known_hosts")
    key = tmp_path / "keys" / "id_site"
    env = {**os.environ, "HPCAI_SSH_CONFIG": str(ssh_config), "SSH_AUTH_SOCK": "", "COLUMNS": "200", "NO_COLOR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "hpcai", "onboard", "--cluster", SITE, "--user", user(), "--account", "EUHPC_D17_084",
         "--data-on", "work", "--host-alias", "site", "--not-default", "--no-doctor", "--identity", str(key)],
        cwd=str(REPO), env=env, encoding="utf-8", timeout=60, dimensions=(50, 200),
    )  # fmt: skip
    try:
        child.expect(r"Write the `Host site` entry to .*\[y/n\]")
        child.sendline("y")
        child.expect(r"does not exist\. Create it now with ssh-keygen .*\[y/n\]")
        child.sendline("y")
        child.expect("Enter passphrase")
        child.sendline("correct horse battery")
        child.expect("Enter same passphrase again")
        child.sendline("correct horse battery")
        child.expect(f"Created {key}; register {key}.pub")
        child.expect("Your public key, to register with the site")
        child.expect(r"ssh-ed25519 \S+ " + f"{user()}@{SITE}")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert load_private_key(key) is None  # protected by the passphrase, as JSC demands
    written = ssh_config.read_text() + (isolated_hpcai / "config" / "config.toml").read_text()
    assert f"IdentityFile {key}" in written and "correct horse" not in written
