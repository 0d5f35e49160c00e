"""Why an attempt ended, in words a user can act on: the failing rank's recorded exception, else the error log's;
a hang's and a failed node's records; a full disk with what to do."""

from __future__ import annotations

import json
import re
from typing import Any

from hpcai.backends.session import Backend
from hpcai.errors import HpcaiError
from hpcai.rundir.batch import FileReader
from hpcai.rundir.jsonl import read_jsonl
from hpcai.rundir.layout import RunDir
from hpcai.rundir.visible import visible_line
from hpcai.store.db import Run

# A line of a Python traceback's last frame: `SomeError: message` (module-qualified or not).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*")


def failure_reason(backend: Backend, run_dir: str, job_id: str) -> str | None:
    """Why a failed job ended, in words: the first rank's recorded exception (the others usually die of
    the collective it left), else the last exception line in the job's error log; read once, when the
    attempt is seen to fail."""
    transport = backend.transport
    records = []
    for name in transport.list_dir(RunDir(run_dir).errors):
        if name.startswith("rank-") and name.endswith(".json"):
            try:
                record = json.loads(transport.read_text(f"{RunDir(run_dir).errors}/{name}") or "")
            except (ValueError, HpcaiError):
                continue
            if isinstance(record, dict) and record.get("job_id") in (job_id, None):
                records.append(record)
    if records:
        first = min(records, key=lambda r: float(r.get("time") or 0))
        where = f" at {first['where']}" if first.get("where") else ""
        others = f"; {len(records) - 1} other rank(s) failed after it" if len(records) > 1 else ""
        return _with_advice(f"{first.get('type', 'error')}: {first.get('message', '')}{where} "
                            f"(rank {first.get('rank', '?')} on {first.get('host', '?')}{others})")  # fmt: skip
    _, err = backend.scheduler.log_paths(run_dir, job_id)
    text = transport.tail(err, 65536).decode("utf-8", errors="replace")
    return reason_from_log(text.splitlines())


def reason_from_log(lines: list[str]) -> str | None:
    """Why a job ended, from its error log: the first traceback's exception that is not a launcher's wrapper
    (torchrun's `[rankN]: ` prefixes read through), else the last line that names an exception; a full disk
    is said as such, with what to do."""
    from hpcai.runtime.outputparse import find_exception, strip_rank

    found = find_exception(lines)
    if found is not None:
        rank = f" (rank {found.rank})" if found.rank is not None else ""
        where = f" at {found.where}" if found.where else ""
        text = f"{found.type}: {found.message}{where}{rank}" if found.message else f"{found.type}{where}{rank}"
    else:
        stripped = [strip_rank(line)[1].strip() for line in lines]
        text = next((line for line in reversed(stripped) if _EXCEPTION_LINE.match(line)), "")
    return _with_advice(text[:500]) if text else None


def _with_advice(reason: str) -> str:
    """A reason with what to do, where the cause is one a user can fix from the message alone."""
    if "No space left on device" in reason or "Disk quota exceeded" in reason:
        reason += (
            " -- the file system of the run folder (or the job's scratch) is full or over quota: free space "
            "(`hpcai doctor` shows the quota), keep fewer checkpoints, then `hpcai resume RUN`"
        )
    return visible_line(reason)


def lineage_reason(
    transport: FileReader, run: Run, why: str, decision: dict[str, Any], job_id: str, inside: bool
) -> str:
    where = "relaunched in the same job" if inside else "the next attempt is a new job"
    if why == "rollback":
        return f"rolled back: {decision.get('reason', 'spike guard')}; {where}"
    if why == "hang":
        return f"{_hang_reason(transport, run, job_id)}; {where}"
    if why == "node-failure":
        return f"{_node_failure_reason(transport, run, job_id)}; {where}"
    if why == "walltime":
        again = "the same job waits in the queue again" if inside else "the next attempt is a new job"
        return f"walltime near: checkpointed and requeued; {again}"
    return f"{why}; {where}"


def _node_failure_reason(transport: FileReader, run: Run, job_id: str) -> str:
    """Which node failed and why, from the run's node log (hpcai.runtime.recovery)."""
    records = [r for r in read_jsonl(transport, RunDir(run.run_dir).node_log) if str(r.get("job_id")) == job_id]
    if not records:
        return "node failure"
    return "node failure: " + "; ".join(f"{r.get('node')} (node {r.get('node_rank')}): {r.get('why')}" for r in records)


def _hang_reason(transport: FileReader, run: Run, job_id: str) -> str:
    """Why a hung attempt ended, from the watchdogs' records in the timeline."""
    hangs = [
        r for r in read_jsonl(transport, RunDir(run.run_dir).timeline)
        if r.get("event") == "hang" and str(r.get("job_id")) == job_id
    ]  # fmt: skip
    if not hangs:
        return "hang: a node's watchdog stopped the workers"
    parts = []
    for r in hangs:
        stalled, limit = r.get("stalled_s"), r.get("limit_s")
        timing = (
            f"no rank progressed for {stalled:.0f} s (limit {limit:.0f} s)"
            if isinstance(stalled, int | float) and isinstance(limit, int | float)
            else "no rank progressed"
        )
        parts.append(
            f"on {r.get('scheduler_node') or r.get('node')} at step {r.get('step')} ({r.get('phase')}): {timing}"
        )
    return "hang " + "; ".join(parts) + "; stacks in stacks/"
