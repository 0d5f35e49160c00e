"""The transport interface: run a command, and read/write files in run directories."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from hpcai.errors import EnvironmentFailure

# What a command reads on its standard input: bytes, or chunks produced while it runs (a tar stream).
Input = bytes | Iterable[bytes] | None


class OutcomeUnknown(EnvironmentFailure):
    """A command that must not run twice (sbatch, qsub) may or may not have run: the link dropped or the
    scheduler timed out while it ran. Never repeated blindly: the scheduler is asked what it holds first."""


class TransportError(EnvironmentFailure):
    """The link to the cluster failed (dropped, refused, full disk, session limit): nothing the user
    typed is wrong, and running the same command again resumes. Exit code 3."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(ABC):
    """Commands are argv lists (never shell strings built from user input)."""

    @abstractmethod
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
        """Run argv; `idempotent=False` (sbatch, qsub) forbids repeating it after a dropped connection.
        `input` is fed to its standard input (a command given an iterable is never repeated)."""

    def write_text(self, path: str, text: str, *, mode: int = 0o644) -> None:
        """Write atomically: readers see the old content or the new, never a part."""
        self.write_bytes(path, text.encode("utf-8"), mode=mode)

    @abstractmethod
    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write atomically: readers see the old content or the new, never a part."""

    def append_text(self, path: str, text: str) -> None:
        """Append to a log: an append on the target (O_APPEND), never read-modify-write, so lines the job
        writes meanwhile are kept."""
        result = self.run(["sh", "-c", 'cat >> "$1"', "sh", path], input=text.encode("utf-8"))
        if not result.ok:
            raise TransportError(f"cannot append to {path}: {result.stderr.strip()[-300:]}")

    @abstractmethod
    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""

    @abstractmethod
    def read_from(self, path: str, offset: int, limit: int | None = None) -> bytes:
        """Bytes from `offset` to the current end, or at most `limit` of them (empty when the file does not
        exist yet). Readers of files that grow without bound (logs) pass a limit and read on."""

    @abstractmethod
    def tail(self, path: str, max_bytes: int) -> bytes:
        """At most the last `max_bytes` of the file (empty when it does not exist)."""

    def read_many(self, paths: Sequence[str], max_bytes: int) -> dict[str, tuple[bytes, int] | None]:
        """For each path: (at most its last `max_bytes`, its full size), or None when it does not exist.
        Transports with a round trip per call (SSH) answer in one."""
        found: dict[str, tuple[bytes, int] | None] = {}
        for path in paths:
            size = self.size(path)
            found[path] = None if size is None else (self.tail(path, max_bytes), size)
        return found

    @abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """Names in a directory (empty when it does not exist)."""

    @abstractmethod
    def size(self, path: str) -> int | None:
        """Size in bytes, or None when the file does not exist."""

    @abstractmethod
    def put_file(
        self,
        local: str,
        remote: str,
        *,
        offset: int = 0,
        progress: Callable[[int], None] | None = None,
        sparse: bool = False,
    ) -> None:
        """Send `local` from byte `offset` on, appending to `remote` (which must then hold exactly `offset`
        bytes): an interrupted transfer resumes without re-sending what arrived. With `sparse`, blocks of
        zeros are skipped (left as holes where the target filesystem allows) instead of written."""

    @abstractmethod
    def makedirs(self, path: str) -> None: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    def close(self) -> None:  # noqa: B027 -- only transports that hold a connection need it
        """Release the connection, if the transport holds one."""
