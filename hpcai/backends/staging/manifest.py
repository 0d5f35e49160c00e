"""What a local file or folder is, as staging sees it: regular files with size, mode and sha256, links
kept as links, and everything staging refuses (special files, links that leave the tree, dangling links).

Names are kept byte-exact: a name that is not valid UTF-8 travels as Python's surrogate escapes and is
turned back into the same bytes (`encode_name`) wherever it reaches the cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.errors import HpcaiError
from hpcai.paths import state_dir

SKIPPED_DIRS = {"__pycache__"}  # compiled caches differ per machine


def encode_name(name: str) -> bytes:
    """The bytes of a file name as the filesystem holds them (undoing surrogate escapes)."""
    return name.encode("utf-8", "surrogateescape")


def readable(name: str) -> str:
    """A name fit for a message: non-UTF-8 bytes and control characters shown escaped."""
    return ascii(name)[1:-1] if not name.isprintable() or _has_surrogates(name) else name


def _has_surrogates(name: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in name)


@dataclass(frozen=True)
class Entry:
    """One file of a staged tree. `path` is relative and '/'-separated ('.' for a single file); a link has
    `link` (its target, relative, inside the tree) and no content."""

    path: str
    size: int
    mode: int
    sha256: str
    link: str | None = None
    sparse: bool = False

    @property
    def tree_mode(self) -> int:
        """The mode the file gets on the cluster: the local one without write bits (staged content is
        shared and must not change in place), never wider than here."""
        return self.mode & 0o555


class HashCache:
    """(absolute path, size, mtime_ns) -> sha256, kept in the state directory between stagings."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "stage-hashes.json"
        try:
            self.data: dict[str, list[Any]] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path, info: os.stat_result | None = None) -> str:
        info = info or file.stat()
        key = json.dumps(str(file.absolute()))  # surrogate escapes survive as JSON escapes
        cached = self.data.get(key)
        if cached and cached[0] == info.st_size and cached[1] == info.st_mtime_ns:
            return str(cached[2])
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        self.data[key] = [info.st_size, info.st_mtime_ns, digest.hexdigest()]
        self.dirty = True
        return digest.hexdigest()

    def known(self, file: Path, info: os.stat_result) -> bool:
        """Whether the file's digest is cached for its current size and mtime (no read needed)."""
        cached = self.data.get(json.dumps(str(file.absolute())))
        if not cached:
            return False
        return bool(cached[0] == info.st_size and cached[1] == info.st_mtime_ns)

    def remember(self, file: Path, digest: str) -> None:
        """A digest computed while the file was written (a packed shard): no second read to hash it."""
        info = file.stat()
        self.data[json.dumps(str(file.absolute()))] = [info.st_size, info.st_mtime_ns, digest]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
            self.dirty = False


@dataclass
class Scan:
    entries: list[Entry]
    files: dict[str, Path]  # entry path -> the local file holding its bytes
    refused: list[str]


def _kind(mode: int) -> str | None:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return None


def _is_sparse(info: os.stat_result) -> bool:
    return info.st_size > (1 << 16) and info.st_blocks * 512 < info.st_size // 2


def manifest(source: Path, cache: HashCache, *, follow_links: bool = False) -> Scan:
    """Scan a file or folder. Refuses (HpcaiError) special files, dangling links and links leaving the tree
    (unless `follow_links`, which stages what they point to); links inside the tree stay links."""
    try:
        top = source.stat()  # a link given by name is followed: the user asked for what it points to
    except FileNotFoundError:
        raise HpcaiError(f"stage: {source} does not exist. Give a file or folder on this machine.") from None
    except OSError as exc:
        raise HpcaiError(f"stage: cannot read {source} ({exc.strerror}).") from None
    scan = Scan([], {}, [])
    if not stat.S_ISDIR(top.st_mode):
        kind = _kind(top.st_mode)
        if kind:
            raise HpcaiError(f"stage: {source} is {kind}, not a regular file: only files and folders can be staged.")
        _add_file(scan, ".", source, top, cache)
        return scan
    root = source.resolve()
    _walk(scan, root, root, "", cache, follow_links, visited={root})
    if scan.refused:
        shown = "; ".join(scan.refused[:5]) + (f"; and {len(scan.refused) - 5} more" if len(scan.refused) > 5 else "")
        raise HpcaiError(
            f"stage: {source} holds {len(scan.refused)} thing(s) that cannot be staged: {shown}. Remove them or "
            "stage a folder without them; for links that point outside the folder, --follow-links stages what "
            "they point to."
        )
    scan.entries.sort(key=lambda e: encode_name(e.path))
    return scan


def _add_file(scan: Scan, relative: str, path: Path, info: os.stat_result, cache: HashCache) -> None:
    entry = Entry(relative, info.st_size, stat.S_IMODE(info.st_mode), cache.sha256(path, info), None,
                  _is_sparse(info))  # fmt: skip
    scan.entries.append(entry)
    scan.files[relative] = path


def _walk(scan: Scan, tree_root: Path, folder: Path, prefix: str, cache: HashCache, follow: bool,
          visited: set[Path]) -> None:  # fmt: skip
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        scan.refused.append(f"{readable(prefix or '.')} cannot be read ({exc.strerror})")
        return
    for name in names:
        path = folder / name
        relative = f"{prefix}{name}"
        shown = readable(relative)
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(path)
            try:
                resolved = path.resolve(strict=True)
            except (FileNotFoundError, RuntimeError, OSError):
                scan.refused.append(f"{shown} is a link to {readable(target)}, which does not exist")
                continue
            if resolved.is_relative_to(tree_root):  # kept as a link, with or without --follow-links
                link = os.path.relpath(resolved, path.parent.resolve())
                scan.entries.append(Entry(relative, 0, 0o777, "", link))
                continue
            if not follow:
                scan.refused.append(f"{shown} is a link to {readable(target)}, outside the folder")
                continue
            info = resolved.stat()
            path = resolved
        if stat.S_ISDIR(info.st_mode):
            if name in SKIPPED_DIRS:
                continue
            real = path.resolve()
            if real in visited:
                scan.refused.append(f"{shown} leads back into a folder already staged (a link loop)")
                continue
            _walk(scan, tree_root, path, relative + "/", cache, follow, visited | {real})
        elif stat.S_ISREG(info.st_mode):
            _add_file(scan, relative, path, info, cache)
        else:
            scan.refused.append(f"{shown} is {_kind(info.st_mode) or 'not a regular file'}")


def tree_id(entries: list[Entry]) -> str:
    rows = [[e.path, e.size, e.mode, e.sha256] + ([e.link] if e.link is not None else []) for e in entries]
    text = json.dumps(rows, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def placed_name(entry: Entry, source: Path) -> str:
    """Where the entry lands inside its tree (a single file keeps its name)."""
    return source.name if entry.path == "." else entry.path


def listing_digest(rows: list[bytes]) -> str:
    """sha256 over NUL-terminated records sorted bytewise: what `find ... | LC_ALL=C sort -z | sha256sum`
    prints on the cluster for the same tree."""
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row + b"\0")
    return digest.hexdigest()


def listing_row(entry: Entry, name: str) -> bytes:
    """The record `find -printf` writes for this entry once it is staged (see remote.PROBE)."""
    if entry.link is not None:
        return b"l " + encode_name(name) + b" " + encode_name(entry.link)
    return f"f {entry.tree_mode:o} {entry.size} ".encode() + encode_name(name)


def plan_stage(
    store_root: str, source: Path, cache: HashCache, *, keep_name: bool = False, follow_links: bool = False
) -> tuple[Scan, str, str]:
    """What staging `source` will send and where it will be on the cluster, from local files alone (the
    tree id is the hash of the manifest): (scan, tree id, remote path). A submit plan uses it to know the
    staged paths before anything moves, and `Stager.stage` uses it, so the two cannot disagree."""
    scan = manifest(source, cache, follow_links=follow_links)
    if keep_name and scan.entries and scan.entries[0].path != ".":
        scan = _prefixed(scan, source.name)
    tree = tree_id(scan.entries)
    target = f"{store_root.rstrip('/') or '/'}/trees/{tree}"
    return scan, tree, target + ("" if source.is_dir() else "/" + source.name)


def _prefixed(scan: Scan, name: str) -> Scan:
    entries = [Entry(f"{name}/{e.path}", e.size, e.mode, e.sha256, e.link, e.sparse) for e in scan.entries]
    return Scan(entries, {f"{name}/{k}": v for k, v in scan.files.items()}, scan.refused)
