"""Staging data, containers and code to a cluster's filesystem: content-addressed, manifest-based,
resumable, verified.

On the cluster, under `<filesystem>/hpcai/store/`:
- `objects/ab/<sha256>`: each distinct file content once (two runs, or two data sets, share it);
- `trees/<tree id>/`: a staged folder (or file) rebuilt from hard links to the objects, with a
  `.hpcai-complete` marker; the tree id is the hash of its manifest (relative path, size, mode, sha256).

Only objects the cluster lacks are sent. A transfer broken off is resumed from the bytes that arrived
(`objects/tmp/<sha>.part`), then checked with sha256 on the cluster before it becomes an object. Large
files go by rsync over the same SSH settings when both ends have it; the rest by pipelined SFTP. A local
cache of (size, mtime) -> sha256 makes re-staging unchanged files cheap, and a complete tree is
recognised with one stat, so an identical re-stage sends nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcai.errors import HpcaiError
from hpcai.paths import state_dir
from hpcai.transport.base import Transport

COMPLETE = ".hpcai-complete"
RSYNC_MIN_BYTES = 64 << 20  # below this, SFTP's per-file overhead is lower than starting rsync


@dataclass(frozen=True)
class Entry:
    path: str  # relative, "/"-separated; "." for a single file
    size: int
    mode: int
    sha256: str


@dataclass
class StageReport:
    source: str
    tree_id: str
    remote_path: str
    files: int
    bytes_total: int
    objects_sent: int = 0
    bytes_sent: int = 0
    resumed_bytes: int = 0
    via: dict[str, int] = field(default_factory=dict)  # files sent per method
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class HashCache:
    """(absolute path, size, mtime_ns) -> sha256, kept in the state directory between stagings."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / "stage-hashes.json"
        try:
            self.data: dict[str, list[Any]] = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        cached = self.data.get(key)
        if cached and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        self.data[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
        self.dirty = True
        return digest.hexdigest()

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)
            self.dirty = False


def manifest(source: Path, cache: HashCache) -> list[Entry]:
    if not source.exists():
        raise HpcaiError(f"stage: {source} does not exist. Give a file or folder on this machine.")
    if source.is_file():
        return [Entry(".", source.stat().st_size, source.stat().st_mode & 0o777, cache.sha256(source))]
    entries = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")  # compiled caches differ per machine
        for name in sorted(files):
            path = Path(root) / name
            if path.is_symlink() and not path.exists():
                continue
            relative = path.relative_to(source).as_posix()
            entries.append(Entry(relative, path.stat().st_size, path.stat().st_mode & 0o777, cache.sha256(path)))
    return entries


def tree_id(entries: list[Entry]) -> str:
    text = json.dumps([[e.path, e.size, e.mode, e.sha256] for e in entries], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _local_file(source: Path, entry: Entry, keep_name: bool = False) -> Path:
    if entry.path == ".":
        return source
    return source.parent / entry.path if keep_name else source / entry.path


class Stager:
    def __init__(
        self,
        transport: Transport,
        store_root: str,
        *,
        progress: Callable[[int], None] | None = None,
        rsync_target: str | None = None,
        rsync_ssh: list[str] | None = None,
    ) -> None:
        self.transport = transport
        self.root = store_root.rstrip("/")
        self.progress = progress
        self.rsync_target = rsync_target  # "host:" prefix for rsync, when both ends have rsync
        self.rsync_ssh = rsync_ssh
        self._verified: set[str] = set()  # parts whose transfer tool already checked the whole file

    def tree_path(self, tree: str) -> str:
        return f"{self.root}/trees/{tree}"

    def stage(self, source: Path, cache: HashCache, *, keep_name: bool = False) -> StageReport:
        """Stage a file or folder. With `keep_name`, a folder lands as `<tree>/<name>/...` and the tree is
        the path to put on PYTHONPATH (how the hpcai package itself is staged)."""
        entries = manifest(source, cache)
        if keep_name and source.is_dir():
            entries = [Entry(f"{source.name}/{e.path}", e.size, e.mode, e.sha256) for e in entries]
        tree = tree_id(entries)
        destination = self.tree_path(tree) + ("" if source.is_dir() else "/" + source.name)
        report = StageReport(str(source), tree, destination, len(entries), sum(e.size for e in entries))
        if self.transport.exists(f"{self.tree_path(tree)}/{COMPLETE}"):
            return report  # staged before: one stat, nothing sent
        self.transport.makedirs(f"{self.root}/objects/tmp")
        present = self._present_objects()
        missing: dict[str, Entry] = {}
        for entry in entries:
            if entry.sha256 not in present and entry.sha256 not in missing:
                missing[entry.sha256] = entry
        sent = [(self._send(_local_file(source, e, keep_name), e, report), e) for e in missing.values()]
        self._verify_and_install(sent, report)
        self._materialise(source, entries, tree)
        return report

    def _present_objects(self) -> set[str]:
        result = self.transport.run(["find", f"{self.root}/objects", "-mindepth", "2", "-maxdepth", "2", "-type", "f"])
        present = set()
        for line in result.stdout.splitlines():
            parent, _, name = line.rpartition("/")
            if not parent.endswith("/objects/tmp") and len(name) == 64:
                present.add(name)
        return present

    def _send(self, local: Path, entry: Entry, report: StageReport) -> str:
        """Upload one object to its `.part` file, resuming after what already arrived; returns the part.
        rsync (`--append-verify`) checks the whole file itself, so its parts skip the sha256 pass."""
        part = f"{self.root}/objects/tmp/{entry.sha256}.part"
        arrived = self.transport.size(part) or 0
        if arrived > entry.size:
            arrived = 0  # not ours or corrupt: start over
        report.resumed_bytes += arrived
        if self.rsync_target and entry.size - arrived >= RSYNC_MIN_BYTES:
            self._rsync(local, part)
            method = "rsync"
            self._verified.add(part)
        else:
            self.transport.put_file(str(local), part, offset=arrived, progress=self.progress)
            method = "sftp" if self.transport.__class__.__name__ == "SshTransport" else "copy"
        report.via[method] = report.via.get(method, 0) + 1
        report.bytes_sent += entry.size - arrived
        report.objects_sent += 1
        return part

    def _verify_and_install(self, parts: list[tuple[str, Entry]], report: StageReport) -> None:
        """sha256 of every part on the cluster (a few commands for any number of files), then one script
        moves the good ones into place; a part that does not match is removed and reported."""
        sums: dict[str, str] = {part: e.sha256 for part, e in parts if part in self._verified}
        unverified = [part for part, _ in parts if part not in self._verified]
        for start in range(0, len(unverified), 500):
            chunk = unverified[start : start + 500]
            result = self.transport.run(["sha256sum", *chunk], timeout=600)
            for line in result.stdout.splitlines():
                digest, _, name = line.partition("  ")
                sums[name] = digest
        bad = [(part, e) for part, e in parts if sums.get(part) != e.sha256]
        good = [(part, e) for part, e in parts if sums.get(part) == e.sha256]
        lines = ["set -eu"]
        for final_dir in sorted({f"{self.root}/objects/{e.sha256[:2]}" for _, e in good}):
            lines.append(f"mkdir -p {shlex.quote(final_dir)}")
        for part, entry in good:
            final = f"{self.root}/objects/{entry.sha256[:2]}/{entry.sha256}"
            lines.append(f"mv -f {shlex.quote(part)} {shlex.quote(final)}")
        lines += [f"rm -f {shlex.quote(part)}" for part, _ in bad]
        if len(lines) > 1:
            self._run_script(lines, "install")
        if bad:
            names = ", ".join(e.path for _, e in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise HpcaiError(
                f"stage: {len(bad)} file(s) arrived corrupted ({names}): their sha256 on the cluster differs from "
                "this machine's. The partial copies were removed; run the same command again."
            )

    def _run_script(self, lines: list[str], what: str) -> None:
        script = f"{self.root}/tmp-{what}-{os.getpid()}.sh"
        self.transport.write_text(script, "\n".join(lines) + "\n")
        result = self.transport.run(["sh", script], timeout=600)
        self.transport.run(["rm", "-f", script])
        if not result.ok:
            detail = result.stderr.strip()[-500:]
            raise HpcaiError(f"stage: the {what} step failed on the cluster: {detail}")

    def _rsync(self, local: Path, part: str) -> None:
        command = ["rsync", "--partial", "--append-verify", "--inplace", "-q"]
        if self.rsync_ssh:
            command += ["-e", shlex.join(self.rsync_ssh)]
        result = subprocess.run([*command, str(local), f"{self.rsync_target}{part}"], capture_output=True, text=True)
        if result.returncode != 0:
            raise HpcaiError(f"stage: rsync of {local} failed: {result.stderr.strip()[-500:]}")
        if self.progress:
            self.progress(local.stat().st_size)

    def _materialise(self, source: Path, entries: list[Entry], tree: str) -> None:
        """One shell script, run on the cluster, links the objects into the tree and marks it complete."""
        target = self.tree_path(tree)
        building = f"{target}.building"
        lines = ["set -eu", f"rm -rf {shlex.quote(building)}", f"mkdir -p {shlex.quote(building)}"]
        names = [source.name if e.path == "." else e.path for e in entries]
        for directory in sorted({os.path.dirname(f"{building}/{name}") for name in names}):
            lines.append(f"mkdir -p {shlex.quote(directory)}")
        for entry, name in zip(entries, names, strict=True):
            place = f"{building}/{name}"
            obj = f"{self.root}/objects/{entry.sha256[:2]}/{entry.sha256}"
            # Hard links share the object's bytes; a filesystem without them gets a copy.
            source_q, place_q = shlex.quote(obj), shlex.quote(place)
            lines.append(f"ln -f {source_q} {place_q} 2>/dev/null || cp -f {source_q} {place_q}")
            lines.append(f"chmod {entry.mode & 0o755 | 0o444:o} {shlex.quote(place)}")
        lines += [
            f"rm -rf {shlex.quote(target)}",
            f"mv {shlex.quote(building)} {shlex.quote(target)}",
            f"touch {shlex.quote(target + '/' + COMPLETE)}",
        ]
        self._run_script(lines, "materialise")


def rsync_available(transport: Transport) -> bool:
    if shutil.which("rsync") is None:
        return False
    return transport.run(["sh", "-c", "command -v rsync"]).ok


def free_bytes(transport: Transport, path: str) -> int | None:
    """Free space where `path` lives or will live (POSIX df on the nearest existing parent)."""
    script = 'd="$1"; while [ ! -e "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d"'
    result = transport.run(["sh", "-c", script, "sh", path])
    lines = result.stdout.strip().splitlines()
    if not result.ok or len(lines) < 2:
        return None
    fields = lines[-1].split()
    return int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None
