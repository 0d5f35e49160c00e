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
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcai.backends.staging.manifest import HashCache
from hpcai.errors import HpcaiError

SHARDS_DIR = "shards"
DEFAULT_SHARD_BYTES = 256 << 20
MANIFEST_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".tsv", ".yaml", ".yml", ".parquet")
PACK_VERSION = 2  # bump when the bytes a folder packs to change: packed copies of another version are not reused


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


@dataclass(frozen=True)
class _File:
    path: str  # absolute
    name: str  # relative, with / separators: the member name
    size: int
    mtime_ns: int


def _listing(source: Path) -> tuple[list[_File], list[_File]]:
    """(top-level manifests, files to shard), sorted by name, one lstat each; refuses what a shard cannot
    hold."""
    root = str(source)
    manifests: list[_File] = []
    members: list[_File] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        relative_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            relative = name if relative_dir == "." else f"{relative_dir}/{name}".replace(os.sep, "/")
            if not stat.S_ISREG(info.st_mode):
                raise HpcaiError(
                    f"--pack {source}: {relative} is a link or not a regular file; shards hold regular files "
                    "only. Replace it by the file it stands for, or stage without --pack."
                )
            entry = _File(path, relative, info.st_size, info.st_mtime_ns)
            if relative_dir == "." and os.path.splitext(name)[1].lower() in MANIFEST_SUFFIXES:
                manifests.append(entry)
            else:
                members.append(entry)
    if (source / SHARDS_DIR).exists():
        raise HpcaiError(f"--pack {source}: it already has a {SHARDS_DIR}/ folder; it looks packed. Stage it as is.")
    tars = [f.name for f in members if "/" not in f.name and f.name.endswith(".tar")]
    if tars:
        raise HpcaiError(
            f"--pack {source}: it holds tar shards already ({tars[0]}...; img2dataset's layout, which the clip "
            "workload reads as they are). Stage it without --pack."
        )
    return manifests, members


def _digest(files: list[_File], shard_bytes: int) -> str:
    digest = hashlib.sha256(f"{PACK_VERSION}\0{shard_bytes}\0".encode())
    for f in files:
        digest.update(f"{f.name}\0{f.size}\0{f.mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def pack(
    source: Path,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    cache: Path | None = None,
    progress: Callable[[int], None] | None = None,
    hashes: HashCache | None = None,
) -> Packed:
    """Pack `source` (a folder) into the cache; returns where the packed copy is. With `hashes`, each
    shard's sha256 (computed while it was written) is remembered there, so staging does not read it again."""
    if not source.is_dir():
        raise HpcaiError(f"--pack {source}: packing is for folders of many files; stage a single file without it.")
    manifests, members = _listing(source)
    if not members:
        raise HpcaiError(f"--pack {source}: nothing to pack besides top-level manifests; stage it without --pack.")
    key = _digest(manifests + members, shard_bytes)
    target = (cache or pack_cache()) / key / source.name
    if target.is_dir():
        shards = len(list((target / SHARDS_DIR).glob("*.tar")))
        return Packed(target, len(manifests) + len(members), _files_after(manifests, shards), shards, reused=True)
    remove_abandoned(target.parent, source.name)
    aside = target.parent / f".{source.name}.{os.getpid()}.partial"
    shutil.rmtree(aside, ignore_errors=True)
    (aside / SHARDS_DIR).mkdir(parents=True)
    for f in manifests:
        shutil.copy2(f.path, aside / os.path.basename(f.path))
    groups = _groups(members, shard_bytes)
    digests: dict[str, str] = {}
    try:
        for number, group in enumerate(groups):
            name = f"shard-{number:06d}.tar"
            digests[name] = _write_shard(aside / SHARDS_DIR / name, group, progress)
    except HpcaiError:
        shutil.rmtree(aside, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        raise HpcaiError(f"--pack {source}: cannot pack into {target.parent} ({exc}); free space there or set "
                         "XDG_CACHE_HOME to a disk with room.") from None  # fmt: skip
    try:
        os.rename(aside, target)
    except OSError:  # packed at the same time by another hpcai: theirs is the same bytes
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if hashes is not None:
            for name, digest in digests.items():
                hashes.remember(target / SHARDS_DIR / name, digest)
    return Packed(target, len(manifests) + len(members), _files_after(manifests, len(groups)), len(groups),
                  reused=False)  # fmt: skip


def remove_abandoned(folder: Path, name: str) -> None:
    """Half-written `.<name>.<pid>.partial` folders or files of processes that are gone (a killed
    `hpcai stage --pack` or `--squashfs`)."""
    if not folder.is_dir():
        return
    for partial in folder.glob(f".{name}.*.partial"):
        pid = partial.name[len(name) + 2 : -len(".partial")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)
        except OSError:
            pass  # alive (another user's process: not ours to touch)


def _groups(members: list[_File], shard_bytes: int) -> list[list[_File]]:
    """Files in order, cut into shards of about `shard_bytes` (a larger file gets a shard of its own)."""
    groups: list[list[_File]] = [[]]
    filled = 0
    for f in members:
        if groups[-1] and filled + f.size > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(f)
        filled += f.size + BLOCK
    return groups


BLOCK = 512


def _write_shard(shard: Path, group: list[_File], progress: Callable[[int], None] | None) -> str:
    """One tar file (readable by tar, tarfile and webdataset) with its `.idx.json`; returns its sha256.
    Headers are made here rather than by tarfile: tarfile's per-member Python cost was most of a pack of
    50,000 small files. The index is written from the offsets as they are laid down (no re-scan)."""
    from hpcai.train.shards import save_index, split_key

    digest = hashlib.sha256()
    members: dict[str, dict[str, list[int]]] = {}
    offset = 0
    with open(shard, "wb") as out:

        def emit(data: bytes | memoryview) -> None:
            out.write(data)
            digest.update(data)

        for f in group:
            header = _header(f.name, f.size)
            emit(header)
            offset += len(header)
            with open(f.path, "rb") as handle:
                data = handle.read()
            if len(data) != f.size:
                raise HpcaiError(f"--pack: {f.path} changed while it was packed ({len(data)} bytes, listed with "
                                 f"{f.size}); pack again once nothing writes to the folder.")  # fmt: skip
            emit(data)
            padding = -f.size % BLOCK
            if padding:
                emit(b"\0" * padding)
            key, ext = split_key(f.name)
            members.setdefault(key, {})[ext] = [offset, f.size]
            offset += f.size + padding
            if progress is not None:
                progress(f.size)
        emit(b"\0" * (2 * BLOCK))  # the end-of-archive marker
        pad = -(offset + 2 * BLOCK) % RECORD
        if pad:
            emit(b"\0" * pad)
    save_index(shard, members)
    return digest.hexdigest()


RECORD = 20 * BLOCK  # tar's record size: archives are padded to a multiple of it


def _header(name: str, size: int) -> bytes:
    """A ustar header for a regular file (mode 0644, owner 0, time 0); long names and sizes past 8 GiB
    go through tarfile's GNU extensions."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    block = bytearray(BLOCK)
    block[0 : len(encoded)] = encoded
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[148:156] = b"        "
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    checksum = sum(block)
    block[148:156] = b"%06o\0 " % checksum
    return bytes(block)


def _files_after(manifests: list[_File], shards: int) -> int:
    """Files of the packed copy: the manifests, and each shard with its index."""
    return len(manifests) + 2 * shards
