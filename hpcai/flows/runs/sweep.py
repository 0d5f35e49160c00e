"""Sweeps: a grid of a workload's parameters run as one Slurm job array, `--max-parallel` points at once
(`%N`). Each point is a run of its own -- its folder, script, spike guard, attempts and goodput -- planned,
checked and written exactly as a submit's, and task i of the array runs point i's job script (the
scheduler's `array_script`). The store knows a point by its spec's `sweep` record."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcai.backends.schedulers import JobState, script_fragments
from hpcai.backends.session import Session
from hpcai.backends.transport.base import OutcomeUnknown
from hpcai.errors import HpcaiError, ValidationError, closest
from hpcai.flows.plan import SubmitPlan, plan_submit
from hpcai.flows.runs.submission import check_target, make_run_dir, record_run
from hpcai.rundir.runids import new_run_id
from hpcai.spec.jobspec import Overrides
from hpcai.spec.profiles import load_profile, resolve_alias
from hpcai.spec.workloads import load_workload
from hpcai.store.db import Run, Store

_AXIS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.+)")
SWEEP_SCRIPT = "sweep.sh"


def parse_grid(grid: Sequence[str], parameters: dict[str, Any]) -> list[dict[str, str]]:
    """Every combination of the --grid axes (NAME=V1,V2,...), in order; each NAME a parameter of the workload."""
    if not grid:
        raise ValidationError("--grid: give at least one axis, e.g. --grid lr=1e-4,2e-4 (several --grid multiply).")
    axes: dict[str, list[str]] = {}
    for text in grid:
        match = _AXIS.fullmatch(text.strip())
        if match is None:
            raise ValidationError(f"--grid '{text}': write NAME=V1,V2,... (e.g. lr=1e-4,2e-4).")
        name, values = match.group(1), [v.strip() for v in match.group(2).split(",")]
        if name in axes:
            raise ValidationError(f"--grid {name}: given twice; put all its values in one --grid {name}=V1,V2.")
        if name not in parameters:
            raise ValidationError(f"--grid {name}: the workload has no parameter '{name}'.{closest(name, parameters)} "
                                  "`hpcai workloads show WORKLOAD` lists them.")  # fmt: skip
        if any(not v for v in values) or len(set(values)) != len(values):
            raise ValidationError(f"--grid {text}: each value once, none empty.")
        axes[name] = values
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


@dataclass(frozen=True)
class SweepPlan:
    sweep_id: str
    cluster: str
    points: list[dict[str, str]]
    plans: list[SubmitPlan]
    folder: str
    script: str
    parallel: int

    def to_json(self) -> dict[str, Any]:
        return {"sweep": self.sweep_id, "cluster": self.cluster, "points": self.points, "folder": self.folder,
                "parallel": self.parallel, "runs": [p.rendered.job.run_id for p in self.plans],
                "script": self.script}  # fmt: skip


def plan_sweep(
    workload: str, cluster: str, overrides: Overrides, grid: Sequence[str], parallel: int | None
) -> SweepPlan:
    """Every point planned as a submit is (each value checked by the workload's rules), then the array."""
    name = resolve_alias(cluster)
    profile = load_profile(name)
    fragments = script_fragments(profile.scheduler)
    if fragments.max_array_size == 0:
        raise ValidationError(f"sweep: sweeps run as Slurm job arrays; cluster '{name}' uses {profile.scheduler}. "
                              "Submit the points one by one there (hpcai submit --set ...).")  # fmt: skip
    if overrides.run_dir is not None:
        raise ValidationError("sweep: each point gets its own run folder; leave out --run-dir.")
    spec = load_workload(workload).spec
    points = parse_grid(grid, dict(spec.parameters))
    fixed = {a.split("=", 1)[0].strip() for a in overrides.set}
    if fixed & set(points[0]):
        raise ValidationError(f"sweep: {', '.join(sorted(fixed & set(points[0])))} is both --set and --grid; "
                              "give it once.")  # fmt: skip
    if len(points) > fragments.max_array_size:
        raise ValidationError(f"--grid: {len(points)} points, more than a job array may hold here "
                              f"({fragments.max_array_size}); sweep fewer values.")  # fmt: skip
    if parallel is not None and parallel < 1:
        raise ValidationError("--max-parallel: give at least 1.")
    sweep_id = new_run_id(f"sweep-{workload}", overrides.stage)
    plans = []
    for index, point in enumerate(points):
        settings = (*overrides.set, *(f"{k}={v}" for k, v in point.items()))
        point_overrides = overrides.model_copy(update={"set": settings, "run_id": f"{sweep_id}-p{index}"})
        plans.append(plan_submit(workload, name, point_overrides))
    if len({tuple(fragments.resource_lines(p.rendered.script)) for p in plans}) != 1:
        raise ValidationError("--grid: the points ask for different resources (nodes, time, partition); one job "
                              "array needs the same for all. Sweep those values with separate sweeps.")  # fmt: skip
    first = plans[0].rendered.job
    folder = f"{first.run_dir.rsplit('/', 1)[0]}/{sweep_id}"
    width = min(parallel or len(points), len(points))
    script = fragments.array_script(f"hpcai-{sweep_id}"[:64], folder, plans[0].rendered.script,
                                    [p.rendered.job.run_dir for p in plans], width)  # fmt: skip
    return SweepPlan(sweep_id, name, points, plans, folder, script, width)


def submit_sweep(
    plan: SweepPlan, *, force_budget: bool = False, show_progress: bool = True, preflight: bool = True
) -> dict[str, Any]:
    """As a submit prepares (the budget for every point, a maintenance ahead, the job's Python, every point's
    staged paths), then every point's run checked, recorded and written, then the one array queued and each
    point given its task's id (ARRAY_i)."""
    from hpcai.flows.plan import prepare_submission

    first = plan.plans[0]
    job = first.rendered.job
    backend = Session.current().get(job.cluster)
    ready = prepare_submission(first, then=plan.plans[1:], force_budget=force_budget, show_progress=show_progress,
                               preflight=preflight, stage_then=True)  # fmt: skip
    store = Store()
    check_target(backend.transport, plan.folder, {})
    for each in plan.plans:  # every point's id and folder free before any is recorded
        store.check_run_id_free(each.rendered.job.run_id)
        check_target(backend.transport, each.rendered.job.run_dir, {})
    runs: list[Run] = []
    try:
        for index, (point, each) in enumerate(zip(plan.points, plan.plans, strict=True)):
            record = {"sweep": {"id": plan.sweep_id, "index": index, "point": point, "folder": plan.folder}}
            runs.append(record_run(each.rendered, store, backend, extra=record))
    except HpcaiError as exc:
        for run in runs:  # nothing was queued: the points recorded so far did not start either
            store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"sweep not submitted: {exc}")
        raise
    make_run_dir(backend.transport, plan.folder, job.umask)
    script_path = f"{plan.folder}/{SWEEP_SCRIPT}"
    backend.transport.write_text(script_path, plan.script, mode=0o700)
    try:
        array = backend.scheduler.submit(script_path, plan.folder, walltime_s=job.walltime_s, umask=job.umask)
    except OutcomeUnknown as exc:
        for run in runs:
            store.add_event(run.id, "submit-unclear", str(exc))
        raise HpcaiError(
            f"sweep: {exc}. The array may have been queued all the same; nothing is submitted again. Look for job "
            f"hpcai-{plan.sweep_id} in `squeue --me`; its points stay SUBMITTING until then."
        ) from None
    except HpcaiError as exc:
        for run in runs:
            store.update_attempt(run.id, 1, state=JobState.FAILED.value, reason=f"submission failed: {exc}")
        raise
    for index, run in enumerate(runs):
        store.update_attempt(run.id, 1, job_id=f"{array}_{index}", state=JobState.PENDING.value)
        store.add_event(run.id, "submitted", f"task {index} of job array {array} on {job.cluster}")
    return {"sweep": plan.sweep_id, "job_id": array, "cluster": job.cluster, "folder": plan.folder,
            "runs": [r.id for r in runs], "points": plan.points, "parallel": plan.parallel, **ready}  # fmt: skip


def sweep_runs(store: Store, sweep_id: str) -> list[Run]:
    """A sweep's points, in grid order (a unique prefix of the sweep's id is enough)."""
    found: dict[str, list[Run]] = {}
    for run in store.runs():
        record = run.spec.get("sweep")
        if isinstance(record, dict) and str(record.get("id", "")).startswith(sweep_id):
            found.setdefault(str(record["id"]), []).append(run)
    if len(found) != 1:
        raise ValidationError(f"sweep {sweep_id!r}: " + ("no such sweep in this store (`hpcai list` shows runs)."
                              if not found else f"matches {len(found)} sweeps; give more of the id."))  # fmt: skip
    (runs,) = found.values()
    return sorted(runs, key=lambda r: int(r.spec["sweep"].get("index", 0)))


def sweep_status(store: Store, sweep_id: str) -> dict[str, Any]:
    """One row per point (its values, state, step, last loss), and the best point: the lowest last loss among
    the points that completed (or, while none has, that have a loss)."""
    from hpcai.flows.runs.views import status_of

    runs = sweep_runs(store, sweep_id)
    rows, _ = status_of(store, runs)
    table = [{"index": run.spec["sweep"]["index"], "point": run.spec["sweep"]["point"], **row.to_json()}
             for run, row in zip(runs, rows, strict=True)]  # fmt: skip
    done = [r for r in table if r["state"] == JobState.COMPLETED.value and r["loss"] is not None]
    scored = done or [r for r in table if r["loss"] is not None]
    best = min(scored, key=lambda r: r["loss"]) if scored else None
    return {"sweep": runs[0].spec["sweep"]["id"], "cluster": runs[0].cluster, "metric": "loss (last, lower is better)",
            "best": best["run_id"] if best else None, "best_final": bool(done), "points": table}  # fmt: skip


def cancel_sweep(store: Store, sweep_id: str) -> list[dict[str, Any]]:
    """Every point that has not ended is cancelled (its current job: the array's task, or a later job)."""
    from hpcai.flows.runs.control import cancel_run

    return [cancel_run(store, run.id) for run in sweep_runs(store, sweep_id)]


def resume_sweep(store: Store, sweep_id: str) -> list[dict[str, Any]]:
    """Every point that ended other than COMPLETED goes on from its last complete checkpoint, as `hpcai resume`
    does for a run; points still queued or running, and completed ones, are left as they are."""
    from hpcai.flows.runs.control import resume_run
    from hpcai.flows.runs.reconcile import refresh

    runs = sweep_runs(store, sweep_id)
    refresh(store, runs)
    results = []
    for run in runs:
        state = store.attempts(run.id)[-1].state
        if state == JobState.COMPLETED.value or not JobState(state).terminal:
            results.append({"run_id": run.id, "resumed": False, "state": state})
            continue
        results.append({**resume_run(store, run.id), "resumed": True})
    return results
