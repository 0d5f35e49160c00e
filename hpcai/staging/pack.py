"""`hpcai stage --pack`: a data set of many small files staged as a few large tar shards.

Parallel filesystems punish many small files (LUMI allows 2M files per project scratch, JUWELS 3-4M; a
data loader opening 558k images stalls on metadata servers). Packing keeps the data set's manifests
(`*.json`, `*.jsonl`, `*.txt`, ... at its top level) as they are and puts every other file into
`shards/shard-NNNNNN.tar` (webdataset's tar layout, member names = the files' paths) of about the target
size, each with a `<shard>.idx.json` index of where each member's bytes lie (hpcai.train.shards). The
loaders find `shards/` beside the manifest and read an image named in the manifest by its path through
the index: the manifests need no rewriting (names are the keys), so the user's own tools still read them.

Packing is deterministic -- files in sorted order, fixed owner and time in the headers -- so the same
folder always packs to the same bytes: a re-stage finds the shards already staged and sends nothing. The
packed copy is kept in the local cache under a digest of the source listing (names, sizes, mtimes): an
unchanged folder is not packed again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcai.errors import HpcaiError

SHARDS_DIR = "shards"
DEFAULT_SHARD_BYTES = 256 << 20
MANIFEST_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".tsv", ".yaml", ".yml", ".parquet")
PACK_VERSION = 1


@dataclass(frozen=True)
class Packed:
    folder: Path  # the packed copy (manifests + shards/), to be staged
    files_before: int
    files_after: int
    shards: int
    reused: bool  # found in the cache, not packed again


def pack_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "hpcai" / "packed"
    return base / f"v{PACK_VERSION}"


def _listing(source: Path) -> tuple[list[Path], list[Path]]:
    """(top-level manifests, files to shard), sorted; refuses what a shard cannot hold."""
    manifests: list[Path] = []
    members: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                raise HpcaiError(
                    f"--pack {source}: {path.relative_to(source)} is a link or not a regular file; shards hold "
                    "regular files only. Replace it by the file it stands for, or stage without --pack."
                )
            if Path(dirpath) == source and path.suffix.lower() in MANIFEST_SUFFIXES:
                manifests.append(path)
            else:
                members.append(path)
    if (source / SHARDS_DIR).exists():
        raise HpcaiError(f"--pack {source}: it already has a {SHARDS_DIR}/ folder; it looks packed. Stage it as is.")
    return manifests, members


def _digest(source: Path, files: list[Path], shard_bytes: int) -> str:
    digest = hashlib.sha256(f"{PACK_VERSION}\0{shard_bytes}\0".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(source).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def pack(
    source: Path,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    cache: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Packed:
    """Pack `source` (a folder) into the cache; returns where the packed copy is."""
    from hpcai.train.shards import write_index

    if not source.is_dir():
        raise HpcaiError(f"--pack {source}: packing is for folders of many files; stage a single file without it.")
    manifests, members = _listing(source)
    if not members:
        raise HpcaiError(f"--pack {source}: nothing to pack besides top-level manifests; stage it without --pack.")
    key = _digest(source, manifests + members, shard_bytes)
    target = (cache or pack_cache()) / key / source.name
    if target.is_dir():
        shards = len(list((target / SHARDS_DIR).glob("*.tar")))
        return Packed(target, len(manifests) + len(members), _count(target), shards, reused=True)
    aside = target.parent / f".{source.name}.{os.getpid()}.partial"
    shutil.rmtree(aside, ignore_errors=True)
    (aside / SHARDS_DIR).mkdir(parents=True)
    for path in manifests:
        shutil.copy2(path, aside / path.name)
    groups = _groups(members, shard_bytes)
    try:
        for number, group in enumerate(groups):
            shard = aside / SHARDS_DIR / f"shard-{number:06d}.tar"
            with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as archive:
                for path, size in group:
                    info = tarfile.TarInfo(path.relative_to(source).as_posix())
                    info.size, info.mode, info.mtime = size, 0o644, 0
                    with path.open("rb") as handle:
                        archive.addfile(info, handle)
                    if progress is not None:
                        progress(size)
            write_index(shard)
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        raise HpcaiError(f"--pack {source}: cannot pack into {target.parent} ({exc}); free space there or set "
                         "XDG_CACHE_HOME to a disk with room.") from None  # fmt: skip
    try:
        os.rename(aside, target)
    except OSError:  # packed at the same time by another hpcai: theirs is the same bytes
        shutil.rmtree(aside, ignore_errors=True)
    return Packed(target, len(manifests) + len(members), _count(target), len(groups), reused=False)


def _groups(members: list[Path], shard_bytes: int) -> list[list[tuple[Path, int]]]:
    """Files in order, cut into shards of about `shard_bytes` (a larger file gets a shard of its own)."""
    groups: list[list[tuple[Path, int]]] = [[]]
    filled = 0
    for path in members:
        size = path.stat().st_size
        if groups[-1] and filled + size > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append((path, size))
        filled += size + 512  # its header
    return groups


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())
