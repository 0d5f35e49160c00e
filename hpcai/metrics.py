"""Reading what a workload's metrics JSONL says about progress, without reading the whole file."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hpcai.runfiles import FileReader


@dataclass(frozen=True)
class Progress:
    step: int
    loss: float | None


def last_progress(transport: FileReader, path: str, max_bytes: int = 16384) -> Progress | None:
    """The last complete metrics line with a step; a half-written last line is skipped."""
    data = transport.tail(path, max_bytes)
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            loss = record.get("loss")
            value = float(loss) if isinstance(loss, int | float) else None
            return Progress(record["step"], value)
    return None
