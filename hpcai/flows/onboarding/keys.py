"""The ssh-keygen command for a site's preferred key type (ed25519, or RSA-4096 where only that is named)."""

from __future__ import annotations

from pathlib import Path

from hpcai.spec.profiles import ClusterProfile


def keygen_argv(profile: ClusterProfile, path: Path, comment: str | None = None) -> list[str]:
    kind = (profile.access.key_types or ["ed25519"])[0]
    argv = ["ssh-keygen", "-t", "rsa", "-b", "4096"] if kind == "rsa-4096" else ["ssh-keygen", "-t", kind]
    argv += ["-f", str(path)]
    return argv + (["-C", comment] if comment else [])
