"""Submitting a run: the target is checked (input paths exist, the run directory is new), the intent is
recorded in the store, the script written and handed to the scheduler."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from hpcai.backends.schedulers import JobState
from hpcai.backends.session import Backend, Session
from hpcai.backends.transport import Transport
from hpcai.backends.transport.base import OutcomeUnknown
from hpcai.errors import EnvironmentFailure, HpcaiError, ValidationError
from hpcai.flows.resolve import RenderedJob
from hpcai.rundir.layout import RunDir
from hpcai.store.db import Run, Store

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


def on_the_cluster(path: str, binds: tuple[str, ...]) -> str:
    """Where a path the job reads is on the cluster's filesystem: under a mounted data image, the image
    (what must exist before queueing), else the path itself."""
    for bind in binds:
        source, destination = bind.split(":")[:2]
        if path == destination or path.startswith(destination + "/"):
            return source
    return path


_MAKE_RUN_DIR = 'umask "$1" && mkdir -p -- "$2/logs" && chmod "$3" -- "$2" "$2/logs"'


def make_run_dir(transport: Transport, run_dir: str, umask: str) -> None:
    """The run folder and its logs, 0700 (0750 shared with the group) whatever the submitter's umask."""
    mode = "0750" if umask == "027" else "0700"
    result = transport.run(["sh", "-c", _MAKE_RUN_DIR, "sh", umask, run_dir, mode], timeout=60)
    if not result.ok:
        raise OSError(0, result.stderr.strip() or f"mkdir failed (exit code {result.returncode})", run_dir)


def submit_run(
    rendered: RenderedJob, store: Store | None = None, command: Sequence[str] | None = None
) -> dict[str, Any]:
    store = store or Store()
    job = rendered.job
    backend = Session.current().get(job.cluster)
    run = record_run(rendered, store, backend)
    try:
        job_id = backend.scheduler.submit(
            RunDir(job.run_dir).script, job.run_dir, walltime_s=job.walltime_s, umask=job.umask, command=command
        )
    except OutcomeUnknown as exc:
        job_id = settle_unclear_submission(store, backend, run, 1, exc)
    except HpcaiError as exc:
        store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"submission failed: {exc}")
        store.add_event(run.id, "submit-failed", str(exc))
        raise
    store.update_attempt(run.id, 1, job_id=job_id, state=JobState.PENDING.value)
    store.add_event(run.id, "submitted", f"job {job_id} on {job.cluster}")
    return {"run_id": run.id, "job_id": job_id, "cluster": job.cluster, "run_dir": job.run_dir}


def record_run(rendered: RenderedJob, store: Store, backend: Backend, extra: dict[str, Any] | None = None) -> Run:
    """Everything before the scheduler hears of the run: its inputs and new folder checked on the target, the
    intent recorded in the store (SUBMITTING), the folder written with its script and spec. A folder that
    cannot be written leaves the run FAILED and raises EnvironmentFailure. `extra`: more for the run's spec
    (a sweep's point)."""
    job = rendered.job
    inputs = {
        key: on_the_cluster(str(job.parameters[key]), job.binds)
        for key in rendered.workload.spec.path_parameters()
        if str(job.parameters.get(key, "")).startswith("/")
    }
    store.check_run_id_free(job.run_id)  # the user's own mistake is named before the folder's
    check_target(backend.transport, job.run_dir, inputs)
    program = rendered.workload
    if program.spec.app is not None:  # the user's own program: what `hpcai move` plans it again from
        extra = {**(extra or {}), "program": {"directory": str(program.directory),
                                              "spec": program.spec.model_dump(mode="json")}}  # fmt: skip
    run = Run(
        id=job.run_id,
        workload=job.workload,
        cluster=job.cluster,
        stage=job.stage,
        run_dir=job.run_dir,
        spec={**job.model_dump(), **(extra or {})},
        created=time.time(),
        state=JobState.SUBMITTING.value,
    )
    # The intent goes into the store before the scheduler hears of it: a CLI killed after sbatch but
    # before recording the id is reconciled by the next `status` (job_id file, or the job's work dir).
    store.create_run_checked(run)
    transport = backend.transport
    try:
        make_run_dir(transport, job.run_dir, job.umask)
        private = 0o640 if job.share_with_group else 0o600
        transport.write_text(RunDir(job.run_dir).script, rendered.script, mode=private | 0o100)
        transport.write_text(RunDir(job.run_dir).spec, json.dumps(run.spec, indent=2) + "\n", mode=private)
    except (HpcaiError, OSError) as exc:
        reason = str(exc) if isinstance(exc, HpcaiError) else f"{exc.strerror or exc} ({exc.filename or job.run_dir})"
        store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"submission failed: {reason}")
        store.add_event(run.id, "submit-failed", reason)
        if isinstance(exc, HpcaiError):
            raise
        raise EnvironmentFailure(
            f"submit: writing the run directory failed: {reason}. Nothing was queued; the run is recorded "
            "as FAILED. Free space or fix permissions, then submit again."
        ) from None
    return run


# How long an attempt may stay SUBMITTING with no job found before it is declared never submitted.
LOST_SUBMISSION_S = 300


def settle_unclear_submission(store: Store, backend: Backend, run: Run, number: int, exc: Exception) -> str:
    """sbatch/qsub may have queued the job although it reported a failure (a controller time-out, a link
    that dropped while it ran). Never submitted again blindly: the scheduler is asked for a job working in
    the run directory that no earlier attempt had; found, it is this attempt's; not found, the attempt
    stays SUBMITTING for `status` to settle (it keeps asking, and declares the submission lost after
    LOST_SUBMISSION_S, when `hpcai resume` may submit again)."""
    store.add_event(run.id, "submit-unclear", str(exc))
    known = {a.job_id for a in store.attempts(run.id) if a.job_id}
    try:
        found = backend.scheduler.find_jobs([run.run_dir]).get(run.run_dir)
    except HpcaiError:
        found = None
    if found is not None and found not in known:
        store.update_attempt(run.id, number, job_id=found, state=JobState.PENDING.value)
        store.add_event(run.id, "reconciled", f"job {found} was queued although the scheduler reported: {exc}")
        return found
    raise OutcomeUnknown(
        f"submit: {exc}. The job may have been queued all the same, so nothing is submitted again: run "
        f"{run.id} stays SUBMITTING, and `hpcai status {run.id}` asks the scheduler for its job and records it. "
        f"If none appears within {LOST_SUBMISSION_S // 60} minutes the submission is marked as lost; then "
        f"`hpcai resume {run.id}` submits it."
    ) from None


WAITS_FOR = "waits-for"  # the event naming a pipeline stage's previous run (its message is that run's id)


def record_waiting_run(rendered: RenderedJob, after: Run, store: Store | None = None) -> dict[str, Any]:
    """A pipeline's later stage: checked and written like any run, recorded as WAITING, and named in the
    previous run's directory so that run's job submits it when it completes (see the job script). Its
    `model_path` is what the previous stage will export, so only that input may be missing now."""
    store = store or Store()
    job = rendered.job
    backend = Session.current().get(job.cluster)
    produced = f"{after.run_dir.rstrip('/')}/model"
    inputs = {
        key: str(job.parameters[key])
        for key in rendered.workload.spec.path_parameters()
        if str(job.parameters.get(key, "")).startswith("/") and str(job.parameters[key]) != produced
    }
    store.check_run_id_free(job.run_id)
    check_target(backend.transport, job.run_dir, inputs)
    run = Run(
        id=job.run_id, workload=job.workload, cluster=job.cluster, stage=job.stage, run_dir=job.run_dir,
        spec=job.model_dump(), created=time.time(), state=JobState.WAITING.value,
    )  # fmt: skip
    store.create_run_checked(run)
    store.add_event(run.id, WAITS_FOR, after.id)
    store.update_attempt(run.id, 1, waiting=f"waits for run {after.id} ({after.stage or after.workload}) to complete")
    transport = backend.transport
    try:
        make_run_dir(transport, job.run_dir, job.umask)
        private = 0o640 if job.share_with_group else 0o600
        transport.write_text(RunDir(job.run_dir).script, rendered.script, mode=private | 0o100)
        transport.write_text(RunDir(job.run_dir).spec, json.dumps(run.spec, indent=2) + "\n", mode=private)
        transport.write_text(RunDir(after.run_dir).next_stage, job.run_dir + "\n", mode=private)
    except OSError as exc:
        reason = f"{exc.strerror or exc} ({exc.filename or job.run_dir})"
        store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"submission failed: {reason}")
        raise EnvironmentFailure(
            f"submit: writing the pipeline's next stage failed: {reason}. Run {after.id} was submitted; submit the "
            f"next stage by hand once it completes: hpcai submit {job.workload} --stage {job.stage} --from {after.id}"
        ) from None
    return {"run_id": run.id, "job_id": None, "cluster": job.cluster, "run_dir": job.run_dir, "after": after.id}
