"""Reading what a workload's metrics JSONL says about progress, without reading the whole file."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hpcai.rundir.batch import FileReader

MAX_STEP = 10**12  # a larger "step" is not one: a damaged or planted line (SQLite holds 64-bit integers)


def valid_step(value: object) -> int | None:
    """A step number as the runtime writes one (an int, 0 <= step < MAX_STEP), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_STEP:
        return value
    return None


def number_or_none(value: object) -> float | None:
    """A JSON number as a float (nan and inf included, as the runtime writes them as strings too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "infinity", "-infinity"}:
        return float(value)
    return None


@dataclass(frozen=True)
class Progress:
    step: int
    loss: float | None
    left_out: int | None = None  # samples left out so far in the attempt (the runtime's count)


def last_progress(transport: FileReader, path: str, max_bytes: int = 16384) -> Progress | None:
    """The last complete metrics line with a step; a half-written last line is skipped."""
    data = transport.tail(path, max_bytes)
    for line in reversed(data.decode("utf-8", errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = valid_step(record.get("step")) if isinstance(record, dict) else None
        if step is not None:
            left_out = valid_step(record.get("left_out"))  # a count: the same bounds as a step
            return Progress(step, number_or_none(record.get("loss")), left_out)
    return None
