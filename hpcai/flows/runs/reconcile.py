"""What the schedulers and the run directories say, recorded in the store: one scheduler query and one
read of the run files per cluster; attempts the job submitted by itself (rollbacks) learnt from its logs;
why a failed job ended, in words."""

from __future__ import annotations

import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from hpcai.backends.schedulers import JobState, JobStatus
from hpcai.backends.session import Backend, Session
from hpcai.backends.transport.base import Transport
from hpcai.errors import HpcaiError
from hpcai.flows.runs.submission import LOST_SUBMISSION_S
from hpcai.flows.runs.why import failure_reason, lineage_reason
from hpcai.rundir.batch import FileReader, Prefetched
from hpcai.rundir.contract import (
    EXIT_GAVE_UP,
    EXIT_HANG,
    EXIT_LEASE_HELD,
    EXIT_NODE_FAILED,
    EXIT_REQUEUE,
    EXIT_ROLLBACK,
)
from hpcai.rundir.jsonl import read_jsonl
from hpcai.rundir.layout import RunDir
from hpcai.store.db import Attempt, Run, Store


def _attempt_log_exit_code(transport: FileReader, run_dir: str, job_id: str) -> int | None:
    """The exit code the job script itself recorded for `job_id` (PBS wrappers do not report one)."""
    text = transport.tail(RunDir(run_dir).attempts, 65536).decode("utf-8", errors="replace")
    for line in reversed(text.splitlines()):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        ended = event.get("event") in ("end", "refused")
        if ended and event.get("job_id") == job_id and isinstance(event.get("rc"), int):
            return int(event["rc"])
    return None


def _complete_missing_exit(store: Store, transport: FileReader, run: Run, status: JobStatus) -> JobStatus:
    """A scheduler that reports an ended job without an exit code (PBS wrappers, some PBS versions): take
    the code the job script recorded; a script that never recorded its end was killed."""
    logged = _attempt_log_exit_code(transport, run.run_dir, status.job_id)
    if logged is None and isinstance(transport, Prefetched):  # read before the job ended: look again
        logged = _attempt_log_exit_code(transport.transport, run.run_dir, status.job_id)
    if logged is not None:
        state = JobState.FAILED if status.state is JobState.COMPLETED and logged != 0 else status.state
        return replace(status, state=state, exit_code=logged)
    if status.state is not JobState.COMPLETED:
        return status
    cancelled = any(e.kind == "cancel" and status.job_id in e.message for e in store.events(run.id))
    if cancelled:
        return replace(status, state=JobState.CANCELLED, reason="cancelled by user")
    return replace(status, state=JobState.FAILED, reason="the job ended without its script recording an end (killed)")


def lineage_files(run: Run) -> list[str]:
    """What `refresh` reads of an unfinished run's directory."""
    files = RunDir(run.run_dir)
    return [files.attempts, files.decisions, files.gave_up, files.job_id, files.node_log]


def metrics_file(run: Run) -> str:
    return str(run.spec.get("metrics_path") or RunDir(run.run_dir).metrics)


def refresh(
    store: Store, runs: Iterable[Run], backends: Session | None = None, files: dict[str, FileReader] | None = None
) -> Session:
    """Ask each cluster's scheduler, once for all its unfinished attempts, and record what changed. The
    run directories' files are read in one call per cluster (`files`, prefetched by `status`, or here)."""
    backends = backends or Session.current()
    runs = list(runs)
    latest = store.latest_attempts([r.id for r in runs])
    per_cluster: dict[str, list[tuple[Run, Attempt]]] = defaultdict(list)
    for run in runs:
        attempt = latest.get(run.id)
        if attempt is not None and not JobState(attempt.state).terminal:
            per_cluster[run.cluster].append((run, attempt))
    for cluster, items in per_cluster.items():
        try:
            _refresh_cluster(store, backends, cluster, items, files)
        except HpcaiError as exc:  # one cluster out of reach must not blank the others
            backends.warn(f"{cluster}: {exc} Its runs are shown as last known.")
    return backends


def _refresh_cluster(
    store: Store,
    backends: Session,
    cluster: str,
    items: list[tuple[Run, Attempt]],
    files: dict[str, FileReader] | None,
) -> None:
    backend = backends.get(cluster)
    reader = (files or {}).get(cluster) or Prefetched(
        backend.transport, [p for run, _ in items for p in lineage_files(run)]
    )
    items = _reconcile_lost_submissions(store, backend, items, reader)
    job_ids = [a.job_id for _, a in items if a.job_id]
    statuses = backend.scheduler.states(job_ids) if job_ids else {}
    for warning in backend.scheduler.warnings:
        backends.warn(f"{cluster}: {warning}")
    backend.scheduler.warnings.clear()
    lineage_grew = False
    for run, attempt in items:
        status = statuses.get(attempt.job_id or "")
        if status is not None and _relaunched_since(store, reader, run, attempt):
            # The job went on under the same id (a requeue, a relaunch) since the attempt was recorded: what
            # the scheduler says now is the next launch's, not this one's. The lineage records the next.
            status = None
        if status is None or status.state is JobState.UNKNOWN:
            lineage_grew |= _follow_lineage(store, reader, run, backend.scheduler.valid_job_id)
            continue
        if status.restarts and _record_scheduler_requeues(store, backend, reader, run, status):
            lineage_grew = True  # the new attempt is asked about at once
            continue
        if status.state.terminal and status.exit_code is None:
            status = _complete_missing_exit(store, reader, run, status)
        changes = _status_changes(attempt, status)
        if status.state.terminal and status.exit_code == EXIT_LEASE_HELD and attempt.reason is None:
            changes["reason"] = "not started: another attempt of this run was live (its lease stayed fresh)"
        elif changes.get("state") == JobState.FAILED.value and attempt.reason is None and attempt.job_id:
            why = failure_reason(backend, run.run_dir, attempt.job_id)
            if why is not None:
                changes["reason"] = why
        if changes:
            store.update_attempt(run.id, attempt.number, **changes)
            if "state" in changes:
                store.add_event(run.id, "state", f"attempt {attempt.number} (job {attempt.job_id}): {status.state}")
            if changes.get("state") == JobState.NODE_FAIL.value and attempt.job_id:
                _note_node_fail(store, backend.transport, run, attempt.job_id)
        lineage_grew |= _follow_lineage(store, reader, run, backend.scheduler.valid_job_id)
        if status.state.terminal and status.exit_code == EXIT_GAVE_UP:
            _note_give_up(store, reader, run, store.attempts(run.id)[-1])
    if lineage_grew:  # ask about the new attempts right away
        refresh(store, [store.run(r.id) for r, _ in items], backends, {cluster: reader})


def _status_changes(attempt: Attempt, status: JobStatus) -> dict[str, Any]:
    """What the scheduler's word changes on the attempt. Its reason is why the job waits while it has not
    ended (`waiting`: Priority, Resources, BeginTime after a requeue), and why it ended once it has: a
    pending reason never becomes the end's, and hpcai's own account of an end (rolled back, gave up,
    cancelled with hpcai) outranks the scheduler's."""
    changes: dict[str, Any] = {}
    for key, value in (
        ("state", status.state.value),
        ("exit_code", status.exit_code),
        ("started", status.started),
        ("ended", status.ended),
    ):
        if value is not None and getattr(attempt, key) != value:
            changes[key] = value
    if not status.state.terminal:
        if attempt.waiting != status.reason and (status.reason is not None or attempt.waiting is not None):
            changes["waiting"] = status.reason
        return changes
    if attempt.waiting is not None:
        changes["waiting"] = None
    if attempt.reason is None:
        if status.reason is not None:
            changes["reason"] = status.reason
        elif status.state is JobState.CANCELLED:
            changes["reason"] = "cancelled outside hpcai (scancel/qdel, or an administrator)"
    return changes


def _readable_decision(decision: dict[str, Any]) -> dict[str, Any]:
    """A decision as written by the guard, or {} when a value is not what the guard writes (a hand-edited or
    damaged log steers nothing: the attempt is still recorded, without the lineage details)."""
    try:
        step = int(decision["checkpoint_step"]) if "checkpoint_step" in decision else None
        scale = float(decision.get("lr_scale", 1.0))
        skip = (int(decision["skip_from"]), int(decision["skip_to"])) if decision.get("skip_from") is not None else None
    except (TypeError, ValueError, KeyError, OverflowError):
        return {}
    if not math.isfinite(scale) or scale <= 0:
        return {}
    clean: dict[str, Any] = {**decision, "lr_scale": scale}
    if step is not None:
        clean["checkpoint_step"] = step
    if skip is not None:
        clean["skip_from"], clean["skip_to"] = skip
    return clean


_INSIDE = {"relaunch", "requeue"}  # the next launch of the training under the same job id
SCHEDULER_REQUEUE = "requeued by the scheduler"  # how a row that the scheduler's own requeue ended begins


def _record_scheduler_requeues(store: Store, backend: Backend, reader: FileReader, run: Run, status: JobStatus) -> bool:
    """The scheduler started the job again under its id by itself (Slurm requeues a batch job after
    NODE_FAIL or a preemption): each such run ended an attempt, and the job's next run is a new one. Its
    own restarts are the scheduler's count less the walltime requeues the job asked for (its log's
    `requeue` records); what each ended as comes from the scheduler's record of the job's runs."""
    job = status.job_id
    asked = sum(
        1
        for e in read_jsonl(reader, RunDir(run.run_dir).attempts)
        if e.get("event") == "requeue" and str(e.get("job_id", "")).strip() == job
    )
    attempts = [a for a in store.attempts(run.id) if a.job_id == job]
    recorded = sum(1 for a in attempts if (a.reason or "").startswith(SCHEDULER_REQUEUE))
    if status.restarts - asked <= recorded:
        return False
    runs = backend.scheduler.earlier_runs(job)
    ended = [r for r in runs[:-1] if r.state.terminal]  # a walltime requeue's run reads REQUEUED: not these
    added = False
    for earlier in ended[recorded : status.restarts - asked]:
        latest = store.attempts(run.id)[-1]
        if latest.job_id != job:
            break
        why = f"{SCHEDULER_REQUEUE} after {earlier.state.value}: the same job waits in the queue again"
        changes = {"state": earlier.state.value, "reason": why, "waiting": None, "exit_code": earlier.exit_code,
                   "started": earlier.started, "ended": earlier.ended}  # fmt: skip
        store.update_attempt(
            run.id, latest.number, **{k: v for k, v in changes.items() if v is not None or k == "waiting"}
        )
        if earlier.state is JobState.NODE_FAIL:
            _note_node_fail(store, backend.transport, run, job)
        number = store.add_attempt(run.id, lr_scale=latest.lr_scale)
        store.update_attempt(run.id, number, job_id=job, state=JobState.PENDING.value)
        store.add_event(run.id, "scheduler-requeue", why, {"job_id": job})
        added = True
    return added


def _relaunched_since(store: Store, reader: FileReader, run: Run, attempt: Attempt) -> bool:
    """The attempt log holds more launches of the attempt's job than the store has attempts of it."""
    if attempt.job_id is None:
        return False
    inside = sum(
        1
        for e in read_jsonl(reader, RunDir(run.run_dir).attempts)
        if e.get("event") in _INSIDE and str(e.get("job_id", "")).strip() == attempt.job_id
    )
    return sum(1 for a in store.attempts(run.id) if a.job_id == attempt.job_id) <= inside


def _follow_lineage(store: Store, transport: FileReader, run: Run, valid_job_id: Callable[[object], bool]) -> bool:
    """Attempts the job started by itself, learnt from the run directory's attempt log and decisions and
    recorded in the store: relaunches inside the allocation (same job id) and next jobs it submitted
    (rollbacks, hangs, failed nodes). Returns True when a new attempt was added. Nodes the job found
    failing go on the cluster's exclusion list (hpcai.store.nodes)."""
    from hpcai.store.nodes import record_from_node_log

    record_from_node_log(store, run.cluster, run.id, read_jsonl(transport, RunDir(run.run_dir).node_log))
    log = [
        e
        for e in read_jsonl(transport, RunDir(run.run_dir).attempts)
        if e.get("event") in {"submitted", *_INSIDE}
        and isinstance(e.get("job_id"), str | int) and valid_job_id(str(e["job_id"]).strip())
    ]  # fmt: skip  # an id that is not the scheduler's (a planted "-uroot") never reaches the store
    if not log:
        return False
    decisions = [
        d
        for d in read_jsonl(transport, RunDir(run.run_dir).decisions)
        if d.get("action") == "rollback" and d.get("by") == "spike guard"
    ]
    added = False
    rollbacks = 0
    relaunches: dict[str, int] = {}  # job id -> relaunches seen so far in the log
    for event in log:
        job_id = str(event["job_id"])
        inside = event["event"] in _INSIDE
        # A relaunch says why; logs written before hangs were handled say nothing: rollbacks.
        why = "walltime" if event["event"] == "requeue" else event.get("why", "rollback")
        decision: dict[str, Any] = {}
        if why == "rollback":
            decision = _readable_decision(decisions[rollbacks]) if rollbacks < len(decisions) else {}
            rollbacks += 1
        attempts = store.attempts(run.id)
        # Only a job of this run can relaunch, requeue or submit a next attempt: a record naming another job
        # (a planted line, whatever its id's format) adds nothing to the run's lineage.
        ours = {a.job_id for a in attempts if a.job_id}
        if (job_id if inside else str(event.get("after"))) not in ours:
            continue
        if inside:
            relaunches[job_id] = relaunches.get(job_id, 0) + 1
            if sum(1 for a in attempts if a.job_id == job_id) > relaunches[job_id]:
                continue  # recorded already
            previous = next((a for a in reversed(attempts) if a.job_id == job_id), None)
        else:
            if any(a.job_id == job_id for a in attempts):
                continue
            previous = next((a for a in reversed(attempts) if a.job_id == event.get("after")), None)
        after = job_id if inside else str(event.get("after"))
        reason = lineage_reason(transport, run, why, decision, after, inside)
        if previous is not None:
            changes: dict[str, Any] = {"reason": reason, "waiting": None}
            if why == "walltime":  # checkpointed before the time limit and back in the queue: ended as planned
                changes.update(state=JobState.REQUEUED.value, exit_code=EXIT_REQUEUE)
                epoch = event.get("epoch")
                if isinstance(epoch, int | float) and not isinstance(epoch, bool) and 0 < epoch < 1e11:
                    changes["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))
            # A relaunch ended only the training, not the job: the job's own state is the last launch's.
            elif inside or not JobState(previous.state).terminal:
                changes.update(state=JobState.FAILED.value, exit_code=_LINEAGE_EXIT.get(why, EXIT_ROLLBACK))
            store.update_attempt(run.id, previous.number, **changes)
        skipped = None
        if decision.get("skip_from") is not None:
            skipped = f"{decision['skip_from']}-{decision['skip_to']}"
        resumed = f"step-{int(decision['checkpoint_step']):08d}" if "checkpoint_step" in decision else None
        if why != "rollback" and re.fullmatch(r"step-[0-9]{1,12}", str(event.get("resume", ""))):
            resumed = str(event["resume"])
        number = store.add_attempt(
            run.id,
            resumed_from=resumed,
            lr_scale=float(decision.get("lr_scale", 1.0)),
            skipped_batches=skipped,
        )
        # A relaunch trains at once inside the allocation; a requeued or next job waits in the queue.
        state = JobState.RUNNING if event["event"] == "relaunch" else JobState.PENDING
        store.update_attempt(run.id, number, job_id=job_id, state=state.value)
        data = {"job_id": after, "in_allocation": inside}
        if why == "rollback":
            store.add_event(run.id, "rollback", decision.get("reason", "the job started its next attempt"),
                            {**decision, **data})  # fmt: skip
        else:
            store.add_event(run.id, why, reason, data)
        added = True
    return added


_LINEAGE_EXIT = {"rollback": EXIT_ROLLBACK, "hang": EXIT_HANG, "node-failure": EXIT_NODE_FAILED}


def _note_node_fail(store: Store, transport: Transport, run: Run, job_id: str) -> None:
    """Slurm ended the job for a failed node (NODE_FAIL, no --no-kill): the node whose task began in the
    job's last launch and never ended is the one; it goes on the cluster's exclusion list."""
    from hpcai.runtime.node_agent import NODES_DIR
    from hpcai.store.nodes import record_from_node_log

    folder = RunDir(run.run_dir).path(NODES_DIR)
    names = transport.list_dir(folder)
    launches: dict[int, set[str]] = defaultdict(set)
    for name in names:
        match = re.fullmatch(rf"{re.escape(job_id)}-a([0-9]{{1,9}})-node[0-9]{{1,9}}\.(start|json)", name)
        if match:
            launches[int(match.group(1))].add(name)
    if not launches:
        return
    last = launches[max(launches)]
    lost = sorted(n for n in last if n.endswith(".start") and n.removesuffix(".start") + ".json" not in last)
    why = "NODE_FAIL: Slurm ended the job for a failed node; this node's task never ended"
    records = []
    for name in lost:
        text = transport.read_text(f"{folder}/{name}")
        try:
            start = json.loads(text or "")
        except json.JSONDecodeError:
            continue
        if isinstance(start, dict):
            node = start.get("scheduler_node") or start.get("node")
            records.append({**start, "node": node, "time": time.time(), "why": why})
    record_from_node_log(store, run.cluster, run.id, records)


def _note_give_up(store: Store, transport: FileReader, run: Run, attempt: Attempt) -> None:
    text = transport.read_text(RunDir(run.run_dir).gave_up)
    if not text:
        return
    try:
        reason = str(json.loads(text).get("reason", "the spike guard gave up"))
    except json.JSONDecodeError:
        return
    if attempt.reason != f"gave up: {reason}":
        store.update_attempt(run.id, attempt.number, reason=f"gave up: {reason}")
        store.add_event(run.id, "gave-up", reason)


def _reconcile_lost_submissions(
    store: Store, backend: Backend, items: list[tuple[Run, Attempt]], files: FileReader
) -> list[tuple[Run, Attempt]]:
    lost = [(r, a) for r, a in items if a.job_id is None]
    if not lost:
        return items
    found: dict[str, str] = {}
    for run, _ in lost:
        text = (files.read_text(RunDir(run.run_dir).job_id) or "").strip()
        earlier = {a.job_id for a in store.attempts(run.id) if a.job_id}
        if backend.scheduler.valid_job_id(text) and text not in earlier:  # planted, or an earlier attempt's
            found[run.run_dir] = text
    missing = [r.run_dir for r, _ in lost if r.run_dir not in found]
    if missing:
        found.update(backend.scheduler.find_jobs(missing))
    result = []
    for run, attempt in items:
        earlier = {a.job_id for a in store.attempts(run.id) if a.job_id}
        if attempt.job_id is None and found.get(run.run_dir) not in (None, *earlier):
            # (the job_id file and the directory's newest job may still be an earlier attempt's)
            job_id = found[run.run_dir]
            store.update_attempt(run.id, attempt.number, job_id=job_id, state=JobState.PENDING.value)
            store.add_event(run.id, "reconciled", f"found job {job_id} that the submitting CLI did not record")
            attempt = store.attempts(run.id)[attempt.number - 1]
        elif attempt.job_id is None and attempt.state == JobState.WAITING.value:
            if _waiting_stage_ended(store, run, attempt):
                continue
        elif attempt.job_id is None and time.time() - attempt.submitted > LOST_SUBMISSION_S:
            store.update_attempt(
                run.id,
                attempt.number,
                state=JobState.FAILED.value,
                reason="no job was ever found for this submission (the CLI stopped before the scheduler took it)",
            )
            continue
        result.append((run, attempt))
    return result


def _waiting_stage_ended(store: Store, run: Run, attempt: Attempt) -> bool:
    """A pipeline stage whose job the previous stage's job submits: it ends when that stage ended any other
    way than COMPLETED, or completed without submitting it (after LOST_SUBMISSION_S)."""
    from hpcai.flows.runs.submission import WAITS_FOR

    events = store.events(run.id)
    previous = next((e.message for e in events if e.kind == WAITS_FOR), None)
    if previous is None:
        return False
    latest = store.attempts(previous)[-1]
    state = JobState(latest.state)
    if not state.terminal:
        return False
    if state is not JobState.COMPLETED:
        reason = f"not started: the previous stage, run {previous}, ended {state.value}"
        store.update_attempt(run.id, attempt.number, state=JobState.CANCELLED.value, reason=reason)
        store.add_event(run.id, "pipeline", f"previous stage {previous} ended {state.value}")
        return True
    noticed = next((e.time for e in events if e.kind == "previous-completed"), None)
    if noticed is None:
        store.add_event(run.id, "previous-completed", previous)
    elif time.time() - noticed > LOST_SUBMISSION_S:
        reason = (
            f"run {previous} completed but its job did not submit this stage; submit it by hand: "
            f"hpcai submit {run.workload} --stage {run.stage} --from {previous}"
        )
        store.update_attempt(run.id, attempt.number, state=JobState.FAILED.value, reason=reason)
        return True
    return False
