"""The `~/.ssh/config` entry hpcai manages: one marked block per cluster, never the user's own lines.

The block is replaced in place when it changes and left alone when it is already right (idempotent);
the file is backed up before any change. A `Host` line of the user's own that already names the alias
wins: hpcai then writes nothing and says so.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpcai.errors import HpcaiError

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _begin(alias: str) -> str:
    return f"# >>> hpcai: {alias} (written by `hpcai onboard`; your own lines belong outside this block) >>>"


def _end(alias: str) -> str:
    return f"# <<< hpcai: {alias} <<<"


@dataclass(frozen=True)
class HostEntry:
    alias: str
    hostname: str
    user: str
    port: int = 22
    identity_file: str | None = None
    certificate_login: bool = False
    jump_host: str | None = None  # the site's jump host (CSCS: ela.cscs.ch), entered with the same key

    @property
    def jump_alias(self) -> str:
        return f"{self.alias}-jump"

    def _identity(self) -> list[str]:
        if not self.identity_file:
            return []
        lines = [f"  IdentityFile {self.identity_file}"]
        if not self.certificate_login:  # the certificate lives in the agent, beside other keys
            lines.append("  IdentitiesOnly yes")
        return lines

    def render(self) -> str:
        lines = [_begin(self.alias)]
        if self.jump_host:  # its own Host, so the jump gets the same user and key as the login node
            lines += [f"Host {self.jump_alias}", f"  HostName {self.jump_host}", f"  User {self.user}",
                      *self._identity()]  # fmt: skip
        lines += [f"Host {self.alias}", f"  HostName {self.hostname}", f"  User {self.user}"]
        if self.port != 22:
            lines.append(f"  Port {self.port}")
        if self.jump_host:
            lines.append(f"  ProxyJump {self.jump_alias}")
        lines += self._identity()
        lines += ["  ServerAliveInterval 60", "  ServerAliveCountMax 5", _end(self.alias)]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SshConfigChange:
    path: Path
    changed: bool
    backup: Path | None
    reason: str


def _own_host_lines(text: str, alias: str) -> list[int]:
    """Line numbers (1-based) of the user's own `Host` lines naming `alias`, outside hpcai's block."""
    found, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# >>> hpcai: "):
            inside = True
        elif line.startswith("# <<< hpcai: "):
            inside = False
        elif not inside:
            words = line.strip().split()
            if len(words) > 1 and words[0].lower() == "host" and alias in words[1:]:
                found.append(number)
    return found


def write_host_entry(path: Path, entry: HostEntry) -> SshConfigChange:
    if not _ALIAS.fullmatch(entry.alias):
        raise HpcaiError(
            f"--host-alias: '{entry.alias}' is not a usable ssh Host name (letters, digits, . _ -, no spaces or "
            "wildcards). Pick a short name such as the cluster's."
        )
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    own = _own_host_lines(text, entry.alias)
    if own:
        return SshConfigChange(
            path, False, None,
            f"{path} line {own[0]} already has your own `Host {entry.alias}` entry; hpcai uses it as it is and "
            "writes nothing (remove that entry, or pick another --host-alias, to let hpcai manage one).",
        )  # fmt: skip
    block = entry.render()
    begin, end = re.escape(_begin(entry.alias)), re.escape(_end(entry.alias))
    pattern = re.compile(rf"^{begin}\n.*?^{end}\n?", re.MULTILINE | re.DOTALL)
    match = pattern.search(text)
    if match and match.group(0).rstrip("\n") == block.rstrip("\n"):
        return SshConfigChange(path, False, None, f"{path}: the entry for {entry.alias} is already up to date.")
    if match:
        new_text = text[: match.start()] + block + text[match.end() :]
    else:
        separator = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        new_text = text + separator + block
    backup = None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_file():
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        backup = path.with_name(f"{path.name}.hpcai-backup-{stamp}")
        shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.hpcai-tmp-{os.getpid()}")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.chmod(0o600)  # ssh refuses a config others can write
    tmp.replace(path)
    from hpcai.backends.session import Session

    Session.settings_changed()  # connections opened before read the old entry
    verb = "updated" if match else "added"
    return SshConfigChange(path, True, backup, f"{path}: {verb} the entry for {entry.alias}.")
