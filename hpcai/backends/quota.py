"""Storage quota and inode headroom on the cluster's filesystems: a site quota tool, or `df`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from hpcai.backends.transport.base import Transport

_SIZE = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_COUNT = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}


@dataclass(frozen=True)
class Usage:
    path: str
    bytes_used: float | None
    bytes_max: float | None
    files_used: float | None
    files_max: float | None

    @staticmethod
    def _percent(used: float | None, limit: float | None) -> float | None:
        return None if used is None or not limit else 100 * used / limit

    @property
    def space_percent(self) -> float | None:
        return self._percent(self.bytes_used, self.bytes_max)

    @property
    def files_percent(self) -> float | None:
        return self._percent(self.files_used, self.files_max)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "space_percent": self.space_percent, "files_percent": self.files_percent}


def _amount(token: str, table: dict[str, int]) -> float:
    match = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]?)i?B?", token.strip())
    if not match:
        raise ValueError(token)
    return float(match.group(1)) * table[match.group(2).upper()]


def parse_lumi_quota(text: str) -> list[Usage]:
    """`lumi-quota`: one line per path with `used/max` for capacity, then for files, e.g.
    `/scratch/project_465000123   4.1K/55T   1/2.0M`."""
    rows = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) >= 3 and tokens[0].startswith("/") and "/" in tokens[1] and "/" in tokens[2]:
            try:
                used, limit = (_amount(t, _SIZE) for t in tokens[1].split("/", 1))
                files_used, files_max = (_amount(t, _COUNT) for t in tokens[2].split("/", 1))
            except (ValueError, KeyError):
                continue
            rows.append(Usage(tokens[0], used, limit, files_used, files_max))
    return rows


def parse_df(space: str, inodes: str, path: str) -> Usage:
    """`df -P -k PATH` and `df -P -i PATH` (POSIX format: one header, one data line)."""
    s = space.strip().splitlines()[-1].split()
    i = inodes.strip().splitlines()[-1].split()
    files_total = float(i[1]) if i[1].isdigit() else None  # some filesystems print '-' for inodes
    return Usage(
        path,
        bytes_used=float(s[2]) * 1024,
        bytes_max=(float(s[2]) + float(s[3])) * 1024,  # used + available: what this user can fill
        files_used=float(i[2]) if files_total else None,
        files_max=files_total,
    )


def df_usage(transport: Transport, path: str) -> Usage | None:
    space = transport.run(["df", "-P", "-k", path], timeout=30)
    inodes = transport.run(["df", "-P", "-i", path], timeout=30)
    if not (space.ok and inodes.ok):
        return None
    return parse_df(space.stdout, inodes.stdout, path)


def usage_for(rows: list[Usage], path: str) -> Usage | None:
    """The row whose path is `path` or the longest prefix of it (a quota covers the tree below it)."""
    best: Usage | None = None
    for row in rows:
        root = row.path.rstrip("/")
        if (path == root or path.startswith(root + "/")) and (best is None or len(root) > len(best.path)):
            best = row
    return best
