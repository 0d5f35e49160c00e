"""The managed ~/.ssh/config block: idempotent, backed up, never touching the user's own lines."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from hpcai.errors import HpcaiError
from hpcai.flows.onboarding.sshconfig import HostEntry, write_host_entry

MINE = "# mine\nHost github.com\n  User git\n\nHost *\n  ServerAliveInterval 30\n"


def entry(**changes: object) -> HostEntry:
    values: dict[str, object] = {"alias": "leonardo", "hostname": "login.leonardo.cineca.it", "user": "jdoe",
                                 "identity_file": "~/.ssh/id_ed25519"}  # fmt: skip
    values.update(changes)
    return HostEntry(**values)  # type: ignore[arg-type]


def test_added_once_then_left_alone_and_the_users_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(MINE)
    first = write_host_entry(path, entry())
    assert first.changed and first.backup is not None and first.backup.read_text() == MINE
    text = path.read_text()
    assert text.startswith(MINE) and text.count("Host leonardo") == 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = write_host_entry(path, entry())
    assert not again.changed and again.backup is None and path.read_text() == text
    looked_up = paramiko.SSHConfig.from_path(str(path)).lookup("leonardo")
    assert looked_up["hostname"] == "login.leonardo.cineca.it" and looked_up["user"] == "jdoe"


def test_a_change_replaces_the_block_in_place(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(MINE)
    write_host_entry(path, entry())
    path.write_text(path.read_text() + "\nHost later\n  User me\n")  # the user adds lines after the block
    changed = write_host_entry(path, entry(user="jdoe2"))
    text = path.read_text()
    assert changed.changed and "User jdoe2" in text and "User jdoe\n" not in text
    assert text.startswith(MINE) and text.endswith("Host later\n  User me\n") and text.count(">>> hpcai") == 1


def test_the_users_own_host_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(MINE + "\nHost leonardo lrd\n  HostName login02-ext.leonardo.cineca.it\n")
    before = path.read_text()
    result = write_host_entry(path, entry())
    assert not result.changed and "line 8" in result.reason and path.read_text() == before


def test_a_missing_file_and_directory_are_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config"
    result = write_host_entry(path, entry(port=2222, identity_file=None))
    assert result.changed and result.backup is None and "Port 2222" in path.read_text()
    assert "IdentityFile" not in path.read_text()


def test_an_alias_that_would_break_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HpcaiError, match="--host-alias"):
        write_host_entry(tmp_path / "config", entry(alias="bad alias\nHost *"))


def test_a_jump_host_gets_its_own_host_with_the_same_user_and_key(tmp_path: Path) -> None:
    """CSCS: every login goes through ela.cscs.ch, with the same (signed) key. OpenSSH's own parser (`ssh -G`)
    reads the block as meant: the login node jumps through the jump alias, which has the user and key."""
    import shutil
    import subprocess

    path = tmp_path / "config"
    jump = entry(alias="clariden", hostname="clariden.alps.cscs.ch", identity_file="~/.ssh/cscs-key",
                 jump_host="ela.cscs.ch")  # fmt: skip
    assert write_host_entry(path, jump).changed
    text = path.read_text()
    assert text.count("# >>> hpcai: clariden") == 1 and "Host clariden-jump" in text
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH's client is not installed")

    def resolved(alias: str) -> dict[str, str]:
        out = subprocess.run(["ssh", "-F", str(path), "-G", alias], capture_output=True, text=True, check=True).stdout
        return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())}

    login, via = resolved("clariden"), resolved("clariden-jump")
    assert (login["hostname"], login["user"], login["proxyjump"]) == ("clariden.alps.cscs.ch", "jdoe", "clariden-jump")
    assert (via["hostname"], via["user"]) == ("ela.cscs.ch", "jdoe")
    assert via["identityfile"].endswith("/.ssh/cscs-key") and login["identityfile"].endswith("/.ssh/cscs-key")
    assert write_host_entry(path, jump).changed is False  # idempotent, both hosts in one block
