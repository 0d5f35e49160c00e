"""Access set-up as each site's own steps describe it (the audit in ../shared/notes/clusters.md): the SSH entry
names the key the steps create, and a certificate site's first fix is its certificate flow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpcai.flows.onboarding.checks import Doctor
from hpcai.flows.onboarding.doctor_ssh import check_ssh
from hpcai.flows.onboarding.onboard import _default_identity
from hpcai.spec.profile_files import profile_names
from hpcai.spec.profiles import load_profile
from hpcai.spec.userconfig import ClusterSettings


@pytest.mark.parametrize("cluster", profile_names())
def test_the_ssh_entry_names_the_key_the_sites_steps_create(cluster: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """JSC's and LUMI's steps have users run `ssh-keygen -f ~/.ssh/id_ed25519_<site>`; an entry naming
    ~/.ssh/id_ed25519 with IdentitiesOnly would never offer that key, whatever else ~/.ssh holds."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("a key for something else\n")
    profile = load_profile(cluster)
    created = {m for step in profile.access.steps for m in re.findall(r"ssh-keygen [^`]*-f (~/\.ssh/[\w.-]+)", step)}
    if not created:
        assert profile.access.key_file is None, f"{cluster}: key_file names a key no step creates"
        return
    assert created == {profile.access.key_file}, cluster
    assert _default_identity(profile) == profile.access.key_file


def test_a_certificate_site_without_a_certificate_is_told_the_certificate_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leonardo logs in with a 12-hour smallstep certificate held by the agent: with no agent and no key,
    doctor's fix is `step ssh login`, not `ssh-keygen` (which would make a key the site never accepts)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = tmp_path / "ssh_config"
    config.write_text("Host leonardo\n  HostName login.leonardo.cineca.it\n  User jdoe\n")
    monkeypatch.setenv("HPCAI_SSH_CONFIG", str(config))
    doctor = Doctor(cluster="leonardo-booster", profile=load_profile("leonardo-booster"),
                    settings=ClusterSettings(ssh_host="leonardo"))  # fmt: skip
    assert check_ssh(doctor) is False
    failed = doctor.checks[-1]
    assert failed.name == "ssh-key" and failed.status == "fail", doctor.checks
    assert "certificate" in failed.summary and "step ssh login" in (failed.fix or ""), failed
    assert "ssh-keygen" not in (failed.fix or "")
