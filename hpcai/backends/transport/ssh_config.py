"""Where an SSH alias leads, as whom, and whom to trust: ~/.ssh/config resolved as OpenSSH does (host, port,
user, keys, ProxyJump, known_hosts files), private keys, host-key fingerprints, the policy that refuses
unknown hosts, and the certificates the agent or key files offer with their hours left. The SSH errors live
here too: both this and the transport raise them."""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from hpcai.backends.transport.base import OutcomeUnknown, TransportError
from hpcai.backends.transport.certs import CertificateInfo, parse_certificate, parse_certificate_file
from hpcai.backends.transport.known_hosts import KnownHosts


class SshError(TransportError):
    """The connection could not be made safely, or it failed; the message says what to do (exit 3)."""


class SshOutcomeUnknown(SshError, OutcomeUnknown):
    """The link dropped while a command that must not run twice was running."""


class SshRefused(SshError):
    """The link is up but the server refused an operation (SFTP failure: full disk, permissions)."""


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_private_key(path: Path) -> paramiko.PKey | None:
    """The key in `path`, or None when it is protected by a passphrase. (For OpenSSH-format keys the
    cryptography loader behind paramiko raises TypeError, not PasswordRequiredException: both mean
    'encrypted'.)"""
    try:
        return paramiko.PKey.from_path(str(path))
    except paramiko.PasswordRequiredException:
        return None
    except TypeError as exc:
        if "password" in str(exc).lower():
            return None
        raise


def ssh_config_path() -> Path:
    return Path(os.environ.get("HPCAI_SSH_CONFIG", "~/.ssh/config")).expanduser()


@dataclass(frozen=True)
class SshTarget:
    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[Path] = field(default_factory=list)
    certificate_files: list[Path] = field(default_factory=list)
    known_hosts: list[Path] = field(default_factory=list)
    proxy_jump: str | None = None

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def resolve_target(alias: str, config_path: Path | None = None) -> SshTarget:
    """What `ssh alias` would use, read from the ssh config file."""
    path = config_path or ssh_config_path()
    config = paramiko.SSHConfig.from_path(str(path)) if path.is_file() else paramiko.SSHConfig()
    entry = config.lookup(alias)
    identities = [Path(p).expanduser() for p in entry.get("identityfile", [])]
    certificates = [Path(p).expanduser() for p in entry.get("certificatefile", [])]
    for identity in identities:  # OpenSSH also tries <identity>-cert.pub
        cert = identity.with_name(identity.name + "-cert.pub")
        if cert.is_file() and cert not in certificates:
            certificates.append(cert)
    known = entry.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2")
    proxy = entry.get("proxyjump")
    return SshTarget(
        alias=alias,
        hostname=entry.get("hostname", alias),
        port=int(entry.get("port", 22)),
        user=entry.get("user", getpass.getuser()),
        identity_files=identities,
        certificate_files=certificates,
        known_hosts=[Path(p).expanduser() for p in known.split()],
        proxy_jump=None if proxy in (None, "none") else proxy,
    )


class RejectUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse unknown hosts, remembering the offered key so the error can show its fingerprint."""

    def __init__(self, target: SshTarget, known: KnownHosts | None = None) -> None:
        self.target = target
        self.known = known or KnownHosts()

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        files = ", ".join(str(p) for p in self.target.known_hosts)
        name = self.target.known_hosts_name
        if self.known.authorities_for(name):
            why = self.known.check_certificate(key, name, [self.target.hostname, self.target.alias])
            if why is None:
                return  # a host certificate from a CA that known_hosts trusts for this host
            raise SshError(
                f"{self.target.alias} ({hostname}): known_hosts ({files}) trusts a certificate authority for this "
                f"host, but {why}. hpcai will not connect. Check the CA line (@cert-authority) against your site's "
                f"documentation, and try `ssh {self.target.alias}`."
            )
        raise SshError(
            f"{self.target.alias} ({hostname}): this host is not in known_hosts ({files}), so hpcai will not "
            f"connect. It offered a {key.get_name()} key with fingerprint {fingerprint(key)}. Compare it with "
            "the fingerprint your site publishes (its documentation lists the login nodes' keys); if it "
            f"matches, accept it once with `ssh {self.target.alias}` (answer yes) and run hpcai again."
        )


def collect_certificates(target: SshTarget, agent_blobs: Sequence[bytes]) -> list[CertificateInfo]:
    """Certificates in the configured files (and `<identity>-cert.pub`) and in the agent."""
    found: list[CertificateInfo] = []
    for path in target.certificate_files:
        if path.is_file():
            info = parse_certificate_file(path.read_text())
            if info is not None:
                found.append(info)
    for blob in agent_blobs:
        try:
            info = parse_certificate(blob)
        except Exception:  # a key type we do not parse is simply not a certificate to us
            info = None
        if info is not None:
            found.append(info)
    return found


def check_certificates(target: SshTarget, agent_blobs: Sequence[bytes], renew_hint: str) -> list[CertificateInfo]:
    """Certificates in the configured files and in the agent; raise when all of them have expired."""
    found = collect_certificates(target, agent_blobs)
    if found and all(c.expired() for c in found):
        newest = max(found, key=lambda c: c.valid_before)
        ago = -newest.hours_left()
        raise SshError(
            f"{target.alias}: your SSH certificate '{newest.key_id}' expired at "
            f"{newest.valid_before:%Y-%m-%d %H:%M} UTC ({ago:.1f} h ago). {renew_hint} Then run hpcai again."
        )
    return found
