"""Scheduler backends behind one interface: submit, states of many jobs at once, cancel, requeue, logs."""

from __future__ import annotations

from hpcai.profiles import ClusterProfile
from hpcai.schedulers.base import JobState, JobStatus, Scheduler, SchedulerError
from hpcai.transport.base import Transport


def scheduler_for(profile: ClusterProfile, transport: Transport) -> Scheduler:
    if profile.scheduler == "slurm":
        from hpcai.schedulers.slurm import SlurmScheduler

        return SlurmScheduler(transport)
    if profile.scheduler == "pbs":
        from hpcai.schedulers.pbs import PbsScheduler

        return PbsScheduler(transport)
    from hpcai.schedulers.local import LocalScheduler

    return LocalScheduler(transport)


__all__ = ["JobState", "JobStatus", "Scheduler", "SchedulerError", "scheduler_for"]
