"""Carrying a folder between two clusters through this machine (hpcai move's checkpoint): verified at both
ends; a file damaged on the way, changed at the source meanwhile, or a link planted in the folder is refused
and nothing is left at the target."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hpcai.backends.staging.carry import carry_folder, folder_digest
from hpcai.backends.transport import LocalTransport
from hpcai.errors import EnvironmentFailure, ValidationError


def _checkpoint(root: Path) -> Path:
    folder = root / "step-00000004"
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "__0_0.distcp").write_bytes(os.urandom(3 << 20))
    (folder / "shards" / ".metadata").write_bytes(b"meta")
    (folder / "COMPLETE.json").write_text('{"step": 4}\n')
    (folder / "empty").write_bytes(b"")
    return folder


class FlipsAByteOnTheWay(LocalTransport):
    """A link that delivers one file with a byte changed: the target's own hash must catch it."""

    def put_file(self, local: str, remote: str, **kwargs: object) -> None:  # type: ignore[override]
        super().put_file(local, remote, **kwargs)  # type: ignore[arg-type]
        if remote.endswith(".distcp"):
            with open(remote, "r+b") as handle:
                handle.seek(1000)
                byte = handle.read(1)
                handle.seek(1000)
                handle.write(bytes([byte[0] ^ 0xFF]))


class ChangesWhileRead(LocalTransport):
    """A source whose file is rewritten after it was listed (another job writing there)."""

    def read_from(self, path: str, offset: int, limit: int | None = None) -> bytes:
        data = super().read_from(path, offset, limit)
        return data.replace(b"meta", b"atem") if path.endswith(".metadata") else data


def test_a_folder_arrives_whole_and_verified(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "a")
    listed = folder_digest(LocalTransport(), str(source), where="a")
    assert set(listed) == {"shards/__0_0.distcp", "shards/.metadata", "COMPLETE.json", "empty"}
    assert listed["COMPLETE.json"] == (12, hashlib.sha256(b'{"step": 4}\n').hexdigest())
    seen: list[int] = []
    carried = carry_folder(LocalTransport(), str(source), listed, LocalTransport(), str(tmp_path / "b" / "x"),
                           source_name="a", target_name="b", progress=seen.append)  # fmt: skip
    assert carried.files == 4 and carried.bytes == sum(seen) == (3 << 20) + 4 + 12
    for name in listed:
        assert (tmp_path / "b" / "x" / name).read_bytes() == (source / name).read_bytes()


def test_a_file_damaged_in_transit_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "a")
    listed = folder_digest(LocalTransport(), str(source), where="a")
    target = tmp_path / "b" / "x"
    with pytest.raises(EnvironmentFailure, match=r"arrived on b different from the source \(e\.g\. shards/__0_0"):
        carry_folder(LocalTransport(), str(source), listed, FlipsAByteOnTheWay(), str(target), source_name="a",
                     target_name="b")  # fmt: skip
    assert not target.exists()


def test_a_file_that_changed_at_the_source_is_refused(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "a")
    listed = folder_digest(LocalTransport(), str(source), where="a")
    target = tmp_path / "b" / "x"
    with pytest.raises(EnvironmentFailure, match="did not arrive as listed"):
        carry_folder(ChangesWhileRead(), str(source), listed, LocalTransport(), str(target), source_name="a",
                     target_name="b")  # fmt: skip
    assert not target.exists()


@pytest.mark.parametrize("planted", ["file-link", "folder-link", "fifo"])
def test_a_link_or_a_special_file_in_the_folder_is_refused(tmp_path: Path, planted: str) -> None:
    source = _checkpoint(tmp_path / "a")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("private")
    if planted == "file-link":
        (source / "shards" / "x.distcp").symlink_to(secret / "key")
    elif planted == "folder-link":
        (source / "more").symlink_to(secret)
    else:
        os.mkfifo(source / "pipe")
    with pytest.raises(ValidationError, match="link"):
        folder_digest(LocalTransport(), str(source), where="a")


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a folder"):
        folder_digest(LocalTransport(), str(tmp_path / "nothing"), where="a")
