"""Bytes on their way to the cluster: many small files as one tar stream (never all in memory), and a large file
streamed into a resumable part while it is hashed."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpcai.backends.staging import remote
from hpcai.backends.staging.manifest import (
    readable,
)
from hpcai.backends.transport.base import Transport, TransportError
from hpcai.errors import HpcaiError


class StreamRefused(TransportError):
    """The cluster ran the streamed upload and refused it (a full disk, an unwritable part): not a dropped
    link, so sending again would not help."""


def stream_part(
    transport: Transport,
    local: Path,
    part: str,
    offset: int,
    *,
    umask: str,
    progress: Callable[[int], None] | None = None,
    digest: Any = None,
) -> tuple[str, int]:
    """Send `local` from `offset` on into `part` on the cluster through one command's standard input; the
    cluster hashes the part as it writes. With `digest` (a hashlib object), the bytes read are hashed here
    too, by a helper thread while the next chunk is sent (hashlib releases the GIL). Returns the cluster's
    (sha256 of the whole part, its size)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def chunks() -> Iterator[bytes]:
        pending: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=1) as hasher:
            try:
                with open(local, "rb") as handle:
                    if digest is not None:  # the part's prefix, already there, is this file's too
                        while handle.tell() < offset and (chunk := handle.read(min(1 << 20, offset - handle.tell()))):
                            digest.update(chunk)
                    handle.seek(offset)
                    while chunk := handle.read(1 << 20):
                        if digest is not None:
                            if pending is not None:
                                pending.result()
                            pending = hasher.submit(digest.update, chunk)
                        yield chunk
                        if progress:
                            progress(len(chunk))
            except OSError as exc:
                raise HpcaiError(
                    f"stage: {readable(str(local))} could not be read while it was staged ({exc}). Stage again once "
                    "nothing writes to it."
                ) from None
            if pending is not None:
                pending.result()

    argv = ["python3", "-c", remote.STREAM_PART_PY, part, str(offset), umask]
    result = transport.run(argv, input=chunks(), timeout=3600)
    reason = result.stderr.strip()[-300:] or f"exit status {result.returncode}"
    if result.returncode == 5:
        raise StreamRefused(
            f"stage: the cluster refused to store {readable(str(local))}: {reason}. Its disk or your quota is "
            "probably full: free space (or stage elsewhere with --to) and run the same command again; it goes on "
            "from what arrived."
        )
    lines = result.stdout.strip().splitlines() or [""]
    sha, _, size = lines[-1].partition(" ")  # the last line: a chatty login shell may print before it
    if not result.ok or not size.isdigit():
        raise StreamRefused(f"stage: sending {readable(str(local))} to the cluster failed: {reason}.")
    return sha, int(size)


def parse_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        sums[name] = digest
    return sums


class _Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self, at_least: int = 0) -> Iterator[bytes]:
        """The bytes written so far as one chunk, once there are `at_least` of them (few large SSH
        writes instead of many 10 KB ones)."""
        if self.chunks and sum(map(len, self.chunks)) >= at_least:
            chunks, self.chunks = self.chunks, []
            yield b"".join(chunks)


def tar_stream(items: list[tuple[str, Path, int]], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """A tar stream of (member name, local file, size), produced while it is sent."""
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name, path, size in items:
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o400
            try:
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            except OSError as exc:  # shorter than when it was hashed, or unreadable now
                raise HpcaiError(
                    f"stage: {readable(str(path))} changed or could not be read while it was staged ({exc}). "
                    "Stage again once nothing writes to it."
                ) from None
            yield from sink.drain(1 << 20)
            if progress:
                progress(size)
    yield from sink.drain()
