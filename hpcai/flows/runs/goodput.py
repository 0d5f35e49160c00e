"""Where a run's allocated time went: the goodput account behind `hpcai status RUN`.

Computed from the run directory alone (so it is the same over SSH): the job script's attempt log
(`attempts.jsonl`: each start and end), the runtime's metrics (one line per step, with `step_s`, the
step's own duration) and its timeline (`timeline.jsonl`: checkpoint saves, hang records). Per attempt:

- allocated: from the job script's start to its end (the allocation the attempt held; now, if running);
- queue wait: from submission (or the previous end, for a requeue) to the start -- not allocated, apart;
  none for a relaunch inside the allocation (hpcai.runtime.recovery), whose window starts where the
  previous attempt's ended: the gap between them was allocated;
- start-up: from the start to the first step's beginning (imports, model and checkpoint loading);
- productive: the durations of the steps whose results were kept, i.e. that no later attempt ran again;
- lost: the durations of steps some later attempt ran again (after a rollback, or past the last
  checkpoint at a requeue, a hang or a node failure);
- checkpoint: time spent saving checkpoints; hang: from the last progress to the hang's detection;
- other: the rest (teardown, logging, evaluation, a crash's wait for the launcher).

ETTR (effective training time ratio) = productive / allocated, over the whole run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any


@dataclass
class AttemptAccount:
    attempt: int
    job_id: str | None
    host: str | None
    started: float
    ended: float | None
    exit_code: int | None
    allocated_s: float = 0.0
    queue_wait_s: float | None = None
    startup_s: float = 0.0
    productive_s: float = 0.0
    lost_s: float = 0.0
    checkpoint_s: float = 0.0
    hang_s: float = 0.0
    other_s: float = 0.0
    steps_run: int = 0
    steps_kept: int = 0
    first_step: int | None = None
    last_step: int | None = None
    running: bool = False
    relaunched: bool = False  # started inside the previous attempt's allocation (no queue wait)
    nodes: int | None = None  # nodes it held, where not the run's (an attempt on a cluster it moved from)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Goodput:
    nodes: int
    attempts: list[AttemptAccount] = field(default_factory=list)

    def total(self, name: str) -> float:
        return sum(float(getattr(a, name) or 0.0) for a in self.attempts)

    @property
    def ettr(self) -> float | None:
        allocated = self.total("allocated_s")
        return self.total("productive_s") / allocated if allocated > 0 else None

    def to_json(self) -> dict[str, Any]:
        parts = ("allocated_s", "queue_wait_s", "startup_s", "productive_s", "lost_s", "checkpoint_s", "hang_s",
                 "other_s")  # fmt: skip
        ettr = self.ettr
        return {
            "ettr": round(ettr, 4) if ettr is not None else None,
            "node_hours_allocated": round(
                sum(a.allocated_s * (a.nodes or self.nodes) for a in self.attempts) / 3600, 4
            ),
            "nodes": self.nodes,
            **{name: round(self.total(name), 3) for name in parts},
            "steps_kept": sum(a.steps_kept for a in self.attempts),
            "steps_lost": sum(a.steps_run - a.steps_kept for a in self.attempts),
            "attempts": [a.to_json() for a in self.attempts],
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _plausible_time(value: float | None, now: float) -> float | None:
    """A record's time, when it is one this run could have written: not before the epoch, not after tomorrow
    (a planted 1e300 made the account 1e296 node-hours)."""
    return value if value is not None and 0 <= value <= now + 86400 else None


def _attempt_windows(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """start/end pairs from the attempt log, in order; an unmatched start is a running (or killed) attempt."""
    windows: list[dict[str, Any]] = []
    relaunched = False
    for record in log:
        when = _number(record.get("time_s"))
        if when is None:
            continue
        kind = record.get("event")
        if kind == "relaunch":
            relaunched = True
        elif kind == "start":
            # A relaunch inside the allocation held it all along: its window starts where the last ended.
            inside = relaunched and bool(windows) and windows[-1]["end"] is not None
            windows.append({"start": windows[-1]["end"] if inside else when, "end": None,
                            "job_id": record.get("job_id"), "host": record.get("host"), "rc": None,
                            "relaunch": inside, "nodes": record.get("nodes")})  # fmt: skip
            relaunched = False
        elif kind == "end" and windows and windows[-1]["end"] is None:
            windows[-1]["end"] = when
            rc = record.get("rc")
            windows[-1]["rc"] = rc if isinstance(rc, int) and not isinstance(rc, bool) else None
    return windows


def _close_ended_jobs(windows: list[dict[str, Any]], ended: dict[str, float | None]) -> None:
    """An open window of a job the scheduler calls ended closes at the scheduler's end (not before its own
    start), or at its start when the end time is unknown."""
    for window in windows:
        job = str(window["job_id"]) if window["job_id"] is not None else None
        if window["end"] is None and job in ended:
            when = ended[job]
            window["end"] = max(window["start"], when) if when is not None else window["start"]


def _step_durations(steps: list[dict[str, Any]]) -> list[float]:
    """Each step's duration: `step_s` when the runtime wrote it, else the gap to the previous step's
    record (the first step of an attempt then takes the attempt's median)."""
    durations: list[float | None] = []
    previous: float | None = None
    for record in steps:
        own = _number(record.get("step_s"))
        now = _number(record.get("time"))
        if own is None and now is not None and previous is not None:
            own = max(0.0, now - previous)
        durations.append(own)
        previous = now if now is not None else previous
    known = [d for d in durations if d is not None]
    fill = median(known) if known else 0.0
    return [d if d is not None else fill for d in durations]


def account(
    attempt_log: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    timeline: list[dict[str, Any]],
    *,
    nodes: int,
    submitted: dict[str, float] | None = None,
    ended: dict[str, float | None] | None = None,
    now: float | None = None,
) -> Goodput:
    """The goodput of one run from its files (see the module docstring). `submitted`: job id -> the time
    the client submitted it (from the store), for the queue wait of each job's first start. `ended`: job id
    -> when the scheduler says the job ended (None: ended, time unknown), for jobs that ended without their
    script's end record (cancelled, killed with their node): their last launch is over, not running."""
    now = time.time() if now is None else now
    log = [{**r, "time_s": _plausible_time(_number(r.get("epoch")) or _parse_time(r.get("time")), now)}
           for r in attempt_log]  # fmt: skip
    windows = _attempt_windows(log)
    _close_ended_jobs(windows, ended or {})
    result = Goodput(nodes=nodes)
    steps = [m for m in metrics if isinstance(m.get("step"), int) and _number(m.get("time")) is not None]
    per_attempt: list[list[dict[str, Any]]] = [[] for _ in windows]
    for record in steps:
        when = float(record["time"])
        for index in range(len(windows) - 1, -1, -1):
            if windows[index]["start"] <= when:
                per_attempt[index].append(record)
                break
    # A step's result is kept by the last attempt that ran it; every earlier run of it was lost.
    last_run_of: dict[int, int] = {}
    for index, records in enumerate(per_attempt):
        for record in records:
            last_run_of[int(record["step"])] = index
    previous_end: dict[str, float] = {}
    for index, window in enumerate(windows):
        start, end = window["start"], window["end"]
        job = str(window["job_id"]) if window["job_id"] is not None else None
        entry = AttemptAccount(index + 1, job, window["host"], start, end, window["rc"], running=end is None)
        held = window.get("nodes")
        if isinstance(held, int) and not isinstance(held, bool) and 0 < held < 100_000:
            entry.nodes = held
        finish = end if end is not None else now
        entry.allocated_s = max(0.0, finish - start)
        if window.get("relaunch"):
            entry.relaunched = True  # no queue in between
        elif job is not None and job in previous_end:
            entry.queue_wait_s = max(0.0, start - previous_end[job])  # a requeue of the same job
        elif job is not None and submitted and job in submitted:
            entry.queue_wait_s = max(0.0, start - submitted[job])
        if job is not None:
            previous_end[job] = finish
        records = per_attempt[index]
        durations = _step_durations(records)
        for record, duration in zip(records, durations, strict=True):
            entry.steps_run += 1
            if last_run_of[int(record["step"])] == index:
                entry.steps_kept += 1
                entry.productive_s += duration
            else:
                entry.lost_s += duration
        if records:
            entry.first_step, entry.last_step = int(records[0]["step"]), int(records[-1]["step"])
            entry.startup_s = max(0.0, float(records[0]["time"]) - durations[0] - start)
        for record in timeline:
            at = _number(record.get("time"))
            if at is None or not start <= at <= finish:
                continue
            if record.get("event") == "checkpoint":
                entry.checkpoint_s += _number(record.get("seconds")) or 0.0
            elif record.get("event") == "hang":
                entry.hang_s += _number(record.get("stalled_s")) or 0.0
        spent = entry.startup_s + entry.productive_s + entry.lost_s + entry.checkpoint_s + entry.hang_s
        entry.other_s = max(0.0, entry.allocated_s - spent)
        result.attempts.append(entry)
    return result


def _parse_time(value: Any) -> float | None:
    """The job script writes `date -u +%Y-%m-%dT%H:%M:%SZ`; numbers are taken as they are."""
    number = _number(value)
    if number is not None:
        return number
    if not isinstance(value, str):
        return None
    import datetime as dt

    try:
        parsed = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return parsed.timestamp()
