"""Why a job waits, in words a newcomer can act on: the scheduler's pending reason (Slurm's squeue REASON
codes; `man squeue`, "JOB REASON CODES") translated into what it means and what to do. A reason that means
the job will never start says so: waiting is then only a waste of the queue slot."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hpcai.backends.schedulers.base import Maintenance
from hpcai.spec.walltime import slurm_walltime

# (the reason's start, what it means and what to do); the first match wins, so specific before general.
_MEANINGS: tuple[tuple[str, str], ...] = (
    ("ReqNodeNotAvail, Reserved for maintenance",
     "a maintenance reservation blocks nodes it needs: a job whose --time would run into the maintenance waits "
     "until after it. Submit with a --time that ends before the maintenance starts (`scontrol show res` shows "
     "it), or let it wait."),
    ("ReqNodeNotAvail",
     "nodes it needs are down, drained or reserved (often a maintenance): it starts when they are back, or "
     "resubmit without the nodes it names (`hpcai nodes`)."),
    ("Priority",
     "other jobs are ahead of it in the queue; it starts when its turn comes. A shorter --time or fewer nodes "
     "can let it start earlier in a gap (backfill)."),
    ("Resources", "it is next in line and waits for enough nodes to become free; it starts by itself."),
    ("BeginTime",
     "it may not start before a set time (after a requeue Slurm holds the job for the site's credential "
     "lifetime, cred_expire: 2 minutes by default); it starts by itself."),
    ("DependencyNeverSatisfied",
     "the job it waits for ended without success, so it will never start: cancel it (`hpcai cancel RUN`) and "
     "resubmit once the earlier job has run."),
    ("Dependency", "it waits for another job to end first (a pipeline's earlier stage); it starts by itself."),
    ("AssocGrpBilling", "the project's allocation is used up: it will not start until the project gets more hours. "
     "See `hpcai budget`; ask your PI or the site for more."),
    ("AssocGrpCPUMinutes", "the project's allocation is used up: it will not start until the project gets more "
     "hours. See `hpcai budget`; ask your PI or the site for more."),
    ("AssocGrpGRESMinutes", "the project's GPU hours are used up: it will not start until the project gets more. "
     "See `hpcai budget`; ask your PI or the site for more."),
    ("AssocGrpNodeLimit", "the project's running jobs already use all the nodes it may hold at once; it starts "
     "when some of them end."),
    ("AssocGrp", "a limit of the project (account) is reached; it starts when the project's other jobs end, "
     "unless the limit is on hours used (then see `hpcai budget`)."),
    ("AssocMax", "a per-job or per-user limit of your account is reached; it starts when your other jobs end, or "
     "ask for fewer nodes or less time."),
    ("QOSMaxWallDurationPerJobLimit",
     "its --time is over the QOS's limit, so it will never start: cancel it and submit with a shorter --time "
     "(`hpcai clusters show C` lists the limits)."),
    ("QOSMaxNodePerJobLimit",
     "it asks for more nodes than the QOS allows, so it will never start: cancel it and submit with fewer nodes "
     "or another --qos."),
    ("QOSMax", "your jobs under this QOS already use what it allows at once (nodes, GPUs or jobs); it starts when "
     "your other jobs end, or submit with another --qos."),
    ("QOSGrp", "the QOS as a whole is full (every user's jobs count); it starts when some of them end."),
    ("PartitionTimeLimit",
     "its --time is over the partition's limit, so it will never start: cancel it and submit with a shorter "
     "--time or another --partition."),
    ("PartitionNodeLimit",
     "it asks for more (or fewer) nodes than the partition allows, so it will never start: cancel it and "
     "submit with a size the partition allows."),
    ("PartitionDown", "the partition is down (often a maintenance); it starts when the site brings it back."),
    ("PartitionInactive", "the partition is inactive; it starts when the site reopens it."),
    ("Reservation", "it waits for the reservation it runs in to begin; it starts by itself."),
    ("JobHeldUser", "it is held (by you or a script): `scontrol release JOBID` lets it start."),
    ("JobHeldAdmin", "an administrator holds it: ask the site's support why."),
    ("launch failed requeued held",
     "Slurm could not start it and held it: `scontrol release JOBID` tries again; if it keeps failing, cancel "
     "and resubmit, and tell the site."),
    ("InvalidAccount", "the account it names is not valid for you here, so it will never start: cancel it and "
     "submit with an account `hpcai budget` lists."),
    ("InvalidQOS", "the QOS it names is not valid for you here, so it will never start: cancel it and submit with "
     "another --qos."),
    ("BadConstraints", "no node can satisfy what it asks for, so it will never start: cancel it and check the "
     "nodes, GPUs and memory it requests."),
)  # fmt: skip


def explain_pending(reason: str | None) -> str | None:
    """What the scheduler's pending reason means and what to do; None for no reason or one not known here
    (the reason itself is still shown)."""
    if not reason or reason == "None":
        return None
    text = reason.strip().lstrip("(").rstrip(")")
    for start, meaning in _MEANINGS:
        if text.startswith(start):
            return meaning
    return None


def never_starts(reason: str | None) -> bool:
    """The reason means the job cannot start as it is (waiting only holds a queue slot)."""
    meaning = explain_pending(reason)
    return meaning is not None and "will never start" in meaning


def maintenance_ahead(maintenance: Maintenance | None, walltime_s: int) -> dict[str, Any] | None:
    """Before queueing: the first maintenance reservation that the job, started now, would run into (or one
    under way), with what to ask for to run before it. None when the job fits (or nothing is known)."""
    if maintenance is None:
        return None
    now = maintenance.now
    ends = now + timedelta(seconds=walltime_s)
    for window in sorted(maintenance.windows, key=lambda w: w.start):
        if window.end <= now or window.start >= ends:
            continue
        underway = window.start <= now
        before_s = 0 if underway else int((window.start - now).total_seconds()) // 60 * 60
        span = f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M}, the cluster's time"
        if underway:
            message = (f"maintenance reservation {window.name} is under way ({span}): the job cannot start "
                       "before it ends. Submit after it, or let the job wait for it.")  # fmt: skip
        elif before_s < 60:
            message = (f"maintenance reservation {window.name} starts within a minute ({span}): the job waits "
                       "until it ends.")  # fmt: skip
        else:
            message = (f"--time {slurm_walltime(walltime_s)} runs into maintenance reservation {window.name} "
                       f"({span}): the scheduler starts the job only after the maintenance, unless it ends before "
                       f"it. To run before it, ask for less than the {slurm_walltime(before_s)} left (--time "
                       f"{slurm_walltime(before_s)} less the time it waits in the queue).")  # fmt: skip
        return {"reservation": window.name, "start": window.start.isoformat(), "end": window.end.isoformat(),
                "underway": underway, "time_before_s": before_s, "message": message}  # fmt: skip
    return None
