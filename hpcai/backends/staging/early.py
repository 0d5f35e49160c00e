"""A large file sent while it is hashed (rsync beside the scan, or one streamed pass that also hashes it),
instead of after: the stager's first step for a single container or weights file."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from hpcai.backends.staging.manifest import Entry, HashCache
from hpcai.backends.staging.report import Probe
from hpcai.backends.staging.streams import stream_part
from hpcai.backends.transport.base import TransportError
from hpcai.backends.transport.local import LocalTransport

if TYPE_CHECKING:
    from hpcai.backends.staging.stager import Stager


class EarlyTransfer:
    """One large file whose sha256 is not cached yet is sent while this machine hashes it, instead of after:
    - with rsync on both ends, rsync sends it while the scan hashes it (about 0.8 s per GB, overlapped);
    - otherwise it is streamed to the cluster and hashed here in the same pass, before the scan, which then
      finds the hash cached (one read of the file, no separate hash pass on either end).
    The bytes land in a part named after the file's path, size and mtime; once the hash is known the part
    becomes the object -- if the file did not change meanwhile (same size and mtime before and after both
    read it), else it is dropped and the file goes the ordinary way. Only for a single file (containers,
    weights), never over a local "cluster" (a copy is as fast as it gets)."""

    def __init__(self, stager: Stager, local: Path, info: os.stat_result, cache: HashCache) -> None:
        token = hashlib.sha256(f"{local.absolute()}\0{info.st_size}\0{info.st_mtime_ns}".encode(
            "utf-8", "surrogateescape")).hexdigest()[:32]  # fmt: skip
        self.local, self.info = local, info
        self.part = f"{stager.root}/objects/tmp/early-{token}.part"
        self.error: BaseException | None = None
        self.sha256: str | None = None  # the streamed variant's: this machine's and the cluster's agree
        self.resumed = 0  # bytes an earlier try of the streamed variant had sent
        self.corrupt = False  # the part is not a prefix of the file
        self.thread: threading.Thread | None = None
        if stager.rsync_target is None:
            self._stream(stager, cache)
            return
        # The part's folder: made by rsync's remote command where its path needs no quoting beyond shlex's
        # (a login shell may be csh), else here, before the thread starts, so that the connection is used by
        # one thread at a time (the rsync has its own).
        self.make_folder = re.fullmatch(r"[A-Za-z0-9_./+-]+", self.part) is not None
        if not self.make_folder:
            made = stager.transport.run(["sh", "-c", 'umask "$1" && mkdir -p -- "$2"', "sh", stager.umask,
                                         self.part.rsplit("/", 1)[0]])  # fmt: skip
            if not made.ok:
                self.error = TransportError(made.stderr.strip()[-300:] or "mkdir failed")
        self.thread = threading.Thread(target=self._send, args=(stager,), daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, stager: Stager, source: Path, cache: HashCache, min_bytes: int) -> EarlyTransfer | None:
        """The early transfer of `source`, when it is one large file (`min_bytes` on) worth sending so."""
        try:
            info = source.stat()
        except OSError:
            return None
        if (isinstance(stager.transport, LocalTransport) or not source.is_file() or source.is_symlink()
                or info.st_size < min_bytes or info.st_blocks * 512 < info.st_size
                or cache.known(source, info)):  # fmt: skip
            return None
        return cls(stager, source, info, cache)

    def _send(self, stager: Stager) -> None:
        if self.error is not None:
            return
        try:
            stager._rsync(self.local, self.part, 0, make_folder=self.make_folder)
        except BaseException as exc:  # reported by adopt(): the file then goes the ordinary way
            self.error = exc

    def _stream(self, stager: Stager, cache: HashCache) -> None:
        # An earlier try's part of this very file (same path, size and mtime) is resumed: the prefix is
        # hashed on both ends, only the rest is sent.
        arrived = stager._part_size(self.part)
        offset = arrived if arrived <= self.info.st_size else 0
        self.resumed = offset
        if stager.progress and offset:
            stager.progress(offset)
        digest = hashlib.sha256()
        try:
            sha, size = stream_part(stager.transport, self.local, self.part, offset, umask=stager.umask,
                                    progress=stager.progress, digest=digest)  # fmt: skip
        except TransportError as exc:  # no python3 there, a drop, a full disk: the ordinary way says what
            self.error = exc
            return
        if sha != digest.hexdigest() or size != self.info.st_size:
            self.error = TransportError("the streamed copy differs from the file")
            self.corrupt = True
        elif self._unchanged():
            self.sha256 = sha
            cache.remember(self.local, sha)

    def _unchanged(self) -> bool:
        try:
            now = self.local.stat()
        except OSError:
            return False
        return (now.st_size, now.st_mtime_ns) == (self.info.st_size, self.info.st_mtime_ns)

    def finish(self) -> bool:
        """Wait for the transfer; whether it completed."""
        if self.thread is not None:
            self.thread.join()
        return self.error is None

    def adopt(self, entries: list[Entry], stager: Stager, probe: Probe) -> list[tuple[str, Entry]]:
        """[(part, entry)] when the part holds exactly the hashed file, else []. A transfer broken off
        (the file unchanged) leaves a prefix of it: that part is handed to the ordinary way as an upload in
        progress (listed in `probe.parts`), which goes on from there; any other part is removed."""
        done = self.finish()
        files = [e for e in entries if e.link is None]
        same_file = len(files) == 1 and files[0].size == self.info.st_size and self._unchanged()
        if done and same_file and (self.thread is not None or self.sha256 == files[0].sha256):
            return [(self.part, files[0])]
        if same_file and not self.corrupt:
            ordinary = stager._part(files[0])
            moved = stager._run('mv -f -- "$1" "$2" 2>/dev/null && wc -c < "$2"', self.part, ordinary)
            if moved.ok and moved.stdout.strip().isdigit():
                probe.parts[ordinary.rsplit("/", 1)[1]] = int(moved.stdout.strip())
            return []
        stager.transport.run(["rm", "-f", "--", self.part])
        return []
