"""Transport on this machine: subprocess and the local filesystem."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hpcai.errors import HpcaiError
from hpcai.transport.base import CommandResult, Transport


class LocalTransport(Transport):
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        idempotent: bool = True,
    ) -> CommandResult:
        try:
            proc = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise HpcaiError(
                f"`{argv[0]}` is not installed or not on PATH on this machine. Run hpcai where the scheduler's "
                "commands are (the cluster's login node), or pick the cluster that matches this machine."
            ) from None
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:g} s")
        return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None

    def read_from(self, path: str, offset: int) -> bytes:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return b""

    def tail(self, path: str, max_bytes: int) -> bytes:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - max_bytes))
                return handle.read()
        except FileNotFoundError:
            return b""

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    def put_file(
        self, local: str, remote: str, *, offset: int = 0, progress: Callable[[int], None] | None = None
    ) -> None:
        with open(local, "rb") as source, open(remote, "ab") as target:
            target.truncate(offset)
            source.seek(offset)
            while chunk := source.read(1 << 20):
                target.write(chunk)
                if progress:
                    progress(len(chunk))

    def makedirs(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def exists(self, path: str) -> bool:
        return Path(path).exists()
