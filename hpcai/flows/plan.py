"""Submit as a value: `plan_submit` works out everything a submission will do -- which local paths are
staged and where they will be on the cluster, the resolved job, the exact script, the submit command and
what the run can cost -- from local files alone; `execute` performs exactly that plan. `render`,
`submit --dry-run` and `submit` all go through `plan_submit`, so what is printed is what is submitted.

Staged paths can be known before anything moves because the store is content-addressed: a tree's path
on the cluster is the hash of its manifest (`staging.manifest.plan_stage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.backends.session import Session
from hpcai.errors import HpcaiError, ValidationError
from hpcai.flows.resolve import RenderedJob, render_job, resolve_job
from hpcai.rundir.layout import RunDir
from hpcai.spec.jobspec import Overrides
from hpcai.spec.memory import MemoryEstimate
from hpcai.spec.workloads import Workload

STAGED_PARAMETERS = ("data", "model_path")  # --set values that name local paths to stage
DATA_MOUNT = "/hpcai-data"  # where the container mounts data staged as SquashFS images (pack_data: squashfs)


@dataclass(frozen=True)
class StageAction:
    """One local path the submission stages, and where the job will find it."""

    what: str  # data, model_path, container, workload code, hpcai package
    local: Path
    remote_path: str
    keep_name: bool
    files: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "local": str(self.local), "remote_path": self.remote_path,
                "files": self.files, "bytes": self.bytes}  # fmt: skip


@dataclass(frozen=True)
class SubmitPlan:
    rendered: RenderedJob
    requested: Overrides  # what the user typed
    staging: tuple[StageAction, ...]
    filesystem: str | None  # where staged files go
    cost: dict[str, Any]
    submit_command: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.rendered.job.model_dump(),
            "script": self.rendered.script,
            "staging": [a.to_json() for a in self.staging],
            "staging_filesystem": self.filesystem,
            "cost": self.cost,
            "submit_command": self.submit_command,
            "memory": self.memory.to_json() if self.memory else None,
        }

    @property
    def memory(self) -> MemoryEstimate | None:
        from hpcai.flows.resolve import memory_estimate

        return memory_estimate(self.rendered.job, self.rendered.profile)


def plan_submit(workload: str | Workload, cluster: str | None, overrides: Overrides) -> SubmitPlan:
    """Everything the submission will do, worked out on this machine; nothing is sent or submitted."""
    from hpcai.backends.schedulers import scheduler_for
    from hpcai.backends.transport import LocalTransport
    from hpcai.flows.budget.query import job_cost
    from hpcai.flows.resolve import default_cluster
    from hpcai.spec.profiles import load_profile, resolve_alias
    from hpcai.spec.userconfig import load_user_config

    name = resolve_alias(cluster or default_cluster())
    profile = load_profile(name)
    actions: list[StageAction] = []
    filesystem = None
    resolved = overrides
    remote = load_user_config().for_cluster(name).ssh_host is not None
    checked = resolve_job(workload, name, resolved)  # every option checked before staging is planned
    if remote or profile.launch.python != "current":
        resolved, actions, filesystem = _plan_staging(name, checked.workload, overrides, remote=remote)
        checked = resolve_job(_with_staged_config(checked.workload, actions), name, resolved)
    rendered = render_job(checked)  # the script, rendered once: what is shown is what is submitted
    job = rendered.job
    scheduler = scheduler_for(profile, LocalTransport())  # only asked for its command line
    return SubmitPlan(
        rendered=rendered,
        requested=overrides,
        staging=tuple(actions),
        filesystem=filesystem,
        cost=job_cost(profile, job.allocated_nodes, job.walltime_s).to_json(),
        submit_command=scheduler.submit_command(RunDir(job.run_dir).script, job.run_dir),
    )


def _with_staged_config(workload: Workload, actions: list[StageAction]) -> Workload:
    """A user's accelerate config file, as staged: the job reads the cluster's copy."""
    app = workload.spec.app
    staged = [a.remote_path for a in actions if a.what == "accelerate config"]
    if app is None or not staged:
        return workload
    spec = workload.spec.model_copy(update={"app": app.model_copy(update={"accelerate_config": staged[0]})})
    return workload.model_copy(update={"spec": spec})


def _plan_staging(
    cluster: str, workload: Workload, overrides: Overrides, *, remote: bool
) -> tuple[Overrides, list[StageAction], str]:
    """On a cluster reached over SSH: local data/model_path/container, and for site profiles the workload
    code and the hpcai package, are staged; the job refers to the staged copies. On the login node itself
    (`remote` False) the data is already where the job can read it; the code and the package are still
    staged, into the store on the cluster's filesystem: hpcai may be installed where compute nodes do not
    look (a user site-packages, a login-node-only venv), and the job's own environment lacks it."""
    from hpcai.backends.staging import HashCache
    from hpcai.backends.staging.manifest import plan_stage
    from hpcai.flows.stage import store_root
    from hpcai.spec.profiles import load_profile

    profile = load_profile(cluster)
    fs_name, root = store_root(cluster, profile, None, overrides.account)
    cache = HashCache()
    actions: list[StageAction] = []

    def stage(what: str, path: Path, keep_name: bool = False) -> str:
        scan, _, remote = plan_stage(root, path, cache, keep_name=keep_name)
        files = [e for e in scan.entries if e.link is None]
        actions.append(StageAction(what, path, remote, keep_name, len(files), sum(e.size for e in files)))
        return remote

    new_set = []
    binds: list[str] = []
    for item in overrides.set:
        key, _, value = item.partition("=")
        path = Path(value).expanduser()
        if remote and key in STAGED_PARAMETERS and value and path.exists():
            if key == "data" and profile.pack_data == "squashfs" and path.is_dir():
                from hpcai.backends.staging.squash import container_bind, squash

                image = stage(key, squash(path).image)  # one file on the cluster, mounted by the container
                if any(c in image for c in ":,"):
                    raise ValidationError(
                        f"pack_data: squashfs: the staged image's path {image} holds ':' or ',', which a container "
                        "bind cannot carry. Stage to a filesystem whose path has neither (data_filesystem), or set "
                        "pack_data: true."
                    )
                binds.append(container_bind(image, f"{DATA_MOUNT}/{key}"))
                new_set.append(f"{key}={DATA_MOUNT}/{key}")
                continue
            if key == "data" and profile.pack_data and path.is_dir():
                from hpcai.backends.staging.pack import pack

                path = pack(path, hashes=cache).folder  # the site caps files per project: shards, not a file a sample
            new_set.append(f"{key}={stage(key, path)}")
        else:
            new_set.append(item)
    container = overrides.container
    if remote and container and Path(container).expanduser().is_file():
        container = stage("container", Path(container).expanduser())
    update: dict[str, object] = {"set": tuple(new_set), "container": container, "binds": tuple(binds)}
    if profile.launch.python != "current":
        # The job runs the workload code and the hpcai runtime from staged copies, not the laptop's.
        import hpcai

        update["code_dir"] = stage("workload code", workload.directory)
        update["python_path"] = stage("hpcai package", Path(hpcai.__file__).resolve().parent, keep_name=True)
    app = workload.spec.app
    if remote and app is not None and app.accelerate_config:
        stage("accelerate config", Path(app.accelerate_config))
    cache.save()
    return overrides.model_copy(update=update), actions, fs_name


def demo_spend(rendered: RenderedJob) -> str | None:
    """What to say when the job is the workload's built-in demo (tiny model, synthetic data) on a cluster that
    charges an allocation -- the toy defaults sent to 16 GPUs by mistake -- else None."""
    job = rendered.job
    if not rendered.profile.account_required or not rendered.workload.spec.is_demo(job.parameters):
        return None
    return (
        f"this job would train {job.workload}'s built-in demo (preset={job.parameters.get('preset')}, synthetic "
        f"data) on {job.allocated_nodes} node(s) of {job.cluster} for up to {job.walltime_s // 60} min, charged to "
        f"{job.account or 'your allocation'}. For real training give --set data=... and a real model (--set "
        f"preset=... or model_path=...; `hpcai workloads show {job.workload}`). To run the demo as a smoke test "
        "of the site set-up (1 node, a short --time is enough), add --yes."
    )


def execute(
    plan: SubmitPlan, *, force_budget: bool = False, show_progress: bool = True, preflight: bool = True,
    then: Sequence[SubmitPlan] = (),
) -> dict[str, Any]:  # fmt: skip
    """Perform the plan over the session's one connection: everything `prepare_submission` does, then submit."""
    from hpcai.flows.runs.submission import submit_run

    ready = prepare_submission(plan, then=then, force_budget=force_budget, show_progress=show_progress,
                               preflight=preflight)  # fmt: skip
    submitted = submit_run(plan.rendered, command=plan.submit_command)  # the command the plan showed
    return {**submitted, **ready}


def prepare_submission(
    plan: SubmitPlan, *, then: Sequence[SubmitPlan] = (), force_budget: bool = False, show_progress: bool = True,
    preflight: bool = True, stage_then: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Before the scheduler is asked: the budget (with later stages or a sweep's other points, `then`), a
    maintenance reservation ahead, the job environment's pre-flight, and staging of `plan`'s paths (with
    `stage_then`, of those of `then` too: a sweep's points may each stage their own)."""
    from hpcai.flows.budget.guard import check_submit_budget
    from hpcai.flows.runs.pending import maintenance_ahead
    from hpcai.flows.stage import StageItem, stage_paths

    job = plan.rendered.job
    backend = Session.current().get(job.cluster)
    budget = check_submit_budget(plan.rendered, backend.transport, force=force_budget,
                                 then=[p.rendered for p in then])  # before bytes move  # fmt: skip
    maintenance = maintenance_ahead(backend.scheduler.maintenance(job.partition, job.allocated_nodes), job.walltime_s)
    if maintenance is not None:
        Session.current().warn(maintenance["message"])
    checked = None
    # The check runs in the job's container when it has one, so then only once the image is staged.
    if preflight and job.container is None:
        checked = _preflight(plan)
    staged_plans = (plan, *then) if stage_then else (plan,)
    staging = list({(a.local, a.keep_name, a.remote_path): a for p in staged_plans for a in p.staging}.values())
    if staging:
        items = [StageItem(a.local, a.keep_name) for a in staging]
        reports = stage_paths(job.cluster, items, filesystem=plan.filesystem, show_progress=show_progress,
                              account=job.account)  # fmt: skip
        for action, report in zip(staging, reports, strict=True):
            if report.remote_path != action.remote_path:
                raise HpcaiError(
                    f"submit: {action.local} changed while it was being staged (planned as {action.remote_path}, "
                    f"staged as {report.remote_path}); nothing was submitted. Submit again once it no longer changes."
                )
    if preflight and job.container is not None:
        checked = _preflight(plan)
    return {"budget": budget, "preflight": checked, "staged": [a.to_json() for a in staging],
            "maintenance": maintenance}  # fmt: skip


def execute_waiting(plan: SubmitPlan, *, after: str, show_progress: bool = True) -> dict[str, Any]:
    """A pipeline's later stage: staged like any run (cheap: the same code is already there), then recorded
    WAITING for run `after`, whose job submits it (hpcai.flows.runs.submission.record_waiting_run)."""
    from hpcai.flows.runs.submission import record_waiting_run
    from hpcai.flows.stage import StageItem, stage_paths
    from hpcai.store.db import Store

    job = plan.rendered.job
    if plan.staging:
        items = [StageItem(a.local, a.keep_name) for a in plan.staging]
        stage_paths(job.cluster, items, filesystem=plan.filesystem, show_progress=show_progress, account=job.account)
    store = Store()
    return record_waiting_run(plan.rendered, store.run(after), store)


def _preflight(plan: SubmitPlan) -> dict[str, Any]:
    from hpcai.flows.preflight import JobEnvironment, job_extras, require_preflight, run_preflight

    rendered = plan.rendered
    job = rendered.job
    backend = Session.current().get(job.cluster)
    environment = JobEnvironment.of(job, rendered.profile)
    result = run_preflight(backend.transport, environment, rendered.workload, extras=job_extras(job.parameters))
    if not result.checked:
        Session.current().warn(f"pre-flight on {job.cluster} skipped: {result.summary}")
    require_preflight(result, job, rendered.workload)
    return result.to_json()
