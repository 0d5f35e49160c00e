"""Files of many run directories read in one go: `status` needs the attempt log, the decisions, the
give-up marker, the job id and the last metrics line of every run; over SSH one round trip each would
grow with the number of runs (200 runs: ~800 round trips). `Prefetched` asks the transport for all of
them at once (`Transport.read_many`: one remote command over SSH) and serves them from memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hpcai.backends.transport.base import Transport

PREFETCH_BYTES = 256 << 10  # per file, from its end: attempt logs and metrics tails are far smaller


class FileReader(Protocol):
    def read_text(self, path: str) -> str | None: ...

    def tail(self, path: str, max_bytes: int) -> bytes: ...


class Prefetched:
    """A read-only view of files fetched in one call; files not asked for (or longer than what was
    fetched) are read through the transport."""

    def __init__(self, transport: Transport, paths: Iterable[str], max_bytes: int = PREFETCH_BYTES) -> None:
        self.transport = transport
        wanted = sorted(set(paths))
        self._files = transport.read_many(wanted, max_bytes) if wanted else {}

    def read_text(self, path: str) -> str | None:
        if path not in self._files:
            return self.transport.read_text(path)
        found = self._files[path]
        if found is None:
            return None
        data, size = found
        if len(data) < size:  # longer than fetched: read it whole
            return self.transport.read_text(path)
        return data.decode("utf-8", errors="replace")

    def tail(self, path: str, max_bytes: int) -> bytes:
        if path not in self._files:
            return self.transport.tail(path, max_bytes)
        found = self._files[path]
        if found is None:
            return b""
        data, size = found
        if len(data) < min(size, max_bytes):
            return self.transport.tail(path, max_bytes)
        return data[-max_bytes:]
