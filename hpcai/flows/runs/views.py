"""Runs as a user sees them: state, attempt, progress (`status`, `list`, `status RUN`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hpcai.backends.schedulers import JobState
from hpcai.backends.session import Session
from hpcai.errors import HpcaiError
from hpcai.flows.runs.pending import explain_pending
from hpcai.flows.runs.reconcile import lineage_files, metrics_file, refresh
from hpcai.rundir.batch import FileReader, Prefetched
from hpcai.rundir.jsonl import read_jsonl
from hpcai.rundir.layout import RunDir
from hpcai.rundir.metrics import last_progress
from hpcai.rundir.visible import visible_dict
from hpcai.store.db import Attempt, Run, Store

if TYPE_CHECKING:
    from hpcai.monitor.history import Point


@dataclass(frozen=True)
class RunView:
    run_id: str
    workload: str
    cluster: str
    state: str
    attempt: int
    job_id: str | None
    elapsed_s: float | None
    step: int | None
    loss: float | None
    exit_code: int | None
    reason: str | None
    run_dir: str
    waiting: str | None = None  # why a job that has not ended waits (the scheduler's pending reason)
    waiting_means: str | None = None  # that reason in words, with what to do (flows/runs/pending.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    try:
        begin = dt.datetime.fromisoformat(start)
        finish = dt.datetime.fromisoformat(end) if end else dt.datetime.now()
    except ValueError:
        return None
    return max(0.0, (finish - begin).total_seconds())


def views(
    store: Store,
    runs: list[Run],
    backends: Session,
    *,
    with_progress: bool = True,
    files: dict[str, FileReader] | None = None,
) -> list[RunView]:
    latest = store.latest_attempts([r.id for r in runs])
    readers = dict(files or {})
    result = []
    for run in runs:
        attempt = latest.get(run.id)
        progress = None
        if with_progress:
            try:
                if run.cluster not in readers:
                    paths = [metrics_file(r) for r in runs if r.cluster == run.cluster]
                    readers[run.cluster] = Prefetched(backends.get(run.cluster).transport, paths)
                progress = last_progress(readers[run.cluster], metrics_file(run))
            except HpcaiError:
                progress = None
            if progress is not None and (progress.step, progress.loss) != (run.last_step, run.last_loss):
                store.record_progress(run.id, progress.step, progress.loss)  # for `list`, which reads no files
        step = progress.step if progress else run.last_step
        loss = progress.loss if progress else run.last_loss
        result.append(
            RunView(
                run_id=run.id,
                workload=run.workload,
                cluster=run.cluster,
                state=attempt.state if attempt else run.state,
                attempt=attempt.number if attempt else 0,
                job_id=attempt.job_id if attempt else None,
                elapsed_s=_seconds_between(attempt.started, attempt.ended) if attempt else None,
                step=step,
                loss=loss,
                exit_code=attempt.exit_code if attempt else None,
                reason=attempt.reason if attempt else None,
                run_dir=run.run_dir,
                waiting=(waiting := attempt.waiting if attempt and not JobState(attempt.state).terminal else None),
                waiting_means=explain_pending(waiting),
            )
        )
    return result


def status(store: Store, run_id: str | None = None) -> tuple[list[RunView], Session]:
    """Every run's state and progress: per cluster one squeue + one sacct (or qstat) and one read of all
    the run directories' files it needs, whatever the number of runs."""
    return status_of(store, [store.run(run_id)] if run_id else store.runs())


def status_of(store: Store, runs: list[Run]) -> tuple[list[RunView], Session]:
    """`status` of these runs (a sweep's points, say)."""
    backends = Session.current()
    latest = store.latest_attempts([r.id for r in runs])
    files: dict[str, FileReader] = {}
    for cluster in sorted({r.cluster for r in runs}):
        mine = [r for r in runs if r.cluster == cluster]
        paths = [metrics_file(r) for r in mine]
        for run in mine:
            attempt = latest.get(run.id)
            if attempt is not None and not JobState(attempt.state).terminal:
                paths += lineage_files(run)
        try:
            files[cluster] = Prefetched(backends.get(cluster).transport, paths)
        except HpcaiError:
            continue  # refresh reports this cluster's failure in its own words
    refresh(store, runs, backends, files)
    return views(store, [store.run(r.id) for r in runs], backends, files=files), backends


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """One run with its lineage: attempts (why each ended, what it resumed from, LR scale, skipped
    batches), the detector's events, the decisions and the rollback policy."""
    run = store.run(run_id)
    backends = refresh(store, [run])
    transport = backends.get(run.cluster).transport
    (view,) = views(store, [store.run(run.id)], backends)
    params = run.spec.get("parameters", {})
    policy = {k: params[k] for k in params if k.startswith(("max_rollbacks", "rollback_", "spike_guard"))}
    # Records from the run folder: whoever could write there wrote them (shown with controls made visible).
    events = unique_events([visible_dict(e) for e in read_jsonl(transport, RunDir(run.run_dir).events)
                            if e.get("status") != "open"])  # fmt: skip
    attempts = store.attempts(run.id)
    progress = last_progress(transport, metrics_file(run))
    expected_start = None
    if view.state == JobState.PENDING.value and view.job_id:
        try:
            expected_start = backends.get(run.cluster).scheduler.expected_start(view.job_id)
        except HpcaiError:  # an estimate only: its absence is no failure
            expected_start = None
    return {
        **view.to_json(),
        "expected_start": expected_start,
        "attempts": [_attempt_json(run, a) for a in attempts],
        "events": events,
        "decisions": [visible_dict(d) for d in read_jsonl(transport, RunDir(run.run_dir).decisions)],
        "policy": policy,
        "goodput": run_goodput(run, transport, attempts),
        "left_out": progress.left_out if progress else None,
    }


def run_history(store: Store, run_id: str) -> tuple[Run, list[Point]]:
    """A run's loss curve from its metrics file, read where the run is (through its transport)."""
    from hpcai.monitor.history import parse_metrics_line

    run = store.run(run_id)
    transport = Session.current().get(run.cluster).transport
    text = transport.read_text(metrics_file(run)) or ""
    return run, [p for p in map(parse_metrics_line, text.splitlines()) if p is not None]


def unique_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Loss events, each once: an attempt that runs the steps again after a resume detects the same event
    (same kind and onset) again; the newest record of it stands."""
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        key = (str(event.get("kind")), str(event.get("onset_step")))
        newest.pop(key, None)
        newest[key] = event
    return list(newest.values())


def _epoch(stamp: str | None) -> float | None:
    """A scheduler's local time stamp (ISO, no zone) as seconds since the epoch."""
    try:
        return dt.datetime.fromisoformat(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def _attempt_json(run: Run, attempt: Attempt) -> dict[str, Any]:
    cluster, run_dir = attempt.home(run)  # where it ran: the run's home, or a cluster it moved from
    return {
        **asdict(attempt),
        "cluster": cluster,
        "run_dir": run_dir,
        "waiting_means": explain_pending(attempt.waiting),
    }


def run_goodput(run: Run, transport: FileReader, attempts: list[Attempt]) -> dict[str, Any]:
    """The goodput account (hpcai.flows.runs.goodput) from the run directory, read through the run's transport."""
    from hpcai.flows.runs.goodput import account

    files = RunDir(run.run_dir)
    nodes = run.spec.get("nodes")
    spares = run.spec.get("spare_nodes")
    if isinstance(nodes, int) and isinstance(spares, int) and spares > 0:
        nodes += spares  # allocated (and paid for) all along
    # Job ids as the attempt log names them: `cluster:job` for jobs on a cluster the run moved from.
    last_of_job = {
        key: a for a in attempts if (key := a.job_key()) is not None
    }  # a job's newest attempt says how it ended
    result = account(
        read_jsonl(transport, files.attempts),
        read_jsonl(transport, metrics_file(run)),
        read_jsonl(transport, files.timeline),
        nodes=nodes if isinstance(nodes, int) and nodes > 0 else 1,
        submitted={key: a.submitted for a in attempts if (key := a.job_key()) is not None},
        ended={job: _epoch(a.ended) for job, a in last_of_job.items() if JobState(a.state).terminal},
    )
    return result.to_json()
