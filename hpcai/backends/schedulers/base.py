"""The scheduler interface every backend implements, and the shared job-state vocabulary."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from hpcai.backends.transport.base import CommandResult, OutcomeUnknown, Transport
from hpcai.errors import EnvironmentFailure, HpcaiError


class JobState(StrEnum):
    SUBMITTING = "SUBMITTING"  # recorded before the scheduler was asked; the job id may be unknown
    WAITING = "WAITING"  # a pipeline's later stage: its job is submitted by the previous stage's job when it completes
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    REQUEUED = "REQUEUED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # the scheduler does not (yet) know the job: ask again, never assume failure

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.OUT_OF_MEMORY,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    started: str | None = None
    ended: str | None = None
    restarts: int = 0  # times the scheduler started the job again under its id (a requeue, its own or ours)


@dataclass(frozen=True)
class Window:
    """A maintenance reservation: its name and times, in the cluster's local time as the scheduler gives them."""

    name: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Maintenance:
    now: datetime  # the cluster's clock when the reservations were read, in its local time
    windows: tuple[Window, ...]


class SchedulerError(HpcaiError):
    """A scheduler command failed for a reason that retrying does not fix (it refused the request)."""


class SubmissionUnclear(SchedulerError, OutcomeUnknown):
    """sbatch/qsub failed in a way that does not say whether the job was queued (a controller time-out)."""


def unclear(what: str, result: CommandResult) -> bool:
    """Whether a failed submission (`what`) may still have queued the job: the controller timed out."""
    return not result.ok and any(marker in result.stderr + result.stdout for marker in TRANSIENT_MARKERS)


def last_line(result: CommandResult) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1][:300] if lines else f"exit code {result.returncode}"


class SchedulerUnavailable(SchedulerError, EnvironmentFailure):
    """The scheduler did not answer (controller down, timeouts) even after retries: exit 3."""


TRANSIENT_MARKERS = (
    "Socket timed out",
    "Resource temporarily unavailable",
    "Unable to contact slurm controller",
    "Slurm backup controller in standby mode",
    "Connection refused",
    "timed out after",
)


class Scheduler(ABC):
    kind: str
    label: str = ""  # the scheduler's name for people ("Slurm", "PBS")
    queue_noun: str = "queue"  # what it calls a queue ("partition" on Slurm)
    probe_fix: str = ""  # what to check when `queues` fails (doctor's fix line)

    # What this scheduler's job ids look like. Every id read from a file or from scheduler output is checked
    # against it before it reaches a command line: a run folder may have been written by someone else, and
    # an "id" such as -uroot would be an option (scancel -uroot cancels every job of the user).
    job_id_pattern: re.Pattern[str] = re.compile(r"[0-9]{1,12}")

    def valid_job_id(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self.job_id_pattern.fullmatch(job_id) is not None

    def check_job_id(self, job_id: object) -> str:
        if not self.valid_job_id(job_id):
            shown = repr(job_id)[:80]
            raise SchedulerError(
                f"{shown} is not a {self.label or self.kind} job id; it was not passed to the scheduler. It came from "
                "the run's records, which may have been altered by someone else: check the run directory's "
                "attempts.jsonl and job_id files."
            )
        return str(job_id)

    def valid_ids(self, job_ids: Sequence[str]) -> list[str]:
        """The ids fit to ask the scheduler about (once each); the others are said in `warnings`."""
        wanted = list(dict.fromkeys(job_ids))
        bad = [j for j in wanted if not self.valid_job_id(j)]
        if bad:
            self.warnings.append(
                f"ignored {len(bad)} recorded job id(s) that are not {self.label or self.kind} job ids (e.g. "
                f"{bad[0]!r:.60}): the run's records may have been altered by someone else"
            )
        return [j for j in wanted if j not in bad]

    def __init__(self, transport: Transport, *, retries: int = 4, backoff_s: float = 0.5) -> None:
        self.transport = transport
        self.retries = retries
        self.backoff_s = backoff_s
        self.calls = 0  # scheduler commands issued, for tests and benchmarks
        self.warnings: list[str] = []  # what a query could not learn (accounting down), for status to say
        self._sleep: Callable[[float], None] = time.sleep

    def command(
        self, argv: Sequence[str], *, timeout: float = 60, transient_ok: bool = True, idempotent: bool = True
    ) -> CommandResult:
        """Run a scheduler command, retrying with exponential backoff on transient controller errors."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            self.calls += 1
            result = self.transport.run(argv, timeout=timeout, idempotent=idempotent)
            transient = any(marker in result.stderr for marker in TRANSIENT_MARKERS)
            # A command that must not run twice (sbatch, qsub) is never repeated: "Socket timed out" may
            # come after the controller queued the job (five jobs for one submit, none tracked).
            if result.ok or not transient or not transient_ok or not idempotent or attempt == self.retries:
                return result
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    submit_tool: str = ""  # the command that queues a job (sbatch, qsub), named in what goes wrong

    def submit(
        self, script_path: str, run_dir: str, *, walltime_s: int | None = None, umask: str = "077",
        command: Sequence[str] | None = None,
    ) -> str:  # fmt: skip
        """Submit the script; return the job id. `command`: the submit command a plan showed (else
        `submit_command`'s). The scheduler creates the job's log files with the submitting process's umask
        (Slurm's SLURM_UMASK): `umask` keeps them private whatever the user's. The submit tool is never run
        twice: a time-out after the controller queued the job raises SubmissionUnclear (reconciliation looks
        for the job before anyone submits again)."""
        argv = self.under_umask(list(command or self.submit_command(script_path, run_dir)), umask)
        result = self.command(argv, timeout=120, idempotent=False)
        tool = self.submit_tool or argv[0]
        if unclear(tool, result):
            raise SubmissionUnclear(f"{tool} did not say whether the job was queued: {last_line(result)}")
        if not result.ok:
            raise failure(tool, result)
        lines = result.stdout.strip().splitlines()
        job_id = self.printed_job_id(lines[-1]) if lines else ""
        if not self.valid_job_id(job_id):
            raise failure(f"{tool} (no job id printed)", result)
        return job_id

    def printed_job_id(self, line: str) -> str:
        """The job id in the last line the submit tool printed."""
        return line.strip()

    def maintenance(self, partition: str | None, nodes: int) -> Maintenance | None:
        """The scheduler's maintenance reservations that would keep a job of `nodes` nodes in `partition`
        from running (too few of its nodes outside them), with the cluster's clock; None where the scheduler
        has none to tell or does not answer."""
        return None

    def under_umask(self, argv: list[str], umask: str) -> list[str]:
        if umask not in ("077", "027"):
            raise ValueError(f"umask {umask!r}")
        return ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *argv]

    def submit_command(self, script_path: str, run_dir: str) -> list[str]:
        """The command `submit` runs (shown by `submit --dry-run`)."""
        return [script_path]

    def expected_start(self, job_id: str) -> str | None:
        """The scheduler's own estimate of when a pending job starts (it moves as the queue does); None where
        the scheduler gives none."""
        return None

    def earlier_runs(self, job_id: str) -> list[JobStatus]:
        """Every run of a job the scheduler started more than once, oldest first (the last is the current
        one); [] where the scheduler keeps no such record."""
        return []

    @abstractmethod
    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """States of many jobs with a constant number of scheduler calls."""

    @abstractmethod
    def cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def requeue(self, job_id: str) -> None: ...

    @abstractmethod
    def log_paths(self, run_dir: str, job_id: str) -> tuple[str, str]:
        """(stdout, stderr) of one attempt."""

    def queues(self) -> set[str]:
        """The partitions/queues the scheduler offers (doctor compares them with the profile's); raises
        SchedulerError naming the command when the scheduler does not answer."""
        return set()

    def find_jobs(self, run_dirs: Sequence[str]) -> dict[str, str]:
        """Job ids of jobs running in these run directories (reconciling a submit whose id was lost)."""
        return {}


class ScriptFragments(ABC):
    """What a batch script needs from its scheduler: hpcai.render.script asks the kind's fragments (the
    registry in hpcai.backends.schedulers), the templates never branch on the kind. Shell text, already quoted."""

    kind: str
    job_id: str  # shell expression: this job's id
    job_number: str  # shell expression: a number derived from it (the rendezvous port)
    times_itself: bool = False  # no scheduler signal before walltime: the script runs its own timer

    def picks_nodes(self, emulated: bool) -> bool:
        """Each launch names its nodes (a spare can take a failed node's place)."""
        return False

    @abstractmethod
    def master_lines(self, suffix: str, nodes: int, emulated: bool) -> list[str]:
        """Lines that set MASTER_ADDR (and, when it picks nodes, the launch's node list) before a launch."""

    @abstractmethod
    def requeue_lines(self) -> list[str]:
        """Lines that put this job back in the queue after it checkpointed before walltime. A scheduler that
        keeps the job id records `hpcai_event requeue "$rc"` first (the lineage's next attempt)."""

    def queued_next_lines(self) -> list[str]:
        """`hpcai_queued_next`: after a submission that reported failure, the id of a job that it queued
        all the same (another job of this user in this run directory), or nothing."""
        return ["# A failed submission queued nothing that this scheduler lets the job look up.",
                "hpcai_queued_next() { :; }"]  # fmt: skip

    @abstractmethod
    def submit_next(self, python: str, walltime_s: int, emulated: bool) -> str:
        """The command, run by the job itself, that submits the run's next attempt and prints its id."""

    max_array_size = 0  # the most tasks one job array may have; 0: this scheduler runs no sweeps here

    def resource_lines(self, script: str) -> list[str]:
        """A job script's resource directives, without those naming the job, its folder and its logs."""
        raise NotImplementedError(f"{self.kind}: no job arrays")

    def array_script(self, name: str, folder: str, point_script: str, run_dirs: list[str], parallel: int) -> str:
        """A job array running each run folder's own job script as one task, `parallel` at once (a sweep)."""
        raise NotImplementedError(f"{self.kind}: no job arrays")


def failure(what: str, result: CommandResult) -> SchedulerError:
    detail = (result.stderr or result.stdout).strip().splitlines()
    shown = " ".join(detail[-3:]) if detail else f"exit code {result.returncode}"
    if any(marker in result.stderr for marker in TRANSIENT_MARKERS) or result.returncode == 124:
        return SchedulerUnavailable(
            f"{what} failed: the scheduler did not answer (`{' '.join(result.argv)}` said: {shown}). Nothing is "
            "wrong with your request; try again later (`hpcai status` shows what was submitted)."
        )
    return SchedulerError(f"{what} failed: `{' '.join(result.argv)}` said: {shown}")
