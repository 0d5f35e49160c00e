"""A job from what the user typed: the workload and profile loaded, the options resolved and checked against
the site's limits (`resolve_job`), then its script rendered (`render_job`); `prepare_job` does both."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from hpcai.backends.schedulers import script_fragments
from hpcai.paths import state_dir
from hpcai.render.script import render_script
from hpcai.spec.jobspec import JobSpec, Overrides, resolve_jobspec
from hpcai.spec.memory import HEADROOM, MemoryEstimate, estimate_job, fits, fixes
from hpcai.spec.profiles import ClusterProfile, load_profile, resolve_alias
from hpcai.spec.userconfig import load_user_config
from hpcai.spec.workloads import Workload, load_workload


class RenderedJob(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    job: JobSpec
    profile: ClusterProfile
    workload: Workload
    script: str


def default_cluster() -> str:
    return load_user_config().default_cluster


class ResolvedJob(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    job: JobSpec
    profile: ClusterProfile
    workload: Workload


def prepare_job(workload_name: str | Workload, cluster: str | None, overrides: Overrides) -> RenderedJob:
    """The resolved job and its script."""
    return render_job(resolve_job(workload_name, cluster, overrides))


def render_job(resolved: ResolvedJob) -> RenderedJob:
    script = render_script(resolved.job, resolved.profile, resolved.workload)
    return RenderedJob(job=resolved.job, profile=resolved.profile, workload=resolved.workload, script=script)


def resolve_job(workload_name: str | Workload, cluster: str | None, overrides: Overrides) -> ResolvedJob:
    """Every option checked and resolved; nothing rendered yet. `workload_name`: a workload's name, or a
    Workload (a user's own program, hpcai.spec.userapp)."""
    config = load_user_config()
    cluster_name = resolve_alias(cluster or config.default_cluster)
    profile = load_profile(cluster_name)
    workload = load_workload(workload_name) if isinstance(workload_name, str) else workload_name
    _check_launcher(workload, profile, cluster_name)
    job = resolve_jobspec(
        cluster=cluster_name,
        profile=profile,
        workload=workload,
        overrides=overrides,
        settings=config.for_cluster(cluster_name),
        state_dir=state_dir(),
    )
    if script_fragments(profile.scheduler).picks_nodes(profile.launch.emulate_nodes):
        job = job.model_copy(update={"exclude_nodes": tuple(_excluded_nodes(cluster_name))})
    job = _fit_memory(job, profile, workload, overrides)
    return ResolvedJob(job=job, profile=profile, workload=workload)


def memory_estimate(job: JobSpec, profile: ClusterProfile) -> MemoryEstimate | None:
    """The job's memory per GPU (a built-in LLaVA preset), as `--dry-run` shows it; None where not known."""
    return estimate_job(job.workload, dict(job.parameters), job.num_processes, profile.node.gpus > 0)


def _fit_memory(job: JobSpec, profile: ClusterProfile, workload: Workload, overrides: Overrides) -> JobSpec:
    """Before anything is queued: a job whose estimate does not fit the profile's GPU memory gets activation
    checkpointing where that is enough and nobody set it (said as a warning), else is refused with what
    makes it fit."""
    from hpcai.backends.session import Session
    from hpcai.errors import ValidationError

    estimate = memory_estimate(job, profile)
    gpu_gb = profile.node.gpu_memory_gb
    if estimate is None or gpu_gb is None or fits(estimate.total, gpu_gb):
        return job
    limit = HEADROOM * gpu_gb
    params = dict(job.parameters)
    chosen = any(a.split("=", 1)[0].strip() == "activation_checkpointing" for a in overrides.set)
    if not chosen and "activation_checkpointing" in workload.spec.parameters:
        on = estimate_job(job.workload, params, job.num_processes, True, activation_checkpointing=True)
        if on is not None and on.total <= limit:
            Session.current().warn(
                f"activation checkpointing turned on: without it the job needs about {estimate.total:.1f} GiB per "
                f"GPU, more than the {limit:.0f} GiB usable of a {gpu_gb:g} GB GPU on {job.cluster}; with it "
                f"{on.total:.1f} GiB (about 30% more compute; --set activation_checkpointing=false to refuse "
                "instead)."
            )
            return job.model_copy(update={"parameters": {**params, "activation_checkpointing": True}})
    ways = fixes(job.workload, params, job.num_processes, job.nodes, limit)
    raise ValidationError(
        f"memory: the job needs about {estimate.line()}, more than the {limit:.0f} GiB usable of a {gpu_gb:g} GB "
        f"GPU on {job.cluster}: it would stop with an out-of-memory error after its queue wait. "
        + (f"It fits with {' or '.join(ways)}." if ways else "Use a smaller preset, batch or max_length.")
        + " Nothing was queued."
    )


def _excluded_nodes(cluster: str) -> list[str]:
    """The cluster's exclusion list (`hpcai nodes`); none when the store cannot be read (a submission
    then records why in its own store error)."""
    from hpcai.errors import StoreError
    from hpcai.store.db import Store
    from hpcai.store.nodes import excluded_nodes

    try:
        store = Store()
    except StoreError:
        return []
    try:
        return excluded_nodes(store, cluster)
    finally:
        store.close()


def _check_launcher(workload: Workload, profile: ClusterProfile, cluster: str) -> None:
    from hpcai.errors import ValidationError

    if workload.spec.launcher == "srun" and profile.launch.launcher not in ("srun", "mpiexec"):
        raise ValidationError(
            f"--launcher srun: cluster '{cluster}' starts its jobs without srun or mpiexec "
            f"({profile.launch.launcher}), so there is nothing to start one task per GPU. "
            "Use --launcher torchrun or accelerate there."
        )
