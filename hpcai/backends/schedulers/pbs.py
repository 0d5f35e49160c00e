"""PBS Pro through qsub / qstat -f / qdel.

Verified here only against Slurm's PBS wrappers (slurm-wlm-torque): they accept the same commands and
print `qstat -f` in PBS's format, but do not understand PBS Pro's `select=` directives and show finished
jobs as `C` without an exit status. The exit code then comes from the job's own attempt log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hpcai.backends.schedulers.base import (
    JobState,
    JobStatus,
    Scheduler,
    ScriptFragments,
    failure,
)
from hpcai.rundir.contract import SCRIPT_NAME

# PBS job_state letters. F (finished, qstat -x) and C (completed, Torque) carry Exit_status when known.
_STATES = {
    "Q": JobState.PENDING,
    "W": JobState.PENDING,
    "T": JobState.PENDING,
    "H": JobState.PENDING,
    "B": JobState.RUNNING,
    "R": JobState.RUNNING,
    "E": JobState.COMPLETING,
    "S": JobState.SUSPENDED,
    "U": JobState.SUSPENDED,
    "X": JobState.COMPLETED,
    "F": JobState.COMPLETED,
    "C": JobState.COMPLETED,
}


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """`qstat -f` output -> {job id: {attribute: value}}, joining PBS's continuation lines."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for raw in text.splitlines():
        if raw.startswith("Job Id:"):
            current = jobs.setdefault(raw.split(":", 1)[1].strip(), {})
            continue
        if current is None or not raw.strip():
            continue
        if " = " in raw:
            key, _, value = raw.strip().partition(" = ")
            current[key] = value
            last_key = key
        elif last_key:  # a wrapped long value continues on the next, indented line
            current[last_key] += raw.strip()
    return jobs


def _status(job_id: str, attrs: dict[str, str]) -> JobStatus:
    state = _STATES.get(attrs.get("job_state", ""), JobState.UNKNOWN)
    exit_text = attrs.get("Exit_status") or attrs.get("exit_status")
    exit_code = int(exit_text) if exit_text and exit_text.lstrip("-").isdigit() else None
    if state is JobState.COMPLETED and exit_code is not None and exit_code != 0:
        # PBS Pro: -11 is walltime exceeded (JOB_EXEC_KILL_WALLTIME); others are failures.
        state = JobState.TIMEOUT if exit_code in (-11, 271) else JobState.FAILED
    return JobStatus(job_id, state, exit_code, attrs.get("comment"), attrs.get("stime"), attrs.get("mtime"))


class PbsScheduler(Scheduler):
    kind = "pbs"
    label = "PBS"
    job_id_pattern = re.compile(r"[0-9]{1,12}(\[[0-9]*\])?(\.[A-Za-z0-9][A-Za-z0-9.-]{0,254})?")  # 123.server
    queue_noun = "queue"
    submit_tool = "qsub"
    probe_fix = "Check that you are on a login node of the cluster and that PBS answers (`qstat -Q`)."

    def queues(self) -> set[str]:
        result = self.command(["qstat", "-Q"])
        if not result.ok:
            raise failure("qstat -Q", result)
        # Queue table: a header, a dashes line, then one row per queue (name first).
        lines = result.stdout.splitlines()
        rows = lines[next((i + 1 for i, line in enumerate(lines) if line.startswith("---")), 0) :]
        return {line.split()[0] for line in rows if line.split()}

    def submit_command(self, script_path: str, run_dir: str) -> list[str]:
        # -o/-e on the command line too: Slurm's qsub wrapper ignores #PBS -o/-e lines.
        out, err = self.log_paths(run_dir, "")
        return ["qsub", "-o", out, "-e", err, script_path]

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = self.valid_ids(job_ids)
        if not wanted:
            return {j: JobStatus(j, JobState.UNKNOWN) for j in job_ids}
        result = self.command(["qstat", "-f", *wanted])
        # qstat exits non-zero when some job is unknown but still prints the known ones.
        parsed = parse_qstat_full(result.stdout)
        if not parsed and not result.ok and "Unknown Job" not in result.stderr and result.stderr.strip():
            unknown_only = all("nknown" in line or "not exist" in line for line in result.stderr.splitlines())
            if not unknown_only:
                raise failure("qstat", result)
        by_short = {key.split(".")[0]: attrs for key, attrs in parsed.items()}
        statuses = {j: JobStatus(j, JobState.UNKNOWN) for j in job_ids}
        for job_id in wanted:
            attrs = parsed.get(job_id) or by_short.get(job_id.split(".")[0])
            statuses[job_id] = _status(job_id, attrs) if attrs else JobStatus(job_id, JobState.UNKNOWN)
        return statuses

    def cancel(self, job_id: str) -> None:
        result = self.command(["qdel", self.check_job_id(job_id)])
        if not result.ok and "nknown" not in result.stderr + result.stdout:
            raise failure("qdel", result)

    def requeue(self, job_id: str) -> None:
        result = self.command(["qrerun", self.check_job_id(job_id)])
        if not result.ok:
            raise failure("qrerun", result)

    def log_paths(self, run_dir: str, job_id: str) -> tuple[str, str]:
        return f"{run_dir}/logs/pbs.out", f"{run_dir}/logs/pbs.err"


class PbsScript(ScriptFragments):
    """PBS's script fragments: the script times its own walltime; no node picking or exclusion."""

    kind = "pbs"
    job_id = "$PBS_JOBID"
    job_number = "${PBS_JOBID%%.*}"
    times_itself = True

    def master_lines(self, suffix: str, nodes: int, emulated: bool) -> list[str]:
        return [
            "# PBS_NODEFILE lists the allocation's hosts; a PBS without it (one node) has only this host.",
            f'MASTER_ADDR="$(head -n 1 "${{PBS_NODEFILE:-/dev/null}}")"{suffix}',
            'MASTER_ADDR="${MASTER_ADDR:-$(hostname)}"',
        ]

    def requeue_lines(self) -> list[str]:
        # PBS has no requeue that keeps the job: the next attempt is a new job, submitted (and recorded in the
        # attempt log, so hpcai follows the run under it) as a recovery's is.
        return ["hpcai_action=queue", "hpcai_why=walltime"]

    def submit_next(self, python: str, walltime_s: int, emulated: bool) -> str:
        return f'qsub "$HPCAI_RUN_DIR/{SCRIPT_NAME}"'
