"""Staging data, containers and code to a cluster's filesystem: content-addressed, atomic, verified,
resumable. The store's layout and the scripts run there are in `remote.py`; what is staged (files, links,
what is refused) in `manifest.py`.

One stage is a handful of round trips, whatever the number of files:
1. probe: is the tree there and intact (one digest over every name, size, mode and link target), which
   objects exist (with sizes), what uploads are in progress, free space;
2. small files: one tar stream, checked and installed on the cluster in the same command;
   large files: rsync (when both ends have it) or pipelined SFTP, each resumable from what arrived,
   then checked by sha256 on the cluster (rsync's own whole-file check where rsync moved the bytes);
3. materialise: one script links the objects into a fresh folder and renames it into place.
A re-stage of an unchanged tree is the probe alone; `verify` adds a sha256 pass over the tree and its
objects on the cluster and repairs what is damaged.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from hpcai.backends.staging import remote
from hpcai.backends.staging.early import EarlyTransfer
from hpcai.backends.staging.manifest import (
    Entry,
    HashCache,
    Scan,
    encode_name,
    listing_digest,
    listing_row,
    placed_name,
    plan_stage,
    readable,
)
from hpcai.backends.staging.report import Probe, StageReport
from hpcai.backends.staging.streams import StreamRefused, parse_sums, stream_part, tar_stream
from hpcai.backends.transport.base import CommandResult, Transport, TransportError
from hpcai.backends.transport.local import LocalTransport
from hpcai.errors import HpcaiError

LARGE_FILE_BYTES = 64 << 20  # from this size on, a file travels alone (resumable; rsync when possible)
TAR_BATCH_BYTES = 256 << 20  # one tar stream carries at most this much (a drop loses at most one batch)
RSYNC_PARALLEL = 4  # large files sent by rsync at once


def _writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def object_path(sha: str) -> str:
    return f"{sha[:2]}/{sha}"


def variant_path(entry: Entry) -> str:
    """The object file a tree entry links to: the shared read-only copy (0444), or a copy with the
    entry's own mode."""
    base = object_path(entry.sha256)
    return base if entry.tree_mode == 0o444 else f"{base}.{entry.tree_mode:03o}"


class Stager:
    def __init__(
        self,
        transport: Transport,
        store_root: str,
        *,
        progress: Callable[[int], None] | None = None,
        rsync_target: str | None = None,
        rsync_ssh: list[str] | None = None,
        group_shared: bool = False,
    ) -> None:
        self.transport = transport
        self.root = store_root.rstrip("/") or "/"
        self.progress = progress
        self.rsync_target = rsync_target  # "host:" prefix for rsync, when both ends have rsync
        self.rsync_ssh = rsync_ssh
        self.umask = "027" if group_shared else "077"
        self.folder_mode = "750" if group_shared else "700"
        self.writer = _writer_id()

    def tree_path(self, tree: str) -> str:
        return f"{self.root}/trees/{tree}"

    # -- the steps ---------------------------------------------------------------------------------------

    def stage(
        self,
        source: Path,
        cache: HashCache,
        *,
        keep_name: bool = False,
        verify: bool = False,
        follow_links: bool = False,
    ) -> StageReport:
        """Stage a file or folder. With `keep_name`, a folder lands as `<tree>/<name>/...` and the tree is
        the path to put on PYTHONPATH (how the hpcai package itself is staged)."""
        early = None if verify else EarlyTransfer.start(self, source, cache, LARGE_FILE_BYTES)
        try:
            scan, tree, remote_path = plan_stage(self.root, source, cache, keep_name=keep_name,
                                                 follow_links=follow_links)  # fmt: skip
        except BaseException:
            if early is not None:
                early.finish()
            raise
        entries = scan.entries
        target = self.tree_path(tree)
        files = [e for e in entries if e.link is None]
        report = StageReport(
            str(source), tree, remote_path, len(files), sum(e.size for e in files), links=len(entries) - len(files)
        )
        probe = self._probe(target)
        expected = listing_digest([listing_row(e, placed_name(e, source)) for e in entries])
        intact = probe.tree_digest == expected
        damaged: set[str] = set()  # objects (or mode copies) to throw away and make again
        if verify:
            damaged, content_ok = self._verify_remote(target if intact else None, entries, source, probe)
            intact = intact and content_ok and not damaged
        adopted = early.adopt(entries, self, probe) if early is not None else []
        if intact:
            for part, _ in adopted:  # sent for nothing: the cluster had it (hashed elsewhere)
                self.transport.run(["rm", "-f", "--", part])
            return report  # staged before and whole: nothing to send
        needed: dict[str, Entry] = {}
        for entry in files:
            base = object_path(entry.sha256)
            size = probe.objects.get(base)
            good = size == entry.size and base not in damaged
            if not good and entry.sha256 not in needed:
                needed[entry.sha256] = entry
            variant = variant_path(entry)
            if variant != base and (probe.objects.get(variant, entry.size) != entry.size or not good):
                damaged.add(variant)  # a mode copy is remade from its (re-sent) object
        checked_parts: list[tuple[str, Entry]] = []  # parts already checked, installed with the tree
        for part, entry in adopted:  # sent while it was hashed
            if needed.pop(entry.sha256, None) is not None:
                assert early is not None
                method = "rsync" if early.thread is not None else "stream"
                report.count(method, 1, entry.size - early.resumed)
                report.resumed_bytes += early.resumed
                checked_parts.append((part, entry))
            else:
                self.transport.run(["rm", "-f", "--", part])
        to_send = self._claim_parts(list(needed.values()), probe, report)
        self._check_space(to_send, report, probe)
        checked_parts += self._send(to_send, scan, report, probe.python)
        if not probe.python:
            self._install(checked_parts, verified=True)
            checked_parts = []
        report.repaired = probe.tree_digest not in (None, expected) or bool(damaged)
        self._materialise(source, entries, target, damaged, repair=probe.tree_digest is not None,
                          python=probe.python, install=checked_parts)  # fmt: skip
        return report

    def _run(self, script: str, *args: str, input: bytes | None = None, timeout: float = 600) -> CommandResult:
        return self.transport.run(["sh", "-c", script, "sh", *args], timeout=timeout, input=input)

    def _probe(self, tree: str) -> Probe:
        result = self._run(remote.PROBE, self.root, tree, self.umask, self.folder_mode, timeout=300)
        if not result.ok:
            reason = result.stderr.strip()[-300:] or "no reason given"
            raise TransportError(
                f"stage: cannot use the store {self.root} on the cluster: {reason}. "
                "Check the path is writable (quota, permissions) or stage elsewhere with --to."
            )
        digest: str | None = None
        objects: dict[str, int] = {}
        parts: dict[str, int] = {}
        free: int | None = None
        for line in result.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "tree":
                digest = None if rest == "none" else rest.strip()
            elif kind == "obj":
                name, _, size = rest.rpartition(" ")
                if not size.isdigit():
                    continue
                if name.startswith("tmp/"):
                    parts[name[4:]] = int(size)
                else:
                    objects[name] = int(size)
            elif kind == "free" and rest.strip().isdigit():
                free = int(rest) * 1024
        return Probe(digest, objects, parts, free, "python3 yes" in result.stdout.splitlines())

    def _verify_remote(
        self, tree: str | None, entries: list[Entry], source: Path, probe: Probe
    ) -> tuple[set[str], bool]:
        """sha256 on the cluster of every object (and mode copy) the tree uses, and of the tree's own files.
        Returns the damaged objects and whether the tree's content is right."""
        names = sorted({p for e in entries if e.link is None for p in {object_path(e.sha256), variant_path(e)}
                        if p in probe.objects})  # fmt: skip
        wanted = {p: e.sha256 for e in entries if e.link is None for p in (object_path(e.sha256), variant_path(e))}
        damaged: set[str] = set()
        for start in range(0, len(names), 2000):
            chunk = names[start : start + 2000]
            result = self._sums(f"{self.root}/objects", chunk, probe.python)
            sums = parse_sums(result.stdout)
            damaged |= {name for name in chunk if sums.get(name) != wanted[name]}
        if tree is None:
            return damaged, False
        result = self._run(remote.TREE_CONTENT, tree)
        rows = [f"{e.sha256}  ./".encode() + encode_name(placed_name(e, source)) for e in entries if e.link is None]
        return damaged, result.ok and result.stdout.split(" ")[0] == listing_digest(rows)

    def _claim_parts(self, needed: list[Entry], probe: Probe, report: StageReport) -> list[tuple[Entry, int]]:
        """For each object to send, take over the largest upload of it in progress (by rename: ours from
        now on), so a stage broken off resumes where it stopped. Returns (entry, bytes already there)."""
        by_sha: dict[str, list[tuple[int, str]]] = {}
        for name, size in probe.parts.items():
            by_sha.setdefault(name.split(".", 1)[0], []).append((size, name))
        lines, plans = [], []
        for entry in needed:
            candidates = sorted(by_sha.get(entry.sha256, []), reverse=True)
            usable = [(size, name) for size, name in candidates if 0 < size <= entry.size]
            for size, name in candidates:
                if size > entry.size:  # longer than the file: not a prefix of it
                    lines.append(f"rm -f tmp/{shlex.quote(name)}")
            if usable:
                size, name = usable[0]
                ours = f"{entry.sha256}.{self.writer}.part"
                take = "true" if name == ours else f"mv -f tmp/{shlex.quote(name)} tmp/{ours} 2>/dev/null"
                lines.append(f"{take} && echo {entry.sha256}")
                plans.append((entry, size))
            else:
                plans.append((entry, 0))
        if not lines:
            return plans
        result = self.transport.run(
            [*remote.RUN_STDIN, f"{self.root}/objects"], input=('cd "$1" || exit 3\n' + "\n".join(lines)).encode()
        )
        taken = set(result.stdout.split())
        claimed = [(entry, arrived if entry.sha256 in taken else 0) for entry, arrived in plans]
        report.resumed_bytes += sum(arrived for _, arrived in claimed)
        return claimed

    def _check_space(self, to_send: list[tuple[Entry, int]], report: StageReport, probe: Probe) -> None:
        needed = sum(entry.size - arrived for entry, arrived in to_send)
        if probe.free_bytes is not None and probe.free_bytes < needed:
            raise HpcaiError(
                f"stage: {needed / 1e9:.2f} GB must be sent (of {report.bytes_total / 1e9:.2f} GB; the rest is on "
                f"the cluster already) but only {probe.free_bytes / 1e9:.2f} GB are free at {self.root}. Free "
                "space (quota), or stage to another filesystem with --to."
            )

    def _send(
        self, to_send: list[tuple[Entry, int]], scan: Scan, report: StageReport, python: bool
    ) -> list[tuple[str, Entry]]:
        """Sends what is missing; returns the parts already checked (by rsync or while streamed), which the
        caller installs."""
        small: list[Entry] = []
        large: list[tuple[Entry, int]] = []
        for entry, arrived in to_send:
            if entry.size < LARGE_FILE_BYTES and not entry.sparse and arrived == 0:
                small.append(entry)
            else:
                large.append((entry, arrived))
        batch: list[Entry] = []
        for entry in small:
            batch.append(entry)
            if sum(e.size for e in batch) >= TAR_BATCH_BYTES:
                self._send_tar(batch, scan, report, python)
                batch = []
        if batch:
            self._send_tar(batch, scan, report, python)
        by_rsync = [(e, a) for e, a in large if self.rsync_target and not e.sparse and a < e.size]
        verified = self._rsync_many(by_rsync, scan, report)
        checked: list[tuple[str, Entry]] = []  # parts whose bytes the cluster must still check
        for entry, arrived in large:
            if (entry, arrived) in by_rsync:
                continue
            if python and not entry.sparse and not isinstance(self.transport, LocalTransport):
                verified.append((self._stream_one(entry, arrived, scan.files[entry.path], report), entry))
            else:
                checked.append((self._send_one(entry, arrived, scan.files[entry.path], report), entry))
        if checked:  # one command checks and installs them
            self._install(checked, verified=False, python=python)
        return verified

    def _rsync_many(self, items: list[tuple[Entry, int]], scan: Scan, report: StageReport) -> list[tuple[str, Entry]]:
        """Large files by rsync, RSYNC_PARALLEL at a time: each rsync is its own process and SSH connection,
        so ciphers and checksums of several files use several cores. A failure stops the stage once the
        others have ended; what arrived stays as parts the next stage resumes from."""
        from concurrent.futures import ThreadPoolExecutor

        parts = [(self._part(entry), entry) for entry, _ in items]
        if items:
            with ThreadPoolExecutor(max_workers=RSYNC_PARALLEL) as pool:
                futures = [pool.submit(self._rsync, scan.files[e.path], part, arrived)
                           for (e, arrived), (part, _) in zip(items, parts, strict=True)]  # fmt: skip
                for future in futures:
                    future.result()
        for entry, _ in items:  # rsync checks what it moved, not that it is what was hashed
            if scan.files[entry.path].stat().st_size != entry.size:
                raise HpcaiError(
                    f"stage: {readable(str(scan.files[entry.path]))} changed while it was staged (its size is not "
                    "the one hashed). Stage again once nothing writes to it."
                )
        for entry, arrived in items:
            report.count("rsync", 1, entry.size - arrived)
        return parts

    def _part(self, entry: Entry) -> str:
        return f"{self.root}/objects/tmp/{entry.sha256}.{self.writer}.part"

    def _send_tar(self, batch: list[Entry], scan: Scan, report: StageReport, python: bool) -> None:
        """Many small files in one stream: no round trip per file. Checked and installed on the cluster
        by the same command."""
        stream = tar_stream([(object_path(e.sha256), scan.files[e.path], e.size) for e in batch], self.progress)
        program = ["python3", "-c", remote.TAR_INSTALL_PY] if python else ["sh", "-c", remote.TAR_INSTALL, "sh"]
        # Over the command's own connection (one login per command); tried: OpenSSH's client instead of
        # paramiko for this stream gained 4% here (2.5 s -> 2.4 s for 39 MB) at the cost of a login.
        result = self.transport.run([*program, self.root, self.writer, self.umask], input=stream, timeout=3600)
        ok = {line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")}
        bad = [e for e in batch if e.sha256 not in ok]
        if not result.ok or bad:
            names = ", ".join(readable(e.path) for e in bad[:5]) + (" ..." if len(bad) > 5 else "")
            detail = result.stderr.strip()[-300:] or "their sha256 on the cluster differs from this machine's"
            full = (
                " The cluster's disk, quota or inode quota is full: free space or files there, or stage elsewhere "
                "with --to."
                if "No space left" in detail or "quota" in detail.lower()
                else ""
            )
            raise TransportError(
                f"stage: {len(bad)} of {len(batch)} file(s) did not arrive intact ({names}): {detail}.{full} What "
                "arrived intact is kept; run the same command again."
            )
        report.count("tar", len(batch), sum(e.size for e in batch))

    def _stream_one(self, entry: Entry, arrived: int, local: Path, report: StageReport) -> str:
        """Upload one large object over an SSH command's own channel into our part, the cluster hashing it as
        it lands (no second pass there; faster than paramiko's SFTP, which waits on its write acks). A
        dropped link resumes from what arrived, twice at most. Returns the part, checked."""
        part = self._part(entry)
        start = arrived
        for attempt in range(3):
            try:
                digest, size = stream_part(self.transport, local, part, start, umask=self.umask,
                                           progress=self.progress)  # fmt: skip
                break
            except StreamRefused:  # the cluster answered (a full disk...): sending again would not help
                raise
            except TransportError:  # the link dropped: go on from what arrived
                if attempt == 2:
                    raise
                start = self._part_size(part)
        if digest != entry.sha256 or size != entry.size:
            self.transport.run(["rm", "-f", "--", part])
            raise TransportError(
                f"stage: {readable(entry.path)} arrived corrupted: its sha256 on the cluster differs from this "
                "machine's. The partial copy was removed; run the same command again."
            )
        report.count("stream", 1, entry.size - arrived)
        return part

    def _part_size(self, part: str) -> int:
        """Bytes in an upload part on the cluster (0 when there is none)."""
        size = self._run('wc -c < "$1" 2>/dev/null || echo 0', part).stdout.strip()
        return int(size) if size.isdigit() else 0

    def _send_one(self, entry: Entry, arrived: int, local: Path, report: StageReport) -> str:
        """Upload one large object to our part by SFTP (or a local copy), resuming after what arrived;
        returns the part, which the cluster then checks (rsync's own check is in `_rsync_many`)."""
        part = self._part(entry)
        if arrived < entry.size:
            self.transport.put_file(str(local), part, offset=arrived, progress=self.progress, sparse=entry.sparse)
            method = "copy" if isinstance(self.transport, LocalTransport) else "sftp"
        else:  # it had all arrived before: only the check is left
            method = "resumed"
        report.count(method, 1, entry.size - arrived)
        return part

    def _rsync(self, local: Path, part: str, arrived: int, *, make_folder: bool = False) -> None:
        # `--` ends rsync's options and the local path is absolute: no file name can become an option.
        # -s (--protect-args) keeps the remote path from the remote shell.
        command = ["rsync", "--partial", "--append-verify", "--inplace", "-s", "-q"]
        if self.rsync_ssh:
            command += ["-e", shlex.join(self.rsync_ssh)]
        if make_folder:  # the part's folder made by the remote rsync's own command line: no round trip
            folder = part.rsplit("/", 1)[0]
            command += [f"--rsync-path=umask {self.umask} && mkdir -p -- {shlex.quote(folder)} && rsync"]
        command += ["--", str(local.absolute()), f"{self.rsync_target}{part}"]
        result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise TransportError(
                f"stage: rsync of {readable(str(local))} stopped: {result.stderr.strip()[-500:]}. What arrived is "
                "kept; run the same command again."
            )
        if self.progress:
            self.progress(local.stat().st_size - arrived)

    def _sums(self, folder: str, names: list[str], python: bool) -> CommandResult:
        """sha256 of files on the cluster: by its python3 where it has one (hashlib: the CPU's SHA
        extensions), else sha256sum."""
        if python:
            return self.transport.run(["python3", "-c", remote.SUMS_IN_PY, folder, *names], timeout=3600)
        return self._run(remote.SUMS_IN, folder, *names, timeout=3600)

    def _install(self, parts: list[tuple[str, Entry]], *, verified: bool, python: bool = False) -> None:
        """sha256 of every part on the cluster (unless rsync checked it), then one script moves the good
        ones into place read-only; a part that does not match is removed and reported."""
        if not parts:
            return
        names = [part.rsplit("/", 1)[1] for part, _ in parts]
        sums: dict[str, str] = {}
        if verified:
            sums = {name: e.sha256 for name, (_, e) in zip(names, parts, strict=True)}
        else:
            for start in range(0, len(names), 500):
                result = self._sums(f"{self.root}/objects/tmp", names[start : start + 500], python)
                sums.update(parse_sums(result.stdout))
        lines = ['cd "$1" || exit 3']
        bad = []
        for name, (_, entry) in zip(names, parts, strict=True):
            if sums.get(name) == entry.sha256:
                final = object_path(entry.sha256)
                lines.append(f"mkdir -p {final[:2]} && chmod 444 tmp/{name} && mv -f tmp/{name} {final}")
            else:
                lines.append(f"rm -f tmp/{name}")
                bad.append(entry)
        result = self.transport.run([*remote.RUN_STDIN, f"{self.root}/objects"], input="\n".join(lines).encode())
        if bad:
            names_shown = ", ".join(readable(e.path) for e in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise TransportError(
                f"stage: {len(bad)} file(s) arrived corrupted ({names_shown}): their sha256 on the cluster differs "
                "from this machine's. The partial copies were removed; run the same command again."
            )
        if not result.ok:
            raise TransportError(f"stage: installing on the cluster failed: {result.stderr.strip()[-300:]}")

    def _materialise(self, source: Path, entries: list[Entry], target: str, damaged: set[str], *,
                     repair: bool, python: bool, install: list[tuple[str, Entry]]) -> None:  # fmt: skip
        """One script links the objects into a fresh folder and renames it into place; with python3 there,
        the same command first installs the checked parts (`install`: one round trip less)."""
        cleanup = b"".join(b'rm -f "$1/objects"/' + shlex.quote(v).encode() + b"\n" for v in sorted(damaged)
                           if "." in v)  # fmt: skip
        if cleanup:
            self.transport.run([*remote.RUN_STDIN, self.root], input=cleanup)
        building = f"{target}.building-{self.writer}"
        if python:
            records = []
            for part, entry in install:
                records += [b"I", part.rsplit("/", 1)[1].encode(), object_path(entry.sha256).encode()]
            for entry in entries:
                place = encode_name(placed_name(entry, source))
                if entry.link is not None:
                    records += [b"L", place, encode_name(entry.link)]
                else:
                    records += [b"F", place, variant_path(entry).encode(), object_path(entry.sha256).encode(),
                                f"{entry.tree_mode:o}".encode()]  # fmt: skip
            argv = ["python3", "-c", remote.MATERIALISE_PY, self.root, building, target, self.umask, str(int(repair))]
            result = self.transport.run(argv, input=b"\0".join(records) + b"\0", timeout=3600)
        else:
            result = self._materialise_sh(source, entries, target, building, repair)
        if not result.ok:
            raise TransportError(
                f"stage: building the staged folder on the cluster failed: {result.stderr.strip()[-500:]}. "
                "Nothing half-built is left in place; run the same command again."
            )

    def _materialise_sh(self, source: Path, entries: list[Entry], target: str, building: str,
                        repair: bool) -> CommandResult:  # fmt: skip
        folders, files, links = set(), [], []
        for entry in entries:
            name = placed_name(entry, source)
            quoted = shlex.quote(name).encode("utf-8", "surrogateescape")
            parent = os.path.dirname(name)
            while parent:
                folders.add(shlex.quote(parent).encode("utf-8", "surrogateescape"))
                parent = os.path.dirname(parent)
            if entry.link is not None:
                links.append((quoted, shlex.quote(entry.link).encode("utf-8", "surrogateescape")))
            else:
                files.append((quoted, variant_path(entry), object_path(entry.sha256), entry.tree_mode))
        script = remote.materialise_script(
            umask=self.umask, building=building, target=target, folders=sorted(folders, key=len), files=files,
            links=links, repair=repair,
        )  # fmt: skip
        return self.transport.run([*remote.RUN_STDIN, self.root], input=script, timeout=3600)


def rsync_available(transport: Transport) -> bool:
    import shutil

    if shutil.which("rsync") is None:
        return False
    return transport.run(["sh", "-c", "command -v rsync"]).ok
