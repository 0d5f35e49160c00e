"""OpenSSH certificates: when do they expire? (Leonardo's 2FA certificates live 12 h in the agent.)"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class CertificateInfo:
    key_id: str
    principals: list[str]
    valid_after: dt.datetime
    valid_before: dt.datetime

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= self.valid_before

    def hours_left(self, now: dt.datetime | None = None) -> float:
        return ((self.valid_before - (now or dt.datetime.now(dt.UTC))).total_seconds()) / 3600


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.pos = 0

    def string(self) -> bytes:
        (length,) = struct.unpack(">I", self.blob[self.pos : self.pos + 4])
        self.pos += 4
        value = self.blob[self.pos : self.pos + length]
        self.pos += length
        return value

    def uint64(self) -> int:
        (value,) = struct.unpack(">Q", self.blob[self.pos : self.pos + 8])
        self.pos += 8
        return int(value)

    def uint32(self) -> int:
        (value,) = struct.unpack(">I", self.blob[self.pos : self.pos + 4])
        self.pos += 4
        return int(value)


# Public-key fields that follow the nonce, per certificate type (PROTOCOL.certkeys in OpenSSH).
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "sk-ssh-ed25519-cert-v01@openssh.com": 2,
}


def _when(seconds: int) -> dt.datetime:
    if seconds >= 2**63:  # "forever"
        return dt.datetime.max.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def parse_certificate(blob: bytes) -> CertificateInfo | None:
    """The validity of an OpenSSH certificate blob, or None when the blob is a plain public key."""
    reader = _Reader(blob)
    kind = reader.string().decode("ascii", errors="replace")
    if kind not in _KEY_FIELDS:
        return None
    reader.string()  # nonce
    for _ in range(_KEY_FIELDS[kind]):
        reader.string()
    reader.uint64()  # serial
    reader.uint32()  # type
    key_id = reader.string().decode("utf-8", errors="replace")
    principals_blob = _Reader(reader.string())
    principals = []
    while principals_blob.pos < len(principals_blob.blob):
        principals.append(principals_blob.string().decode("utf-8", errors="replace"))
    return CertificateInfo(key_id, principals, _when(reader.uint64()), _when(reader.uint64()))


def parse_certificate_file(text: str) -> CertificateInfo | None:
    """A `*-cert.pub` file's text: `type base64 comment`."""
    import base64

    parts = text.split()
    if len(parts) < 2:
        return None
    try:
        return parse_certificate(base64.b64decode(parts[1]))
    except (ValueError, struct.error):
        return None
