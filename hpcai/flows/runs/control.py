"""Steering runs: cancel, follow logs, resume from a chosen checkpoint."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from hpcai.backends.schedulers import JobState
from hpcai.backends.transport import Transport
from hpcai.backends.transport.base import OutcomeUnknown
from hpcai.errors import HpcaiError
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.submission import settle_unclear_submission
from hpcai.rundir.layout import RunDir
from hpcai.store.db import Attempt, Run, Store

LOG_CHUNK = 1 << 20  # bytes of a log read (and held) at a time by `logs`
ERROR_TAIL_LINES, ERROR_TAIL_BYTES = 40, 64 << 10  # the error log's end that `logs` adds after a failure
_FAILED_ENDS = {s.value for s in (JobState.FAILED, JobState.NODE_FAIL, JobState.OUT_OF_MEMORY, JobState.TIMEOUT,
                                  JobState.BOOT_FAIL, JobState.DEADLINE, JobState.PREEMPTED)}  # fmt: skip


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
    if attempt.job_id is None and attempt.state == JobState.WAITING.value:
        # a pipeline stage not submitted yet: the previous stage's job must no longer submit it
        from hpcai.flows.runs.submission import WAITS_FOR
        from hpcai.rundir.layout import RunDir

        previous = next((e.message for e in store.events(run.id) if e.kind == WAITS_FOR), None)
        if previous is not None:
            backends.get(run.cluster).transport.run(["rm", "-f", "--", RunDir(store.run(previous).run_dir).next_stage])
        store.update_attempt(run.id, attempt.number, state=JobState.CANCELLED.value, reason="cancelled while waiting")
        store.add_event(run.id, "cancel", "cancelled before its job was submitted")
        return {"run_id": run.id, "cancelled": True, "job_id": None, "state": JobState.CANCELLED.value}
    if attempt.job_id is None:
        raise HpcaiError(
            f"run {run.id}: its job id is not known yet (submission in progress). Try again in a few seconds."
        )
    backends.get(run.cluster).scheduler.cancel(attempt.job_id)
    store.add_event(run.id, "cancel", f"cancel requested for job {attempt.job_id}")
    if attempt.reason is None:  # the scheduler says only CANCELLED; who asked is known here
        store.update_attempt(run.id, attempt.number, reason="cancelled with hpcai cancel")
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
    cluster, run_dir = attempt.home(run)  # an attempt from before a move: where it ran
    backend = backends.get(cluster)
    deadline = time.monotonic() + max_wait_s if max_wait_s else None
    while attempt.job_id is None:
        if not follow or (deadline and time.monotonic() > deadline):
            raise HpcaiError(f"run {run.id}: no job id yet, so no log. Try again in a moment, or use -f.")
        time.sleep(poll_s)
        refresh(store, [run], backends)
        attempt = pick_attempt(store, run, attempt.number)
    path = backend.scheduler.log_paths(run_dir, attempt.job_id)[1 if stderr else 0]
    offset = 0
    pending = b""

    def drain() -> None:
        """What the log holds now, LOG_CHUNK bytes at a time: memory stays constant whatever its size."""
        nonlocal offset, pending
        while True:
            chunk = backend.transport.read_from(path, offset, LOG_CHUNK)
            offset += len(chunk)
            pending += chunk
            # Only whole lines are written, so a line is never split across reads; a line longer than a
            # chunk goes out in pieces rather than growing without bound.
            if b"\n" in pending:
                complete, _, pending = pending.rpartition(b"\n")
                write(complete.decode("utf-8", errors="replace") + "\n")
            elif len(pending) >= LOG_CHUNK:
                write(pending.decode("utf-8", errors="replace"))
                pending = b""
            if len(chunk) < LOG_CHUNK:
                return

    while True:
        drain()
        if not follow or JobState(attempt.state).terminal:
            if follow:
                drain()  # written between the last read and the end
            break
        if deadline and time.monotonic() > deadline:
            break
        time.sleep(poll_s)
        refresh(store, [run], backends)
        attempt = pick_attempt(store, run, attempt.number)
    if pending:
        write(pending.decode("utf-8", errors="replace"))
    if not stderr and attempt.state in _FAILED_ENDS and attempt.job_id is not None:
        # Why it failed is in the error log, not here: its end follows, so `logs RUN` is never silent on it.
        error_log = backend.scheduler.log_paths(run_dir, attempt.job_id)[1]
        tail = backend.transport.tail(error_log, ERROR_TAIL_BYTES).decode("utf-8", errors="replace")
        lines = tail.splitlines()[-ERROR_TAIL_LINES:]
        if lines and error_log != path:
            write(f"--- the attempt ended {attempt.state}; the end of its error log ({error_log}), all of it with "
                  f"--stderr ---\n")  # fmt: skip
            write("\n".join(lines) + "\n")
    return attempt.state


def complete_checkpoints(transport: Transport, run_dir: str) -> list[int]:
    """Steps of the run's complete checkpoints (those with their completion marker), oldest first."""
    root = RunDir(run_dir).checkpoints
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
        backend.transport.write_text(RunDir(run.run_dir).attempt_count, "0\n")
        _drop_ended_lease(backend.transport, run, last)
        if decision is not None:
            backend.transport.write_text(RunDir(run.run_dir).rollback, json.dumps(decision, indent=2) + "\n")
            backend.transport.append_text(RunDir(run.run_dir).decisions, json.dumps(decision) + "\n")
        umask = "027" if run.spec.get("share_with_group") is True else "077"
        job_id = backend.scheduler.submit(RunDir(run.run_dir).script, run.run_dir, walltime_s=walltime, umask=umask)
    except OutcomeUnknown as exc:
        job_id = settle_unclear_submission(store, backend, run, number, exc)
    except HpcaiError as exc:
        store.update_attempt(run.id, number, state=JobState.FAILED.value, reason=f"submission failed: {exc}")
        raise
    store.update_attempt(run.id, number, job_id=job_id, state=JobState.PENDING.value)
    store.add_event(run.id, "resume", f"attempt {number} submitted by hand as job {job_id}", decision)
    return {"run_id": run.id, "attempt": number, "job_id": job_id, "checkpoint_step": target, "lr_scale": scale}


def _drop_ended_lease(transport: Transport, run: Run, last: Attempt) -> None:
    """The run lease a job that has ended left behind (killed before its exit trap ran, as a cancel can): the
    next attempt would wait for it to go stale (up to two minutes) before training. Only a lease naming the
    last attempt's own job, which the scheduler says has ended, is removed; any other is left to the job."""
    lease = RunDir(run.run_dir).lease
    holder = (transport.read_text(lease) or "").split()
    if last.job_id is not None and holder and holder[0] == last.job_id:
        transport.run(["rm", "-f", "--", lease], timeout=30)
