"""`hpcai stage --squashfs`: a folder staged as one SquashFS image, mounted read-only where the job runs.

The other answer to file quotas and metadata stalls (LUMI's own advice for many-file Python environments,
and for data sets): the whole folder is one file on the parallel filesystem, and inside the mount every
file keeps its name and place, so any reader -- the built-in loaders, the user's own code -- reads it as the
plain folder. The job mounts it with its container runtime (`--bind IMAGE:/data:image-src=/`, Apptainer
and Singularity) or with `squashfuse IMAGE DIR` where a node has it.

Built with the local `mksquashfs` (squashfs-tools), reproducibly: sorted, owner root, times 0, no xattrs,
so the same folder gives the same bytes and a re-stage sends nothing. File data is not compressed: data
sets are mostly images and media, compressed already, and compressing them costs minutes of CPU for a
few percent (the metadata is still compressed). The image is kept in the local cache under a digest of the
folder's listing (names, sizes, mtimes, modes, link targets): an unchanged folder is not built again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcai.backends.staging.pack import remove_abandoned
from hpcai.errors import HpcaiError

SQUASH_VERSION = 1  # bump when the bytes a folder squashes to change
MKSQUASHFS_FLAGS = ["-noappend", "-no-xattrs", "-all-root", "-mkfs-time", "0", "-all-time", "0", "-noD", "-noF",
                    "-quiet", "-no-progress"]  # fmt: skip
INSTALL_HINT = (
    "Install squashfs-tools (Debian/Ubuntu: `apt install squashfs-tools`, macOS: `brew install squashfs`, "
    "conda: `conda install -c conda-forge squashfs-tools`), or stage with --pack instead"
)


@dataclass(frozen=True)
class Squashed:
    image: Path  # the image, to be staged
    files_before: int
    reused: bool  # found in the cache, not built again


def squash_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "hpcai" / "squashfs"
    return base / f"v{SQUASH_VERSION}"


def _listing(source: Path) -> tuple[str, int, int]:
    """(digest of the listing, files, bytes); refuses what an image cannot hold faithfully."""
    digest = hashlib.sha256(f"{SQUASH_VERSION}\0".encode())
    files = size = 0
    root = str(source)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            link = ""
            if stat.S_ISLNK(info.st_mode):
                link = os.readlink(path)
                target = os.path.realpath(path)
                if not (target == os.path.realpath(root) or target.startswith(os.path.realpath(root) + os.sep)):
                    raise HpcaiError(
                        f"--squashfs {source}: {relative} links outside the folder ({link}); inside the image it "
                        "would point nowhere. Replace it by what it points to, or stage without --squashfs."
                    )
            elif not stat.S_ISREG(info.st_mode):
                raise HpcaiError(
                    f"--squashfs {source}: {relative} is not a regular file (a FIFO, socket or device); remove it "
                    "from the folder, or stage without --squashfs."
                )
            else:
                files += 1
                size += info.st_size
            digest.update(f"{relative}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_mode:o}\0{link}\n".encode(
                "utf-8", "surrogateescape"))  # fmt: skip
    return digest.hexdigest()[:32], files, size


def squash(source: Path, *, cache: Path | None = None, progress: Callable[[int], None] | None = None) -> Squashed:
    """Build (or find in the cache) the image of `source`, a folder; returns where it is."""
    if not source.is_dir():
        raise HpcaiError(f"--squashfs {source}: images are for folders; stage a single file without it.")
    mksquashfs = shutil.which("mksquashfs")
    if mksquashfs is None:
        raise HpcaiError(f"--squashfs needs mksquashfs on this machine, and it is not on PATH. {INSTALL_HINT}.")
    key, files, size = _listing(source)
    if files == 0:
        raise HpcaiError(f"--squashfs {source}: the folder holds no files; nothing to stage.")
    image = (cache or squash_cache()) / key / f"{source.name}.sqfs"
    if image.is_file():
        return Squashed(image, files, reused=True)
    image.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(image.parent, image.name)
    partial = image.parent / f".{image.name}.{os.getpid()}.partial"
    command = [
        mksquashfs,
        str(source.absolute()),
        str(partial.absolute()),
        *MKSQUASHFS_FLAGS,
        "-processors",
        str(os.cpu_count() or 1),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        shown = _follow(process, partial, size, progress)
    except BaseException:  # Ctrl-C: no half-built image is left behind
        process.kill()
        process.wait()
        partial.unlink(missing_ok=True)
        raise
    error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        raise HpcaiError(
            f"--squashfs {source}: mksquashfs failed ({error[-300:] or f'exit status {process.returncode}'}). If "
            f"the disk is full, free space in {image.parent} or set XDG_CACHE_HOME to a disk with room."
        )
    if progress is not None and size > shown:
        progress(size - shown)
    os.replace(partial, image)  # a concurrent build of the same folder wrote the same bytes
    return Squashed(image, files, reused=False)


def _follow(process: subprocess.Popen[bytes], partial: Path, size: int, progress: Callable[[int], None] | None) -> int:
    """Wait for mksquashfs; the image grows about as the data is read, which is the progress shown.
    Returns the bytes reported."""
    shown = 0
    while process.poll() is None:
        time.sleep(0.2)
        try:
            grown = min(partial.stat().st_size, size) - shown
        except FileNotFoundError:
            continue
        if progress is not None and grown > 0:
            progress(grown)
            shown += grown
    return shown


def container_bind(image: str, mount: str) -> str:
    """The `--bind` value that mounts a staged image at `mount` inside an Apptainer/Singularity container."""
    return f"{image}:{mount}:image-src=/"
