"""known_hosts as OpenSSH reads it: plain and hashed host lines, `@revoked` keys (refused wherever they
appear) and `@cert-authority` lines (a host certificate signed by a listed CA is accepted for the hosts
the line names). Malformed lines are skipped, as ssh skips them, instead of making every host unreachable.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from hpcai.backends.transport.certs import _KEY_FIELDS, _Reader, _when

HOST_CERTIFICATE = 2  # the certificate type of host certificates (PROTOCOL.certkeys)


def host_matches(patterns: str, host: str) -> bool:
    """OpenSSH host patterns: comma-separated, `*` and `?` wildcards, `!` negates (and wins)."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lstrip("!"))
        if re.fullmatch(regex, host, re.IGNORECASE):
            if negated:
                return False
            matched = True
    return matched


@dataclass
class KnownHosts:
    host_keys: paramiko.HostKeys = field(default_factory=paramiko.HostKeys)
    revoked: set[bytes] = field(default_factory=set)
    authorities: list[tuple[str, bytes]] = field(default_factory=list)  # (host patterns, CA public key blob)
    skipped: int = 0

    @classmethod
    def load(cls, paths: Iterable[Path]) -> KnownHosts:
        known = cls()
        for path in paths:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                known._add(line.strip())
        return known

    def _add(self, line: str) -> None:
        if not line or line.startswith("#"):
            return
        try:
            if line.startswith("@"):
                marker, hosts, _, key = line.split()[:4]
                blob = base64.b64decode(key, validate=True)
                if marker == "@revoked":
                    self.revoked.add(blob)
                elif marker == "@cert-authority":
                    self.authorities.append((hosts, blob))
                return
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        except (ValueError, binascii.Error, paramiko.hostkeys.InvalidHostKey, paramiko.SSHException):
            entry = None
        if entry is None:
            self.skipped += 1
            return
        self.host_keys._entries.append(entry)

    def authorities_for(self, host: str) -> list[bytes]:
        return [blob for patterns, blob in self.authorities if host_matches(patterns, host)]

    def check_certificate(self, key: paramiko.PKey, host: str, names: list[str]) -> str | None:
        """None when `key` carries a host certificate, valid now for one of `names`, signed by a CA that
        known_hosts trusts for `host`; otherwise why not."""
        blob = getattr(getattr(key, "public_blob", None), "key_blob", None)
        if not blob:
            return "the server offered a plain key, not a certificate"
        try:
            cert = _parse_host_certificate(blob)
        except (struct.error, ValueError, IndexError) as exc:
            return f"its certificate cannot be read ({exc})"
        if cert.ca_blob in self.revoked:
            return "the CA that signed its certificate is @revoked in known_hosts"
        if cert.ca_blob not in self.authorities_for(host):
            return "its certificate is signed by a CA that known_hosts does not trust for this host"
        if cert.kind != HOST_CERTIFICATE:
            return "its certificate is a user certificate, not a host certificate"
        now = dt.datetime.now(dt.UTC)
        if not cert.valid_after <= now < cert.valid_before:
            window = f"{cert.valid_after:%Y-%m-%d %H:%M} to {cert.valid_before:%Y-%m-%d %H:%M} UTC"
            return f"its certificate is valid only from {window}"
        if cert.principals and not any(name in cert.principals for name in names):
            return f"its certificate names {', '.join(cert.principals)}, not {names[0]}"
        try:
            ca = paramiko.PKey.from_type_string(_Reader(cert.ca_blob).string().decode(), cert.ca_blob)
            valid = ca.verify_ssh_sig(cert.signed, paramiko.Message(cert.signature))
        except Exception as exc:  # an unsupported CA key type is a refusal, not a crash
            return f"its certificate's signature cannot be checked ({exc.__class__.__name__})"
        return None if valid else "its certificate's signature is not the CA's"


@dataclass(frozen=True)
class _HostCertificate:
    kind: int
    principals: list[str]
    valid_after: dt.datetime
    valid_before: dt.datetime
    ca_blob: bytes
    signed: bytes
    signature: bytes


def _parse_host_certificate(blob: bytes) -> _HostCertificate:
    reader = _Reader(blob)
    kind_name = reader.string().decode("ascii", errors="replace")
    if kind_name not in _KEY_FIELDS:
        raise ValueError(f"not a certificate ({kind_name})")
    reader.string()  # nonce
    for _ in range(_KEY_FIELDS[kind_name]):
        reader.string()
    reader.uint64()  # serial
    kind = reader.uint32()
    reader.string()  # key id
    principals_blob = _Reader(reader.string())
    principals = []
    while principals_blob.pos < len(principals_blob.blob):
        principals.append(principals_blob.string().decode("utf-8", errors="replace"))
    after, before = _when(reader.uint64()), _when(reader.uint64())
    reader.string()  # critical options
    reader.string()  # extensions
    reader.string()  # reserved
    ca_blob = reader.string()
    signed = blob[: reader.pos]
    signature = reader.string()
    return _HostCertificate(kind, principals, after, before, ca_blob, signed, signature)


class CertificateFirstTransport(paramiko.Transport):  # type: ignore[misc]
    """Asks for host certificates before plain host keys (paramiko's order is the other way round), for
    hosts that known_hosts trusts through a @cert-authority line."""

    @property
    def preferred_keys(self) -> tuple[str, ...]:
        keys = tuple(super().preferred_keys)
        return tuple(k for k in keys if "-cert-v01@" in k) + tuple(k for k in keys if "-cert-v01@" not in k)
