"""Submit, status, logs and cancel flows, built from the store, the schedulers and the transports."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from hpcai.errors import EnvironmentFailure, HpcaiError, ValidationError
from hpcai.exitcodes import (
    ATTEMPT_COUNT_FILE,
    DECISIONS_LOG,
    EVENTS_LOG,
    EXIT_GAVE_UP,
    EXIT_LEASE_HELD,
    EXIT_ROLLBACK,
    GAVE_UP_FILE,
    ROLLBACK_FILE,
    SCRIPT_NAME,
)
from hpcai.metrics import last_progress
from hpcai.runfiles import FileReader, Prefetched
from hpcai.runtime.failure import ERRORS_DIR
from hpcai.schedulers import JobState, JobStatus
from hpcai.service import RenderedJob
from hpcai.session import Backend, Session
from hpcai.store import Attempt, Run, Store
from hpcai.transport import Transport

# How long an attempt may stay SUBMITTING with no job found before it is declared never submitted.
LOST_SUBMISSION_S = 300


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# One command on the target: input paths that are missing, then what the run directory already holds.
_PROBE_TARGET = r"""
run_dir=$1; shift
for path in "$@"; do [ -e "$path" ] || printf 'missing %s\n' "$path"; done
if [ -e "$run_dir" ] && [ ! -d "$run_dir" ]; then echo "not-a-folder"
elif [ -d "$run_dir" ]; then ls -A "$run_dir" | head -n 5 | sed 's/^/holds /'; fi
"""


def check_target(transport: Transport, run_dir: str, inputs: dict[str, str]) -> None:
    """Before anything is recorded or queued, in one command on the target: every input path the job will
    read exists there, and the run directory is new (an existing run's job script, checkpoints and logs are
    never taken over, nor a file)."""
    result = transport.run(["sh", "-c", _PROBE_TARGET, "sh", run_dir, *inputs.values()], timeout=30)
    if not result.ok:
        raise EnvironmentFailure(f"cannot look at the run directory {run_dir}: {result.stderr.strip()}")
    lines = result.stdout.splitlines()
    missing = [line.removeprefix("missing ") for line in lines if line.startswith("missing ")]
    if missing:
        names = [f"{key}={path}" for key, path in inputs.items() if path in missing]
        raise ValidationError(
            f"--set {', '.join(names)}: not found where the job runs. Give a path that exists on the cluster "
            "(absolute), or a local one to have it staged; nothing was queued."
        )
    if "not-a-folder" in lines:
        raise ValidationError(
            f"--run-dir: {run_dir} is a file, not a folder. Give a new folder (hpcai creates it), or leave "
            "--run-dir out."
        )
    held = [line.removeprefix("holds ") for line in lines if line.startswith("holds ")]
    if held:
        raise ValidationError(
            f"--run-dir: {run_dir} already holds files ({', '.join(held)}): a run directory is never "
            "shared, so another run's job script, checkpoints and logs are not overwritten. Give a new or "
            "empty folder, or leave --run-dir out; to go on with the run that lives there, use `hpcai resume`."
        )


def submit_run(rendered: RenderedJob, store: Store | None = None) -> dict[str, Any]:
    store = store or Store()
    job = rendered.job
    backend = Session.current().get(job.cluster)
    inputs = {
        key: str(job.parameters[key])
        for key in rendered.workload.spec.path_parameters()
        if str(job.parameters.get(key, "")).startswith("/")
    }
    store.check_run_id_free(job.run_id)  # the user's own mistake is named before the folder's
    check_target(backend.transport, job.run_dir, inputs)
    run = Run(
        id=job.run_id,
        workload=job.workload,
        cluster=job.cluster,
        stage=job.stage,
        run_dir=job.run_dir,
        spec=job.model_dump(),
        created=time.time(),
        state=JobState.SUBMITTING.value,
    )
    # The intent goes into the store before the scheduler hears of it: a CLI killed after sbatch but
    # before recording the id is reconciled by the next `status` (job_id file, or the job's work dir).
    store.create_run_checked(run)
    transport = backend.transport
    script_path = f"{job.run_dir}/{SCRIPT_NAME}"
    try:
        transport.makedirs(f"{job.run_dir}/logs")
        transport.write_text(script_path, rendered.script, mode=0o755)
        transport.write_text(f"{job.run_dir}/spec.json", json.dumps(run.spec, indent=2) + "\n")
        job_id = backend.scheduler.submit(script_path, job.run_dir, walltime_s=job.walltime_s)
    except (HpcaiError, OSError) as exc:
        reason = str(exc) if isinstance(exc, HpcaiError) else f"{exc.strerror or exc} ({exc.filename or job.run_dir})"
        store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"submission failed: {reason}")
        store.add_event(run.id, "submit-failed", reason)
        if isinstance(exc, OSError):
            raise EnvironmentFailure(
                f"submit: writing the run directory failed: {reason}. Nothing was queued; the run is recorded "
                "as FAILED. Free space or fix permissions, then submit again."
            ) from None
        raise
    store.update_attempt(run.id, 1, job_id=job_id, state=JobState.PENDING.value)
    store.add_event(run.id, "submitted", f"job {job_id} on {job.cluster}")
    return {"run_id": run.id, "job_id": job_id, "cluster": job.cluster, "run_dir": job.run_dir}


def _attempt_log_exit_code(transport: FileReader, run_dir: str, job_id: str) -> int | None:
    """The exit code the job script itself recorded for `job_id` (PBS wrappers do not report one)."""
    text = transport.tail(f"{run_dir}/attempts.jsonl", 65536).decode("utf-8", errors="replace")
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
    return [f"{run.run_dir}/{name}" for name in ("attempts.jsonl", DECISIONS_LOG, GAVE_UP_FILE, "job_id")]


def metrics_file(run: Run) -> str:
    return str(run.spec.get("metrics_path") or f"{run.run_dir}/metrics.jsonl")


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
        if status is None or status.state is JobState.UNKNOWN:
            lineage_grew |= _follow_lineage(store, reader, run)
            continue
        if status.state.terminal and status.exit_code is None:
            status = _complete_missing_exit(store, reader, run, status)
        changes: dict[str, Any] = {}
        for key, value in (
            ("state", status.state.value),
            ("exit_code", status.exit_code),
            ("reason", status.reason),
            ("started", status.started),
            ("ended", status.ended),
        ):
            if value is not None and getattr(attempt, key) != value:
                changes[key] = value
        if status.state.terminal and status.exit_code == EXIT_LEASE_HELD and attempt.reason is None:
            changes["reason"] = "not started: another attempt of this run was live (its lease stayed fresh)"
        elif changes.get("state") == JobState.FAILED.value and attempt.reason is None and attempt.job_id:
            why = failure_reason(backend, run.run_dir, attempt.job_id)
            if why is not None:
                changes["reason"] = why
        if attempt.reason is not None:
            changes.pop("reason", None)  # hpcai's own account (rolled back, gave up) outranks the scheduler's
        if changes:
            store.update_attempt(run.id, attempt.number, **changes)
            if "state" in changes:
                store.add_event(run.id, "state", f"attempt {attempt.number} (job {attempt.job_id}): {status.state}")
        lineage_grew |= _follow_lineage(store, reader, run)
        if status.state.terminal and status.exit_code == EXIT_GAVE_UP:
            _note_give_up(store, reader, run, store.attempts(run.id)[-1])
    if lineage_grew:  # ask about the new attempts right away
        refresh(store, [store.run(r.id) for r, _ in items], backends, {cluster: reader})


# A line of a Python traceback's last frame: `SomeError: message` (module-qualified or not).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*")


def failure_reason(backend: Backend, run_dir: str, job_id: str) -> str | None:
    """Why a failed job ended, in words: the first rank's recorded exception (the others usually die of
    the collective it left), else the last exception line in the job's error log; read once, when the
    attempt is seen to fail."""
    transport = backend.transport
    records = []
    for name in transport.list_dir(f"{run_dir}/{ERRORS_DIR}"):
        if name.startswith("rank-") and name.endswith(".json"):
            try:
                record = json.loads(transport.read_text(f"{run_dir}/{ERRORS_DIR}/{name}") or "")
            except (ValueError, HpcaiError):
                continue
            if isinstance(record, dict) and record.get("job_id") in (job_id, None):
                records.append(record)
    if records:
        first = min(records, key=lambda r: float(r.get("time") or 0))
        where = f" at {first['where']}" if first.get("where") else ""
        others = f"; {len(records) - 1} other rank(s) failed after it" if len(records) > 1 else ""
        return (f"{first.get('type', 'error')}: {first.get('message', '')}{where} "
                f"(rank {first.get('rank', '?')} on {first.get('host', '?')}{others})")  # fmt: skip
    _, err = backend.scheduler.log_paths(run_dir, job_id)
    text = transport.tail(err, 65536).decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    found = next((line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), None)
    return found[:500] if found else None


def _jsonl(transport: FileReader, path: str) -> list[dict[str, Any]]:
    text = transport.read_text(path) or ""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(record, dict):
            records.append(record)
    return records


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


def _follow_lineage(store: Store, transport: FileReader, run: Run) -> bool:
    """Attempts the job submitted by itself (spike-guard rollbacks), learnt from the run directory's
    attempt log and decisions, recorded in the store. Returns True when a new attempt was added."""
    submitted = [
        e
        for e in _jsonl(transport, f"{run.run_dir}/attempts.jsonl")
        if e.get("event") == "submitted" and isinstance(e.get("job_id"), str | int) and str(e["job_id"]).strip()
    ]
    if not submitted:
        return False
    decisions = [
        d
        for d in _jsonl(transport, f"{run.run_dir}/{DECISIONS_LOG}")
        if d.get("action") == "rollback" and d.get("by") == "spike guard"
    ]
    added = False
    for k, event in enumerate(submitted):
        attempts = store.attempts(run.id)
        if any(a.job_id == str(event["job_id"]) for a in attempts):
            continue
        decision = _readable_decision(decisions[k]) if k < len(decisions) else {}
        previous = next((a for a in attempts if a.job_id == event.get("after")), None)
        if previous is not None:
            changes: dict[str, Any] = {"reason": f"rolled back: {decision.get('reason', 'spike guard')}"}
            if not JobState(previous.state).terminal:
                changes.update(state=JobState.FAILED.value, exit_code=EXIT_ROLLBACK)
            store.update_attempt(run.id, previous.number, **changes)
        skipped = None
        if decision.get("skip_from") is not None:
            skipped = f"{decision['skip_from']}-{decision['skip_to']}"
        number = store.add_attempt(
            run.id,
            resumed_from=f"step-{int(decision['checkpoint_step']):08d}" if "checkpoint_step" in decision else None,
            lr_scale=float(decision.get("lr_scale", 1.0)),
            skipped_batches=skipped,
        )
        store.update_attempt(run.id, number, job_id=str(event["job_id"]), state=JobState.PENDING.value)
        store.add_event(run.id, "rollback", decision.get("reason", "the job submitted its next attempt"), decision)
        added = True
    return added


def _note_give_up(store: Store, transport: FileReader, run: Run, attempt: Attempt) -> None:
    text = transport.read_text(f"{run.run_dir}/{GAVE_UP_FILE}")
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
        text = files.read_text(f"{run.run_dir}/job_id")
        if text and text.strip():
            found[run.run_dir] = text.strip()
    missing = [r.run_dir for r, _ in lost if r.run_dir not in found]
    if missing:
        found.update(backend.scheduler.find_jobs(missing))
    result = []
    for run, attempt in items:
        if attempt.job_id is None and run.run_dir in found:
            job_id = found[run.run_dir]
            store.update_attempt(run.id, attempt.number, job_id=job_id, state=JobState.PENDING.value)
            store.add_event(run.id, "reconciled", f"found job {job_id} that the submitting CLI did not record")
            attempt = store.attempts(run.id)[attempt.number - 1]
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
            )
        )
    return result


def status(store: Store, run_id: str | None = None) -> tuple[list[RunView], Session]:
    """Every run's state and progress: per cluster one squeue + one sacct (or qstat) and one read of all
    the run directories' files it needs, whatever the number of runs."""
    runs = [store.run(run_id)] if run_id else store.runs()
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


def pick_attempt(store: Store, run: Run, number: int | None) -> Attempt:
    attempts = store.attempts(run.id)
    if number is None:
        return attempts[-1]
    for attempt in attempts:
        if attempt.number == number:
            return attempt
    raise HpcaiError(f"--attempt: run {run.id} has attempts 1-{len(attempts)}, not {number}.")


def cancel_run(store: Store, run_id: str) -> dict[str, Any]:
    run = store.run(run_id)
    backends = refresh(store, [run])
    attempt = store.attempts(run.id)[-1]
    if JobState(attempt.state).terminal:
        return {"run_id": run.id, "cancelled": False, "state": attempt.state, "message": "already finished"}
    if attempt.job_id is None:
        raise HpcaiError(
            f"run {run.id}: its job id is not known yet (submission in progress). Try again in a few seconds."
        )
    backends.get(run.cluster).scheduler.cancel(attempt.job_id)
    store.add_event(run.id, "cancel", f"cancel requested for job {attempt.job_id}")
    return {"run_id": run.id, "cancelled": True, "job_id": attempt.job_id, "state": attempt.state}


def follow_logs(
    store: Store,
    run_id: str,
    *,
    attempt_number: int | None = None,
    stderr: bool = False,
    follow: bool = False,
    write: Callable[[str], None],
    poll_s: float = 1.0,
    max_wait_s: float | None = None,
) -> str:
    """Write the attempt's log; with `follow`, keep streaming new lines until the job ends. Returns the
    attempt's final state."""
    run = store.run(run_id)
    backends = refresh(store, [run])
    attempt = pick_attempt(store, run, attempt_number)
    backend = backends.get(run.cluster)
    deadline = time.monotonic() + max_wait_s if max_wait_s else None
    while attempt.job_id is None:
        if not follow or (deadline and time.monotonic() > deadline):
            raise HpcaiError(f"run {run.id}: no job id yet, so no log. Try again in a moment, or use -f.")
        time.sleep(poll_s)
        refresh(store, [run], backends)
        attempt = pick_attempt(store, run, attempt.number)
    path = backend.scheduler.log_paths(run.run_dir, attempt.job_id)[1 if stderr else 0]
    offset = 0
    pending = b""
    while True:
        chunk = backend.transport.read_from(path, offset)
        offset += len(chunk)
        pending += chunk
        # Only whole lines are written while following, so a line is never split across reads.
        if b"\n" in pending:
            complete, _, pending = pending.rpartition(b"\n")
            write(complete.decode("utf-8", errors="replace") + "\n")
        if not follow:
            break
        if JobState(attempt.state).terminal:
            final = backend.transport.read_from(path, offset)
            pending += final
            break
        if deadline and time.monotonic() > deadline:
            break
        time.sleep(poll_s)
        refresh(store, [run], backends)
        attempt = pick_attempt(store, run, attempt.number)
    if pending:
        write(pending.decode("utf-8", errors="replace"))
    return attempt.state


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    """One run with its lineage: attempts (why each ended, what it resumed from, LR scale, skipped
    batches), the detector's events, the decisions and the rollback policy."""
    run = store.run(run_id)
    backends = refresh(store, [run])
    transport = backends.get(run.cluster).transport
    (view,) = views(store, [store.run(run.id)], backends)
    params = run.spec.get("parameters", {})
    policy = {k: params[k] for k in params if k.startswith(("max_rollbacks", "rollback_", "spike_guard"))}
    events = [e for e in _jsonl(transport, f"{run.run_dir}/{EVENTS_LOG}") if e.get("status") != "open"]
    return {
        **view.to_json(),
        "attempts": [asdict(a) for a in store.attempts(run.id)],
        "events": events,
        "decisions": _jsonl(transport, f"{run.run_dir}/{DECISIONS_LOG}"),
        "policy": policy,
    }


def complete_checkpoints(transport: Transport, run_dir: str) -> list[int]:
    """Steps of the run's complete checkpoints (those with their completion marker), oldest first."""
    root = f"{run_dir}/checkpoints"
    steps = []
    for name in transport.list_dir(root):
        digits = name.removeprefix("step-")
        if (
            name.startswith("step-")
            and digits.isascii()
            and digits.isdigit()
            and transport.exists(f"{root}/{name}/COMPLETE.json")
        ):
            steps.append(int(name.removeprefix("step-")))
    return sorted(steps)


def resume_run(
    store: Store,
    run_id: str,
    *,
    checkpoint: str | None = None,
    from_step: int | None = None,
    lr_scale: float | None = None,
    skip_batches: int = 0,
) -> dict[str, Any]:
    """Submit a run's next attempt by hand: from a chosen complete checkpoint, with an LR scale and
    batches to skip. Checkpoints newer than the chosen one are dropped when the attempt starts."""
    run = store.run(run_id)
    backends = refresh(store, [run])
    backend = backends.get(run.cluster)
    last = store.attempts(run.id)[-1]
    if not JobState(last.state).terminal:
        raise HpcaiError(
            f"run {run.id} is still {last.state} (job {last.job_id}): `hpcai cancel {run.id}` first, then resume."
        )
    if last.state == JobState.COMPLETED.value and checkpoint is None and from_step is None:
        raise HpcaiError(
            f"run {run.id} completed (attempt {last.number}): resuming from its last checkpoint would do nothing. "
            "To redo a stretch, pass --from-step or --checkpoint; to train further, submit a new run (e.g. with "
            "a larger --set max_steps)."
        )
    steps = complete_checkpoints(backend.transport, run.run_dir)
    if checkpoint is not None:
        name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
        digits = name.removeprefix("step-")
        if not name.startswith("step-") or not digits.isdigit() or int(digits) not in steps:
            raise HpcaiError(
                f"--checkpoint: '{checkpoint}' is not a complete checkpoint of run {run.id}. Complete ones: "
                + (", ".join(f"step-{s:08d}" for s in steps) or "none")
                + "."
            )
        target: int | None = int(name.removeprefix("step-"))
    elif from_step is not None:
        earlier = [s for s in steps if s <= from_step]
        if not earlier:
            raise HpcaiError(f"--from-step: no complete checkpoint at or before step {from_step} (have: {steps}).")
        target = max(earlier)
    else:
        target = steps[-1] if steps else None
    scale = lr_scale if lr_scale is not None else last.lr_scale
    if not math.isfinite(scale) or scale <= 0:
        raise HpcaiError(f"--lr-scale: {scale} must be a positive number (0.5 halves the learning rate).")
    skipped = f"{target}-{target + skip_batches}" if skip_batches and target is not None else None
    number = store.add_attempt(  # claims the next attempt first: a second resume stops here
        run.id,
        resumed_from=f"step-{target:08d}" if target is not None else None,
        lr_scale=scale,
        skipped_batches=skipped,
        reason=None,
        after=last.number,
    )
    decision: dict[str, Any] | None = None
    if target is not None and (checkpoint or from_step is not None or lr_scale is not None or skip_batches):
        decision = {
            "action": "rollback",
            "reason": f"resumed by hand from step {target}",
            "checkpoint_step": target,
            "lr_scale": scale,
            "skip_from": target if skip_batches else None,
            "skip_to": target + skip_batches if skip_batches else None,
            "time": time.time(),
            "by": "hpcai resume",
        }
    walltime = int(run.spec.get("walltime_s", 0)) or None
    try:
        # A person decided to go on: the job script's cap on self-started jobs counts afresh from here.
        backend.transport.write_text(f"{run.run_dir}/{ATTEMPT_COUNT_FILE}", "0\n")
        if decision is not None:
            backend.transport.write_text(f"{run.run_dir}/{ROLLBACK_FILE}", json.dumps(decision, indent=2) + "\n")
            backend.transport.append_text(f"{run.run_dir}/{DECISIONS_LOG}", json.dumps(decision) + "\n")
        job_id = backend.scheduler.submit(f"{run.run_dir}/{SCRIPT_NAME}", run.run_dir, walltime_s=walltime)
    except HpcaiError as exc:
        store.update_attempt(run.id, number, state=JobState.FAILED.value, reason=f"submission failed: {exc}")
        raise
    store.update_attempt(run.id, number, job_id=job_id, state=JobState.PENDING.value)
    store.add_event(run.id, "resume", f"attempt {number} submitted by hand as job {job_id}", decision)
    return {"run_id": run.id, "attempt": number, "job_id": job_id, "checkpoint_step": target, "lr_scale": scale}
