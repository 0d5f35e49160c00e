"""Scheduler backends behind one interface: submit, states of many jobs at once, cancel, requeue, logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcai.backends.schedulers.base import JobState, JobStatus, Scheduler, SchedulerError, ScriptFragments
from hpcai.backends.transport.base import Transport

if TYPE_CHECKING:  # the profile models (pydantic) load only when a cluster is used, not for `status` of none
    from hpcai.spec.profiles import ClusterProfile


def scheduler_for(profile: ClusterProfile, transport: Transport) -> Scheduler:
    if profile.scheduler == "slurm":
        from hpcai.backends.schedulers.slurm import SlurmScheduler

        return SlurmScheduler(transport)
    if profile.scheduler == "pbs":
        from hpcai.backends.schedulers.pbs import PbsScheduler

        return PbsScheduler(transport)
    from hpcai.backends.schedulers.local import LocalScheduler

    return LocalScheduler(transport)


def script_fragments(kind: str) -> ScriptFragments:
    """The batch-script knowledge of a scheduler kind (slurm, pbs, local): the one place that maps kinds
    to backends for rendering, as `scheduler_for` does for commands."""
    if kind == "slurm":
        from hpcai.backends.schedulers.slurm import SlurmScript

        return SlurmScript()
    if kind == "pbs":
        from hpcai.backends.schedulers.pbs import PbsScript

        return PbsScript()
    from hpcai.backends.schedulers.local import LocalScript

    return LocalScript()


__all__ = ["JobState", "JobStatus", "Scheduler", "SchedulerError", "ScriptFragments", "scheduler_for",
           "script_fragments"]  # fmt: skip
