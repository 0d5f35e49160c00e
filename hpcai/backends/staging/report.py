"""What a stage found and did (`StageReport`, shown by `hpcai stage` and kept with a submit), and what the probe of
the cluster's store found before it (`Probe`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageReport:
    source: str
    tree_id: str
    remote_path: str
    files: int
    bytes_total: int
    links: int = 0
    objects_sent: int = 0
    bytes_sent: int = 0
    resumed_bytes: int = 0
    repaired: bool = False
    via: dict[str, int] = field(default_factory=dict)  # files sent per method
    warnings: list[str] = field(default_factory=list)
    packed: dict[str, Any] | None = None  # `stage --pack`: files before and after, shards, the packed copy
    squashfs: dict[str, Any] | None = None  # `stage --squashfs`: files in the image, the local image, a bind

    def count(self, method: str, objects: int, sent: int) -> None:
        """`objects` objects went to the cluster by `method`, `sent` bytes of them over the link."""
        self.via[method] = self.via.get(method, 0) + objects
        self.objects_sent += objects
        self.bytes_sent += sent

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Probe:
    tree_digest: str | None
    objects: dict[str, int]  # "ab/<sha>" or "ab/<sha>.<mode>" -> size
    parts: dict[str, int]  # "<sha>.<writer>.part" -> size
    free_bytes: int | None
    python: bool = False  # python3 on the cluster: materialise in one process
