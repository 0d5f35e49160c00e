"""The metrics file: one JSON object per optimizer step, appended and flushed by rank 0.

Schema (every line): step (int), loss (float), grad_norm (float), lr (float), samples_per_s (float),
tokens_per_s (float or null), z_loss (float or null), peak_memory_gb (float: CUDA peak allocated on GPU,
peak RSS of the process on CPU), time (unix seconds), elapsed_s (float, since the attempt started),
attempt_step (int, steps done in this attempt), step_s (float, the step's own duration: forward,
backward, optimizer; the goodput account's productive time).

`Timeline` appends the timed events the goodput account needs besides steps (checkpoint saves).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

FIELDS = (
    "step",
    "loss",
    "grad_norm",
    "lr",
    "samples_per_s",
    "tokens_per_s",
    "z_loss",
    "peak_memory_gb",
    "left_out",  # samples left out so far in this attempt (missing or unreadable images, malformed samples)
    "time",
    "elapsed_s",
    "attempt_step",
    "step_s",
    "data_s",  # of step_s: waiting for the batch (0 when workers keep ahead)
    "mfu",  # model FLOPs utilisation (hpcai.runtime.flops); null where the device's peak is unknown
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan"/"inf": JSON has no literal for them, and readers must see them
    return value


class MetricsLog:
    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.started = time.time()
        self._handle: IO[str] | None = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole run

    def write(self, **record: Any) -> None:
        if self._handle is None:
            return
        now = time.time()
        line = {key: _clean(record.get(key)) for key in FIELDS}
        line["time"] = now
        line["elapsed_s"] = round(now - self.started, 3)
        self._handle.write(json.dumps(line) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class Timeline:
    """`timeline.jsonl`: one JSON object per timed event (rank 0 only), e.g. a checkpoint save and its
    duration; read by the goodput account."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def record(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        line = {"event": event, "time": time.time(), **{k: _clean(v) for k, v in fields.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
