"""A folder carried from one cluster to another through this machine, verified end to end.

`hpcai move` carries a run's checkpoint this way: the source lists every file with its size and SHA-256
(one command there), each file is read over the source's link into a temporary file here -- hashed as it
arrives -- sent to the target, and deleted here before the next (the space needed here is the largest
file, not the checkpoint), and the target hashes what it received (one command there). A file whose bytes
differ at either end is refused and nothing is left in the target folder; a link or a device in the folder,
or a name that would leave it, is refused before anything moves.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hpcai.backends.transport import Transport
from hpcai.errors import EnvironmentFailure, ValidationError
from hpcai.rundir.visible import visible_line

CHUNK = 8 << 20  # bytes read over the source's link at a time

# argv: folder. Prints {"files": {relative path: [size, sha256]}, "refused": [relative path, ...]}.
DIGEST_PY = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
files, refused = {}, []
if not os.path.isdir(root) or os.path.islink(root):
    print(json.dumps({"missing": True})); sys.exit(0)
for folder, dirs, names in os.walk(root):
    for name in sorted(dirs):
        if os.path.islink(os.path.join(folder, name)):
            refused.append(os.path.relpath(os.path.join(folder, name), root))
    for name in sorted(names):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, root)
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode):
            refused.append(rel); continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files[rel] = [info.st_size, digest.hexdigest()]
print(json.dumps({"files": files, "refused": refused}))
"""


@dataclass(frozen=True)
class Carried:
    files: int
    bytes: int


def folder_digest(transport: Transport, folder: str, *, where: str) -> dict[str, tuple[int, str]]:
    """Every regular file under `folder` with its size and SHA-256, computed where the folder is. `where`
    names that place in messages (a cluster)."""
    result = transport.run(["python3", "-c", DIGEST_PY, folder], timeout=3600)
    if not result.ok:
        raise EnvironmentFailure(
            f"cannot read {folder} on {where}: {visible_line(result.stderr.strip()[-500:]) or 'python3 failed'}. "
            "Check that the folder is readable there and that python3 runs on its login node."
        )
    try:
        listing = json.loads(result.stdout)
        if listing.get("missing"):
            raise ValidationError(f"{folder} on {where} is not a folder (or is a link); nothing was carried.")
        files = {str(name): (int(size), str(digest)) for name, (size, digest) in listing["files"].items()}
        refused = [str(name) for name in listing["refused"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EnvironmentFailure(
            f"reading {folder} on {where} gave no file list ({exc}); nothing was carried."
        ) from None
    if refused:
        raise ValidationError(
            f"{folder} on {where} holds {len(refused)} link(s) or special file(s) (e.g. "
            f"{visible_line(refused[0])}): a checkpoint holds plain files only, and a link could point anywhere. "
            "If you did not put them there, someone else did; pick another checkpoint."
        )
    for name, (size, digest) in files.items():
        parts = PurePosixPath(name).parts
        if (name.startswith("/") or ".." in parts or visible_line(name) != name or size < 0
                or len(digest) != 64):  # fmt: skip
            raise ValidationError(f"{folder} on {where}: the name {visible_line(name)!r} is not one a checkpoint "
                                  "holds; nothing was carried.")  # fmt: skip
    return files


def carry_folder(
    source: Transport,
    source_dir: str,
    expected: dict[str, tuple[int, str]],
    target: Transport,
    target_dir: str,
    *,
    source_name: str,
    target_name: str,
    progress: Callable[[int], None] | None = None,
) -> Carried:
    """Copy `source_dir` (on `source`, listed as `expected` by `folder_digest`) to `target_dir` (on `target`,
    which must not exist yet), verified at both ends. Raises EnvironmentFailure when a file arrives damaged;
    `target_dir` is then removed."""
    target.makedirs(target_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="hpcai-carry-") as scratch:
            local = Path(scratch) / "file"
            for name, (size, digest) in sorted(expected.items()):
                _fetch(source, f"{source_dir}/{name}", local, size, digest, where=source_name, progress=progress)
                remote = f"{target_dir}/{name}"
                if "/" in name:
                    target.makedirs(remote.rsplit("/", 1)[0])
                target.put_file(str(local), remote)
                local.unlink()
        received = folder_digest(target, target_dir, where=target_name)
        damaged = sorted(n for n in set(expected) | set(received) if expected.get(n) != received.get(n))
        if damaged:
            raise EnvironmentFailure(
                f"{len(damaged)} file(s) of {source_dir} arrived on {target_name} different from the source (e.g. "
                f"{visible_line(damaged[0])}): the copy is refused and removed; nothing was submitted. Run the "
                "same command again; if it recurs, check the target's disk and quota."
            )
    except BaseException:
        target.run(["rm", "-rf", "--", target_dir], timeout=600)
        raise
    return Carried(files=len(expected), bytes=sum(size for size, _ in expected.values()))


def _fetch(
    source: Transport, path: str, local: Path, size: int, digest: str, *, where: str,
    progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    """One file from the source into `local`, hashed as it arrives; refused when it is not what the source
    listed (changed since, or damaged on the way)."""
    hasher = hashlib.sha256()
    got = 0
    with open(local, "wb") as handle:
        while True:
            chunk = source.read_from(path, got, CHUNK)
            if not chunk:
                break
            handle.write(chunk)
            hasher.update(chunk)
            got += len(chunk)
            if progress is not None:
                progress(len(chunk))
            if got > size:
                break
    if got != size or hasher.hexdigest() != digest:
        raise EnvironmentFailure(
            f"{path} on {where} did not arrive as listed ({got} of {size} bytes, or different bytes): it changed "
            "there meanwhile or was damaged on the way. Nothing was submitted; run the same command again."
        )
