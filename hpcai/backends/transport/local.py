"""Transport on this machine: subprocess and the local filesystem."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from hpcai.backends.transport.base import CommandResult, Input, Transport, TransportError
from hpcai.errors import HpcaiError

ZERO_BLOCK = bytes(1 << 20)


def _read_regular(path: str, offset: int | None, tail: int | None, limit: int | None = None) -> bytes | None:
    """A regular file's bytes from `offset` (or its last `tail` bytes); None when `path` is missing or is
    not a regular file -- a folder, or a FIFO whose read would block forever -- since run files are data."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as handle:
        handle.seek(max(0, st.st_size - tail) if tail is not None else (offset or 0))
        return handle.read(-1 if limit is None else limit)


class LocalTransport(Transport):
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        idempotent: bool = True,
        input: Input = None,
    ) -> CommandResult:
        if input is not None and not isinstance(input, bytes):
            return run_streaming(argv, input, timeout=timeout, env=env, cwd=cwd)
        try:
            proc = subprocess.run(
                list(argv),
                capture_output=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
                cwd=cwd,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise HpcaiError(
                f"`{argv[0]}` is not installed or not on PATH on this machine. Run hpcai where the scheduler's "
                "commands are (the cluster's login node), or pick the cluster that matches this machine."
            ) from None
        except subprocess.TimeoutExpired:
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:g} s")
        return CommandResult(tuple(argv), proc.returncode, _text(proc.stdout), _text(proc.stderr))

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def append_text(self, path: str, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise TransportError(f"cannot append to {path}: {exc.strerror or exc}") from None

    def read_text(self, path: str) -> str | None:
        data = _read_regular(path, 0, None)
        return None if data is None else data.decode("utf-8", errors="replace")

    def read_from(self, path: str, offset: int, limit: int | None = None) -> bytes:
        return _read_regular(path, offset, None, limit) or b""

    def tail(self, path: str, max_bytes: int) -> bytes:
        return _read_regular(path, None, max_bytes) or b""

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    def put_file(
        self,
        local: str,
        remote: str,
        *,
        offset: int = 0,
        progress: Callable[[int], None] | None = None,
        sparse: bool = False,
    ) -> None:
        try:
            with open(local, "rb") as source, open(remote, "r+b" if os.path.exists(remote) else "wb") as target:
                target.truncate(offset)
                target.seek(offset)
                source.seek(offset)
                while chunk := source.read(1 << 20):
                    if sparse and chunk == ZERO_BLOCK[: len(chunk)]:
                        target.seek(len(chunk), os.SEEK_CUR)
                    else:
                        target.write(chunk)
                    if progress:
                        progress(len(chunk))
                target.truncate()  # a file ending in a hole gets its full length
        except OSError as exc:
            raise TransportError(
                f"copying {local} to {remote} stopped: {exc.strerror or exc} (disk or quota full?). What arrived "
                "is kept; free space and run the same command again."
            ) from None

    def makedirs(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def exists(self, path: str) -> bool:
        return Path(path).exists()


def run_streaming(
    argv: Sequence[str],
    chunks: Iterable[bytes],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run a local command, feeding chunks to its stdin as they are produced; its output goes to temporary
    files, so a command that writes while it reads cannot block us."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd,
                                env={**os.environ, **env} if env else None)  # fmt: skip
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the command ended early: its exit status says why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return CommandResult(tuple(argv), 124, "", f"timed out after {timeout:g} s")
        out.seek(0)
        err.seek(0)
        return CommandResult(tuple(argv), code, _text(out.read()), _text(err.read()))


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
