"""`hpcai doctor`, the SSH checks: key, agent, certificate, host key, login."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hpcai.flows.onboarding.checks import Check, Doctor, Status, onboard_hint
from hpcai.flows.onboarding.keys import keygen_argv

if TYPE_CHECKING:  # paramiko loads only when a check needs SSH
    import paramiko

    from hpcai.backends.transport.ssh_config import SshTarget


# -- SSH ------------------------------------------------------------------------------------------------------


def check_ssh(doctor: Doctor) -> bool:
    import paramiko

    from hpcai.backends.session import transport_for
    from hpcai.backends.transport.known_hosts import KnownHosts
    from hpcai.backends.transport.ssh_config import SshError, fingerprint, resolve_target, ssh_config_path

    cluster, profile, alias = doctor.cluster, doctor.profile, doctor.settings.ssh_host
    assert alias is not None
    target = resolve_target(alias)
    config_file = ssh_config_path()
    if target.hostname == alias and alias not in profile.access.login_hosts:
        doctor.add(
            Check(
                "ssh-config",
                "fail",
                f"{config_file} has no `Host {alias}` entry, so `{alias}` names no machine.",
                f"{onboard_hint(cluster)} writes one (HostName {profile.access.login_hosts[0]}).",
            )
        )
        return False
    doctor.add(Check("ssh-config", "pass", f"`{alias}` is {target.user}@{target.hostname}:{target.port}."))

    # Keys: the files the entry names, else the agent's keys.
    agent_keys = paramiko.Agent().get_keys() if os.environ.get("SSH_AUTH_SOCK") else ()
    missing = [p for p in target.identity_files if not p.is_file()]
    present = [p for p in target.identity_files if p.is_file()]
    upload = next((s for s in profile.access.steps if "upload" in s.lower() or "add the public key" in s.lower()), "")
    if missing and not agent_keys:
        key = missing[0]
        doctor.add(
            Check(
                "ssh-key",
                "fail",
                f"the key {key} named in {config_file} (Host {alias}) does not exist, and no agent holds a key.",
                f"Create it with `{shlex.join(keygen_argv(profile, key))}` (with a passphrase), then register "
                f"{key}.pub with the site. {upload}".strip(),
            )
        )
        return False
    if not present and not agent_keys and not target.identity_files:
        defaults = [Path("~/.ssh", n).expanduser() for n in ("id_ed25519", "id_ecdsa", "id_rsa")]
        if profile.access.method == "ssh-certificate":
            # The site's certificate (2FA) is what logs in, and it lives in the agent: ssh-keygen is not the fix.
            doctor.add(
                Check(
                    "ssh-key",
                    "fail",
                    "no certificate: no agent holds one, and this site logs in with a short-lived SSH certificate.",
                    profile.access.notes or "Get a certificate as your site describes, into a running ssh-agent.",
                )
            )
            return False
        if not any(p.is_file() for p in defaults):
            doctor.add(
                Check(
                    "ssh-key",
                    "fail",
                    "no SSH key: none named in the ssh config, none in ~/.ssh, none in an agent.",
                    f"Create one with `ssh-keygen -t ed25519` and register the .pub file with the site. {upload}",
                )
            )
            return False
    encrypted = [p for p in present if _encrypted(p)]
    summary = ", ".join(str(p) for p in present) or "default keys"
    if agent_keys:
        summary += f"; {len(agent_keys)} key(s) in the agent"
    if encrypted and not agent_keys:
        doctor.add(
            Check(
                "ssh-key",
                "warn",
                f"{encrypted[0]} has a passphrase and no agent is running, so hpcai cannot use it.",
                f"Start an agent and load the key: `eval $(ssh-agent)` and `ssh-add {encrypted[0]}`.",
            )
        )
    else:
        doctor.add(Check("ssh-key", "pass", summary + "."))

    if profile.access.method == "ssh-certificate" and not _check_certificate(doctor, target, agent_keys):
        return False

    # Host key, before any login: the user must have accepted it knowingly.
    known_hosts = KnownHosts.load(target.known_hosts)
    known = known_hosts.host_keys.lookup(target.known_hosts_name)
    authorities = known_hosts.authorities_for(target.known_hosts_name)
    if not known and authorities:
        doctor.add(Check("host-key", "pass", f"{target.known_hosts_name} is trusted through a @cert-authority line "
                         "of known_hosts (its host certificate is checked at login)."))  # fmt: skip
    elif not known:
        offered = _offered_key(target.hostname, target.port) if not target.proxy_jump else None
        seen = f" It offers {offered}." if offered else ""
        doctor.add(
            Check(
                "host-key",
                "fail",
                f"{target.known_hosts_name} is not in known_hosts "
                f"({', '.join(str(p) for p in target.known_hosts)}).{seen}",
                "Compare the fingerprint with the one your site publishes for its login nodes; if it matches, "
                f"accept it once with `ssh {alias}` (answer yes). hpcai never accepts host keys itself.",
            )
        )
        return False
    else:
        key = next(iter(known.values()))
        doctor.add(
            Check("host-key", "pass", f"{target.known_hosts_name} is known ({key.get_name()} {fingerprint(key)}).")
        )

    transport = transport_for(doctor.cluster, profile)
    try:
        result = transport.run(["true"], timeout=30)
    except SshError as exc:
        doctor.add(Check("login", "fail", f"`{alias}`: the login failed.", str(exc)))
        transport.close()
        return False
    if not result.ok:
        doctor.add(
            Check(
                "login",
                "fail",
                f"`{alias}`: `true` failed ({result.stderr.strip()}).",
                f"Try `ssh {alias} true` and read what the site says.",
            )
        )
        return False
    doctor.transport = transport
    doctor.add(Check("login", "pass", f"logged in to {target.hostname} as {target.user}."))
    return True


def _encrypted(path: Path) -> bool:
    from hpcai.backends.transport.ssh_config import load_private_key

    try:
        return load_private_key(path) is None
    except Exception:  # unreadable keys are the login check's to report
        return False


def _offered_key(host: str, port: int) -> str | None:
    """The host key a server offers, read from the key exchange alone (no login, nothing stored)."""
    import socket

    import paramiko

    from hpcai.backends.transport.ssh_config import fingerprint

    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
                key = transport.get_remote_server_key()
                return f"a {key.get_name()} key with fingerprint {fingerprint(key)}"
            finally:
                transport.close()
    except (OSError, paramiko.SSHException):
        return None


def _check_certificate(doctor: Doctor, target: SshTarget, agent_keys: Sequence[paramiko.PKey]) -> bool:
    from hpcai.backends.transport.ssh_config import collect_certificates

    found = collect_certificates(target, [key.asbytes() for key in agent_keys])
    renew = next((s for s in doctor.profile.access.steps if "every day" in s.lower()), doctor.profile.access.notes)
    if not found:
        doctor.add(
            Check(
                "certificate",
                "fail",
                "this site logs in with short-lived SSH certificates and none was "
                "found (neither beside the key nor in the agent).",
                renew,
            )
        )
        return False
    newest = max(found, key=lambda c: c.valid_before)
    hours = newest.hours_left()
    when = f"{newest.valid_before:%Y-%m-%d %H:%M} UTC"
    if hours <= 0:
        doctor.add(
            Check(
                "certificate",
                "fail",
                f"your certificate '{newest.key_id}' expired at {when} ({-hours:.1f} h ago).",
                renew,
                {"hours_left": round(hours, 2)},
            )
        )
        return False
    status: Status = "warn" if hours < 1 else "pass"
    doctor.add(
        Check(
            "certificate",
            status,
            f"certificate '{newest.key_id}' valid for {hours:.1f} h more (until {when}).",
            renew if status == "warn" else None,
            {"hours_left": round(hours, 2)},
        )
    )
    return True
