"""Moving a run to another cluster (`hpcai move RUN --to CLUSTER`): one lineage across sites.

The run's newest complete checkpoint (or a chosen one) is carried to a new folder on the other cluster
through this machine, verified at both ends (hpcai.backends.staging.carry); its history (attempt log,
metrics, timeline, events, decisions) goes with it, so `status`, the goodput account and `plot` read one
run wherever it now lives. The job is planned for the new cluster as a submission is -- memory estimate,
budget, maintenance, pre-flight, staging of the code -- at the **same global batch**: the per-device batch is
the old global batch over the new number of processes, so the data order goes on where it stopped. The
runtime reshards the checkpoint at load (torch.distributed.checkpoint), so the number of GPUs may change.

Everything that can be refused is refused before a byte moves: a run still queued or running, no complete
checkpoint, a checkpoint another workload wrote, a global batch the new processes cannot share, a job the
new GPUs cannot hold. The store changes only once the new folder is complete (a killed move leaves the run
where it was; its half-written folder is marked and cleared by the next move); the attempt is recorded
before the scheduler is asked, as for any submission.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hpcai.backends.schedulers import JobState
from hpcai.backends.session import Session
from hpcai.backends.transport import Transport
from hpcai.backends.transport.base import OutcomeUnknown
from hpcai.errors import HpcaiError, NotFoundError, ValidationError
from hpcai.flows.plan import SubmitPlan, plan_submit, prepare_submission
from hpcai.flows.runs.control import complete_checkpoints
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.submission import make_run_dir, settle_unclear_submission
from hpcai.rundir.contract import ATTEMPTS_LOG, DECISIONS_LOG, EVENTS_LOG, LATEST_FILE, TIMELINE_LOG
from hpcai.rundir.layout import METRICS_LOG, RunDir
from hpcai.rundir.visible import visible_line
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Run, Store

if TYPE_CHECKING:
    from hpcai.spec.workloads import Workload

MARKER = "COMPLETE.json"  # a complete checkpoint's marker (hpcai.runtime.checkpoint; not imported: torch)
MOVING = "MOVING"  # in a new folder until the move is recorded: a folder holding it is a killed move's
BATCH = "per_device_batch_size"
# The run's history, carried so the new home holds all of it (read by status, goodput and plot).
HISTORY = (ATTEMPTS_LOG, METRICS_LOG, TIMELINE_LOG, EVENTS_LOG, DECISIONS_LOG)


@dataclass(frozen=True)
class MoveOptions:
    """What the user typed: where to, with what resources, and changed parameters."""

    to: str
    nodes: int | None = None
    gpus_per_node: int | None = None
    time: str | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    container: str | None = None
    env: tuple[str, ...] = ()
    set: tuple[str, ...] = ()
    checkpoint: str | None = None


@dataclass(frozen=True)
class MovePlan:
    run: Run
    submit: SubmitPlan
    step: int
    source_checkpoint: str
    relative: str  # in the run folder: checkpoints/step-N, or the program's own (out/checkpoint-40)
    global_batch: int | None
    notes: tuple[str, ...] = field(default=())

    @property
    def target(self) -> str:
        return self.submit.rendered.job.cluster

    def to_json(self) -> dict[str, Any]:
        job = self.submit.rendered.job
        return {
            "run_id": self.run.id,
            "from": {
                "cluster": self.run.cluster,
                "run_dir": self.run.run_dir,
                "nodes": self.run.spec.get("nodes"),
                "processes": _processes(self.run.spec),
            },
            "to": {"cluster": job.cluster, "run_dir": job.run_dir, "nodes": job.nodes, "processes": job.num_processes},
            "checkpoint": self.source_checkpoint,
            "step": self.step,
            "global_batch": self.global_batch,
            "per_device_batch_size": job.parameters.get(BATCH),
            "notes": list(self.notes),
            "plan": self.submit.to_json(),
        }


def _processes(spec: dict[str, Any]) -> int | None:
    nodes, per_node = spec.get("nodes"), spec.get("processes_per_node")
    ok = isinstance(nodes, int) and isinstance(per_node, int) and nodes > 0 and per_node > 0
    return nodes * per_node if ok else None  # type: ignore[operator]


def _assignment(key: str, value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"{key}={text}"


def plan_move(store: Store, run_id: str, options: MoveOptions) -> MovePlan:
    """Everything the move will do, checked; nothing carried, written or submitted."""
    from hpcai.spec.profiles import resolve_alias

    run = store.run(run_id)
    backends = refresh(store, [run])
    target = resolve_alias(options.to)
    if target == run.cluster:
        raise ValidationError(
            f"--to: run {run.id} is on {target} already: to go on there, `hpcai resume {run.id}`. `move` takes a run "
            "to another cluster."
        )
    last = store.attempts(run.id)[-1]
    if not JobState(last.state).terminal:
        raise ValidationError(
            f"run {run.id} is {last.state} (job {last.job_id or 'not submitted yet'}) on {run.cluster}: a run moves "
            f"from its last checkpoint once nothing of it runs. `hpcai cancel {run.id}` first (a running job "
            "checkpoints as it stops), then move."
        )
    workload = _workload_of(run)
    old = run.spec.get("parameters")
    if not isinstance(old, dict):
        raise ValidationError(f"run {run.id}: its recorded spec has no parameters (written by another tool?).")
    typed = {a.split("=", 1)[0].strip() for a in options.set}
    assignments = [_assignment(k, v) for k, v in old.items() if k in workload.spec.parameters and k not in typed]
    assignments += list(options.set)
    overrides = Overrides(
        nodes=options.nodes, gpus_per_node=options.gpus_per_node, time=options.time, partition=options.partition,
        qos=options.qos, account=options.account, container=options.container, stage=run.stage, env=options.env,
        set=tuple(assignments), run_id=run.id, run_dir=None,
    )  # fmt: skip
    notes: list[str] = []
    global_batch = _global_batch(run)
    if global_batch is not None and BATCH in workload.spec.parameters and BATCH not in typed:
        # The new number of processes first (at the smallest batch: only the count matters here), then the
        # per-device batch that keeps the global batch.
        probe = plan_submit(workload, target, _with(overrides, {BATCH: 1})).rendered.job
        processes = probe.num_processes
        if global_batch % processes:
            fitting = [n for n in range(1, 65) if global_batch % (n * probe.processes_per_node) == 0][:6]
            raise ValidationError(
                f"-N: the run's global batch is {global_batch} samples per step, which {processes} processes on "
                f"{target} cannot share equally. Use -N {' or -N '.join(map(str, fitting)) or '1'} (global batch kept: "
                "the data order and the learning rate schedule go on unchanged), or --set "
                f"{BATCH}=N to change the global batch."
            )
        overrides = _with(overrides, {BATCH: global_batch // processes})
    elif BATCH in typed and global_batch is not None:
        notes.append(f"--set {BATCH}: the global batch changes from {global_batch}; the run's data order and loss "
                     "curve do not continue exactly.")  # fmt: skip
    first = plan_submit(workload, target, overrides)
    run_dir = _new_folder(store, run, first.rendered.job.run_dir, target)
    plan = first if run_dir == first.rendered.job.run_dir else plan_submit(
        workload, target, overrides.model_copy(update={"run_dir": run_dir})
    )  # fmt: skip
    source_transport = backends.get(run.cluster).transport
    app = workload.spec.app
    if app is None:
        step, source = _checkpoint(source_transport, run, options.checkpoint)
        relative = f"checkpoints/step-{step:08d}"
    else:
        if app.checkpoint_pattern is None:
            raise ValidationError(
                f"run {run.id}: your program was submitted without --checkpoint-pattern, so hpcai cannot tell which "
                "files are its checkpoints; nothing was moved. Copy the checkpoint yourself and submit it there."
            )
        relative = _program_checkpoint(source_transport, run, app.checkpoint_pattern, options.checkpoint)
        source = f"{run.run_dir.rstrip('/')}/{relative}"
        step = _last_number(relative)
        notes.append("your program's own arguments set its batch: with another number of processes its global "
                     "batch (and data order) may change, and its checkpoint must load on the new number.")  # fmt: skip
    return MovePlan(run=run, submit=plan, step=step, source_checkpoint=source, relative=relative,
                    global_batch=global_batch, notes=tuple(notes))  # fmt: skip


def _workload_of(run: Run) -> Workload:
    """The run's workload as it was submitted: a named one, or the user's own program from what the run
    recorded of it (its folder here and its spec)."""
    from pydantic import ValidationError as Invalid

    from hpcai.spec.workloads import Workload, WorkloadSpec, load_workload

    program = run.spec.get("program")
    if isinstance(program, dict):
        directory = Path(str(program.get("directory", "")))
        try:
            spec = WorkloadSpec.model_validate(program.get("spec"))
        except Invalid:
            raise ValidationError(f"run {run.id}: its recorded program is not readable; nothing was moved.") from None
        if not directory.is_dir():
            raise ValidationError(
                f"run {run.id}: your program's folder {directory} is not on this machine: move the run from the "
                "machine you submitted it from (its code is staged from there)."
            )
        return Workload(name=run.workload, directory=directory, spec=spec)
    try:
        return load_workload(run.workload)
    except NotFoundError:
        raise ValidationError(
            f"run {run.id} runs '{run.workload}', which hpcai does not find here (your own program, submitted by an "
            "older hpcai that did not record it?): copy its checkpoint folder to the other cluster and submit it "
            "there with --resume-args."
        ) from None


# argv: run folder, pattern, chosen or "". Prints the matches and the chosen one (relative to the folder):
# the newest as the job script picks it (the last number in the name, then the newest), or the named one.
_NEWEST_PY = r"""
import glob, json, os, re, sys
root, pattern, chosen = sys.argv[1], sys.argv[2], sys.argv[3]
def number(path):
    found = re.findall(r"[0-9]+", os.path.basename(path))
    return int(found[-1]) if found else -1
matches = [m for m in glob.glob(os.path.join(root, pattern)) if not os.path.basename(m).startswith(".")]
names = {os.path.relpath(m, root): m for m in matches}
if chosen:
    picked = [m for rel, m in names.items() if chosen in (rel, os.path.basename(m))]
else:
    picked = sorted(matches, key=lambda m: (number(m), os.path.getmtime(m)))[-1:]
out = {"matches": sorted(names)}
if picked:
    first = picked[0]
    out.update(chosen=os.path.relpath(first, root), folder=os.path.isdir(first) and not os.path.islink(first))
print(json.dumps(out))
"""


def _program_checkpoint(transport: Transport, run: Run, pattern: str, chosen: str | None) -> str:
    """The program's newest checkpoint, or `chosen`, relative to the run folder: a folder inside it."""
    result = transport.run(["python3", "-c", _NEWEST_PY, run.run_dir, pattern, chosen or ""], timeout=120)
    try:
        found = json.loads(result.stdout) if result.ok else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise ValidationError(f"run {run.id}: cannot look for checkpoints in {run.run_dir} on {run.cluster} "
                              f"({visible_line(result.stderr.strip()[-300:])}); nothing was moved.")  # fmt: skip
    relative = found.get("chosen")
    if not isinstance(relative, str):
        which = f"--checkpoint '{chosen}' matches none of" if chosen else "no checkpoint matches"
        listed = ", ".join(visible_line(str(m)) for m in found.get("matches", [])[:8]) or "none"
        raise ValidationError(f"run {run.id}: {which} {pattern} in {run.run_dir} (checkpoints: {listed}); nothing "
                              "was moved.")  # fmt: skip
    if relative.startswith("/") or ".." in PurePosixPath(relative).parts or visible_line(relative) != relative:
        raise ValidationError(f"run {run.id}: the checkpoint {visible_line(relative)!r} is not inside its run folder.")
    if found.get("folder") is not True:
        raise ValidationError(
            f"run {run.id}: its checkpoint {relative} is a file (or a link), not a folder: `move` carries checkpoint "
            "folders (HF Trainer's checkpoint-N, accelerate's save_state). Copy it yourself and submit it there."
        )
    return relative


def _last_number(name: str) -> int:
    numbers = re.findall(r"[0-9]+", name.rsplit("/", 1)[-1])
    return int(numbers[-1]) if numbers else 0


def _with(overrides: Overrides, values: dict[str, Any]) -> Overrides:
    kept = [a for a in overrides.set if a.split("=", 1)[0].strip() not in values]
    return overrides.model_copy(update={"set": (*kept, *(_assignment(k, v) for k, v in values.items()))})


def _global_batch(run: Run) -> int | None:
    parameters = run.spec.get("parameters") or {}
    per_device, processes = parameters.get(BATCH), _processes(run.spec)
    if isinstance(per_device, int) and not isinstance(per_device, bool) and per_device > 0 and processes:
        return per_device * processes
    return None


def _new_folder(store: Store, run: Run, default: str, target: str) -> str:
    """The run's folder on the target: the profile's usual one, or one beside it when that holds something
    (the run lived there before, another run does, or a move was killed while it filled it: such a folder
    holds MOVING, and is left for you to remove, never taken over)."""
    transport = Session.current().get(target).transport
    taken = {a.home(run) for a in store.attempts(run.id)} | {(r.cluster, r.run_dir) for r in store.runs(cluster=target)}
    base, number = default.rstrip("/"), len(store.attempts(run.id)) + 1
    candidates = [base, f"{base}.{number}", *(f"{base}.{number}-{k}" for k in range(2, 10))]
    for candidate in candidates:
        if (target, candidate) not in taken and not transport.exists(candidate):
            return candidate
    raise ValidationError(
        f"move: {base}, {base}.{number} and the folders beside them on {target} all hold files; nothing was moved. "
        "Remove what you no longer need there (a folder holding MOVING is a killed move's), then move again."
    )


def _checkpoint(transport: Transport, run: Run, chosen: str | None) -> tuple[int, str]:
    """The checkpoint to carry (the newest complete one, or `chosen`), checked: complete, and written by this
    run's workload."""
    steps = complete_checkpoints(transport, run.run_dir)
    if chosen is not None:
        name = chosen.rstrip("/").rsplit("/", 1)[-1]
        digits = name.removeprefix("step-")
        if not (name.startswith("step-") and digits.isascii() and digits.isdigit() and int(digits) in steps):
            raise ValidationError(
                f"--checkpoint: '{chosen}' is not a complete checkpoint of run {run.id}. Complete ones: "
                + (", ".join(f"step-{s:08d}" for s in steps) or "none")
                + "."
            )
        step = int(digits)
    elif steps:
        step = steps[-1]
    else:
        raise ValidationError(
            f"run {run.id} has no complete checkpoint on {run.cluster} ({RunDir(run.run_dir).checkpoints}): there is "
            f"nothing to carry. Submit the run afresh on the other cluster instead."
        )
    folder = f"{RunDir(run.run_dir).checkpoints}/step-{step:08d}"
    text = transport.read_text(f"{folder}/{MARKER}") or ""
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or marker.get("step") != step:
        raise ValidationError(f"{folder}/{MARKER}: not the marker of step {step} (written by someone else?); pick "
                              "another checkpoint with --checkpoint.")  # fmt: skip
    wrote = marker.get("workload")
    if wrote is not None and wrote != run.workload:
        raise ValidationError(
            f"{folder}: written by workload '{wrote}', not by run {run.id}'s '{run.workload}': its weights would "
            "not load into this model. Pick another checkpoint with --checkpoint."
        )
    return step, folder


def move_run(store: Store, plan: MovePlan, *, force_budget: bool = False, show_progress: bool = True,
             preflight: bool = True) -> dict[str, Any]:  # fmt: skip
    """Carry and submit what `plan_move` planned."""
    from hpcai.backends.staging.carry import folder_digest

    run, job = plan.run, plan.submit.rendered.job
    session = Session.current()
    source, target = session.get(run.cluster).transport, session.get(job.cluster).transport
    last = store.attempts(run.id)[-1]
    ready = prepare_submission(plan.submit, force_budget=force_budget, show_progress=show_progress,
                               preflight=preflight)  # fmt: skip
    expected = folder_digest(source, plan.source_checkpoint, where=run.cluster)
    folder = RunDir(job.run_dir)
    _claim_folder(target, job.run_dir, job.cluster)
    make_run_dir(target, job.run_dir, job.umask)
    try:
        spec = _fill_folder(plan, expected, source, target, show_progress=show_progress)
        number = store.move_run(run.id, cluster=job.cluster, run_dir=job.run_dir, spec=spec,
                                resumed_from=plan.relative.rsplit("/", 1)[-1], after=last.number)  # fmt: skip
    except BaseException:
        # Nothing was recorded: the run stays where it was, and its half-made new folder goes (a move killed
        # outright leaves MOVING in it, and the next move clears it).
        target.run(["rm", "-rf", "--", job.run_dir], timeout=600)
        raise
    target.run(["rm", "-f", "--", folder.path(MOVING)], timeout=60)
    moved_run = store.run(run.id)
    backend = session.get(job.cluster)
    try:
        job_id = backend.scheduler.submit(folder.script, job.run_dir, walltime_s=job.walltime_s, umask=job.umask,
                                          command=plan.submit.submit_command)  # fmt: skip
    except OutcomeUnknown as exc:
        job_id = settle_unclear_submission(store, backend, moved_run, number, exc)
    except HpcaiError as exc:
        store.update_attempt(run.id, number, state=JobState.FAILED.value, reason=f"submission failed: {exc}")
        raise
    name = plan.relative.rsplit("/", 1)[-1]
    store.update_attempt(run.id, number, job_id=job_id, state=JobState.PENDING.value)
    store.add_event(run.id, "submitted", f"job {job_id} on {job.cluster} (moved from {run.cluster} at {name})")
    carried = sum(size for size, _ in expected.values())
    return {"run_id": run.id, "attempt": number, "job_id": job_id, "cluster": job.cluster, "run_dir": job.run_dir,
            "checkpoint": name, "files": len(expected), "bytes": carried, "budget": ready["budget"],
            "maintenance": ready["maintenance"]}  # fmt: skip


def _claim_folder(transport: Transport, run_dir: str, cluster: str) -> None:
    """The new folder, made by this move alone (`mkdir` without -p fails when it exists): two moves of one run
    at once cannot fill, or remove, the same folder."""
    made = transport.run(["sh", "-c", 'mkdir -p -- "$(dirname -- "$1")" && mkdir -m 700 -- "$1"', "sh", run_dir],
                         timeout=60)  # fmt: skip
    if not made.ok:
        raise ValidationError(
            f"move: {run_dir} on {cluster} appeared meanwhile ({made.stderr.strip() or 'mkdir failed'}): another move "
            "of this run? Nothing was moved; see `hpcai status`, then move again."
        )


def _fill_folder(plan: MovePlan, expected: dict[str, tuple[int, str]], source: Transport, target: Transport, *,
                 show_progress: bool) -> dict[str, Any]:  # fmt: skip
    """The new folder made complete: the checkpoint carried and put in place, the history, script and spec.
    Returns the run's new spec."""
    from hpcai.backends.staging.carry import carry_folder
    from hpcai.flows.progress import reporter

    run, job = plan.run, plan.submit.rendered.job
    folder = RunDir(job.run_dir)
    target.write_text(folder.path(MOVING), f"{run.id} from {run.cluster}\n")
    parent, _, name = plan.relative.rpartition("/")
    place = folder.path(parent) if parent else folder.root.rstrip("/")
    total = sum(size for size, _ in expected.values())
    with reporter(show_progress).counter(f"carrying {name} to {job.cluster}", total, eta=True) as advance:
        carry_folder(source, plan.source_checkpoint, expected, target, f"{place}/.partial-{name}",
                     source_name=run.cluster, target_name=job.cluster, progress=advance)  # fmt: skip
    moved = target.run(["mv", "--", f"{place}/.partial-{name}", f"{place}/{name}"], timeout=60)
    if not moved.ok:
        raise HpcaiError(f"move: could not put the checkpoint in place on {job.cluster}: {moved.stderr.strip()}")
    if plan.submit.rendered.workload.spec.app is None:  # hpcai's runtime resumes from `latest`
        target.write_text(f"{folder.checkpoints}/{LATEST_FILE}", name + "\n")
    private = 0o640 if job.share_with_group else 0o600
    _carry_history(source, RunDir(run.run_dir), target, folder, run, private)
    moved_from = [*run.spec.get("moved_from", []), {"cluster": run.cluster, "run_dir": run.run_dir,
                                                    "step": plan.step}]  # fmt: skip
    spec = {**job.model_dump(), **{k: v for k, v in run.spec.items() if k in ("sweep", "point", "program")},
            "moved_from": moved_from}  # fmt: skip
    target.write_text(folder.script, plan.submit.rendered.script, mode=private | 0o100)
    target.write_text(folder.spec, json.dumps(spec, indent=2) + "\n", mode=private)
    return spec


def _carry_history(source: Transport, old: RunDir, target: Transport, new: RunDir, run: Run, mode: int) -> None:
    """The run's history files into the new folder. The attempt log's records of jobs on the old cluster get
    its name (`cluster:job`) and node count: job ids are per cluster, and goodput counts node-hours per job."""
    nodes = run.spec.get("nodes")
    spares = run.spec.get("spare_nodes")
    allocated = (nodes if isinstance(nodes, int) else 1) + (spares if isinstance(spares, int) else 0)
    for name in HISTORY:
        text = source.read_text(old.path(name))
        if not text:
            continue
        if name == ATTEMPTS_LOG:
            lines = []
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                if "cluster" not in record:
                    for key in ("job_id", "after"):
                        if record.get(key) not in (None, ""):
                            record[key] = f"{run.cluster}:{record[key]}"
                    record.update(cluster=run.cluster, nodes=allocated)
                lines.append(json.dumps(record))
            text = "\n".join(lines) + "\n"
        target.write_text(new.path(name), text if text.endswith("\n") else text + "\n", mode=mode)
