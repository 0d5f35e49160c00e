"""Slurm through its command-line tools, designed around 22.05's quirks (see the notes):

- `squeue --json` ignores -j/--states, and `sacct --json` reports exit 3 as 0: use text formats.
- `squeue -j` errors when every listed job has left the queue: then sacct is asked.
- A job that neither knows (sacct rows arrive seconds late) is UNKNOWN, never FAILED.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from hpcai.backends.schedulers.base import (
    JobState,
    JobStatus,
    Maintenance,
    Scheduler,
    ScriptFragments,
    Window,
    failure,
)
from hpcai.rundir.contract import EXCLUDE_FILE, SCRIPT_NAME
from hpcai.shellquote import quote

# squeue --Format, each field ended by "|" (no padding): the % codes have no restart count.
_SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,StartTime:|,EndTime:|,WorkDir:|,RestartCnt:|"
_NOT_STARTED = frozenset({JobState.PENDING, JobState.REQUEUED, JobState.SUBMITTING, JobState.UNKNOWN})
_SACCT_FIELDS = "JobID,State,ExitCode,Reason,Start,End,WorkDir"
_STATE_ALIASES = {"CA": "CANCELLED", "TO": "TIMEOUT", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY", "PR": "PREEMPTED"}


def parse_state(text: str) -> JobState:
    word = text.split()[0].rstrip("+") if text.strip() else "UNKNOWN"  # "CANCELLED by 0"
    word = _STATE_ALIASES.get(word, word)
    try:
        return JobState(word)
    except ValueError:
        return JobState.UNKNOWN


# The cluster's clock, then every reservation on one line each (scontrol's times are in its local time).
_RESERVATIONS = "date +%Y-%m-%dT%H:%M:%S && scontrol -o show reservation"


def _datetime(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def _time(text: str) -> str | None:
    return None if text in {"", "Unknown", "None", "N/A"} else text


class SlurmScheduler(Scheduler):
    kind = "slurm"
    label = "Slurm"
    job_id_pattern = re.compile(r"[0-9]{1,12}(_[0-9]{1,9})?")  # a job, or one task of an array
    queue_noun = "partition"
    submit_tool = "sbatch"
    probe_fix = (
        "Check that you are on a login node of the cluster and that Slurm answers (`sinfo`); during "
        "maintenance it does not."
    )

    def queues(self) -> set[str]:
        result = self.command(["sinfo", "-h", "-o", "%P"])
        if not result.ok:
            raise failure("sinfo", result)
        return {p.strip().rstrip("*") for p in result.stdout.split()}

    def submit_command(self, script_path: str, run_dir: str) -> list[str]:
        return ["sbatch", "--parsable", script_path]

    def printed_job_id(self, line: str) -> str:
        return line.split(";")[0].strip()  # --parsable: "id" or "id;cluster"

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = self.valid_ids(job_ids)
        if not wanted:
            return {j: JobStatus(j, JobState.UNKNOWN) for j in job_ids}
        found: dict[str, JobStatus] = {}
        # -r: a job array's pending tasks one per line, each under its own id (123_4), not as 123_[4-7%2].
        result = self.command(["squeue", "-h", "-r", "-t", "all", "-O", _SQUEUE_FORMAT, "-j", ",".join(wanted)])
        if result.ok:
            for line in result.stdout.splitlines():
                fields = line.split("|")
                if len(fields) < 6 or fields[0] not in wanted:
                    continue
                state = parse_state(fields[1])
                reason = None if fields[2] in {"None", ""} else fields[2]
                # squeue's times are forecasts until they happen: a pending job's start is the expected one,
                # a running job's end its walltime's (read as an end, it made the elapsed time the walltime).
                started = _time(fields[3]) if state not in _NOT_STARTED else None
                ended = _time(fields[4]) if state.terminal else None
                restarts = int(fields[6]) if len(fields) > 6 and fields[6].strip().isdigit() else 0
                found[fields[0]] = JobStatus(fields[0], state, None, reason, started, ended, restarts)
        elif "Invalid job id" not in result.stderr:
            raise failure("squeue", result)
        # Exit codes only come from sacct; ask it once for every job that ended or left the queue.
        ask = [j for j in wanted if j not in found or found[j].state.terminal]
        if ask:
            found.update(self._sacct(ask))
        return {j: found.get(j, JobStatus(j, JobState.UNKNOWN)) for j in dict.fromkeys(job_ids)}

    def expected_start(self, job_id: str) -> str | None:
        """`squeue --start`: the backfill scheduler's estimate (N/A until it has planned the job)."""
        result = self.command(["squeue", "--start", "-h", "-o", "%S", "-j", self.check_job_id(job_id)])
        lines = result.stdout.split() if result.ok else []
        start = _time(lines[0]) if lines else None
        return start if start is not None and re.fullmatch(r"[0-9T:-]{10,19}", start) else None

    def maintenance(self, partition: str | None, nodes: int) -> Maintenance | None:
        """`scontrol -o show reservation`: reservations flagged MAINT that leave the partition fewer than
        `nodes` nodes (a site's maintenance usually takes every node), with the cluster's clock (`date`, in
        the local time Slurm's times are in)."""
        result = self.command(["sh", "-c", _RESERVATIONS])
        lines = result.stdout.splitlines() if result.ok else []
        now = _datetime(lines[0]) if lines else None
        if now is None:
            return None
        windows = []
        own: set[str] | None = None  # the partition's nodes, asked once, and only for a maintenance ahead
        for line in lines[1:]:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            start, end = _datetime(fields.get("StartTime", "")), _datetime(fields.get("EndTime", ""))
            if "MAINT" not in fields.get("Flags", "").split(",") or start is None or end is None or end <= now:
                continue
            own = self._partition_nodes(partition) if own is None else own
            reserved = fields.get("Nodes", "")
            left = len(own - self._hostnames(reserved)) if reserved not in {"", "(null)", "ALL"} else 0
            if left < nodes:  # 0 too where Slurm cannot say which nodes the partition has
                windows.append(Window(fields.get("ReservationName", "?"), start, end))
        return Maintenance(now, tuple(windows))

    def _partition_nodes(self, partition: str | None) -> set[str]:
        """The partition's nodes (the default partition's for None); empty where Slurm cannot say."""
        listed = self.command(["sinfo", "-h", "-o", "%P %N"])
        rows = [line.split() for line in listed.stdout.splitlines() if len(line.split()) == 2] if listed.ok else []
        ours = [n for p, n in rows if p.rstrip("*") == partition or (partition is None and p.endswith("*"))]
        return self._hostnames(ours[0]) if ours else set()

    def _hostnames(self, hostlist: str) -> set[str]:
        result = self.command(["scontrol", "show", "hostnames", hostlist]) if hostlist else None
        return set(result.stdout.split()) if result is not None and result.ok else set()

    def earlier_runs(self, job_id: str) -> list[JobStatus]:
        """sacct --duplicates: each run of a requeued job (NODE_FAIL, PREEMPTED, REQUEUED by the job itself),
        then the current one."""
        result = self.command(["sacct", "-X", "-D", "-P", "-n", "-o", _SACCT_FIELDS, "-j", self.check_job_id(job_id)])
        if not result.ok:
            return []
        return [s for line in result.stdout.splitlines() if (s := self._sacct_line(line)) and s.job_id == job_id]

    def _sacct_line(self, line: str) -> JobStatus | None:
        fields = line.split("|")
        if len(fields) < 7:
            return None
        code, _, signal = fields[2].partition(":")
        exit_code = int(code) if code.isdigit() else None
        if exit_code == 0 and signal.isdigit() and int(signal):
            exit_code = 128 + int(signal)
        # sacct's Reason is "the last reason the job was blocked from running" (BeginTime after a requeue,
        # Priority, Dependency): why it waited, never why it ended; only a job still waiting keeps it.
        state = parse_state(fields[1])
        reason = None if fields[3] in {"None", ""} or state.terminal else fields[3]
        return JobStatus(fields[0], state, exit_code, reason, _time(fields[4]), _time(fields[5]))

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        result = self.command(["sacct", "-X", "-P", "-n", "-o", _SACCT_FIELDS, "-j", ",".join(job_ids)])
        if not result.ok:
            # Accounting disabled, or slurmdbd down for maintenance: what squeue said still stands; jobs
            # that left the queue stay as last known, their exit codes come once sacct answers again.
            detail = (result.stderr or result.stdout).strip().splitlines()
            self.warnings.append(
                f"sacct failed ({detail[-1] if detail else f'exit code {result.returncode}'}): jobs that left the "
                "queue are shown as last known, without exit codes, until Slurm accounting answers again."
            )
            return {}
        statuses: dict[str, JobStatus] = {}
        for line in result.stdout.splitlines():
            status = self._sacct_line(line)
            if status is not None:
                statuses[status.job_id] = status
        return statuses

    def cancel(self, job_id: str) -> None:
        result = self.command(["scancel", self.check_job_id(job_id)])
        if not result.ok:
            raise failure("scancel", result)

    def requeue(self, job_id: str) -> None:
        result = self.command(["scontrol", "requeue", self.check_job_id(job_id)])
        if not result.ok:
            raise failure("scontrol requeue", result)
        # Without this the requeued job waits about two minutes (Reason=BeginTime).
        self.command(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])

    def log_paths(self, run_dir: str, job_id: str) -> tuple[str, str]:
        return f"{run_dir}/logs/slurm-{job_id}.out", f"{run_dir}/logs/slurm-{job_id}.err"

    def find_jobs(self, run_dirs: Sequence[str]) -> dict[str, str]:
        """Jobs whose working directory is one of `run_dirs` (hpcai sets --chdir to the run directory)."""
        wanted = set(run_dirs)
        if not wanted:
            return {}
        found: dict[str, str] = {}
        result = self.command(["squeue", "-h", "-t", "all", "-o", "%i|%Z"])
        if result.ok:
            for line in result.stdout.splitlines():
                job_id, _, workdir = line.partition("|")
                if workdir in wanted and self.valid_job_id(job_id):
                    found.setdefault(workdir, job_id)
        missing = wanted - set(found)
        if missing:
            history = self.command(["sacct", "-X", "-P", "-n", "-o", "JobID,WorkDir", "-S", "now-7days"])
            for line in history.stdout.splitlines() if history.ok else []:
                job_id, _, workdir = line.partition("|")
                if workdir in missing and self.valid_job_id(job_id):
                    found[workdir] = job_id  # the newest job of that directory wins
        return found


_MASTER_ADDR = [
    'MASTER_ADDR="$(getent ahostsv4 "$hpcai_master_host" | awk \'NR == 1 {print $1}\' || true)"',
    'MASTER_ADDR="${MASTER_ADDR:-$hpcai_master_host}"',
]


class SlurmScript(ScriptFragments):
    """Slurm's script fragments: each launch picks its nodes from the allocation (spares, exclusions)."""

    kind = "slurm"
    # A task of a job array (a sweep's point) is known as ARRAY_TASK, as squeue and sacct name it.
    job_id = "${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_}${SLURM_ARRAY_TASK_ID:-$SLURM_JOB_ID}"
    job_number = "$SLURM_JOB_ID"
    max_array_size = 1000  # Slurm's default MaxArraySize is 1001: indexes 0-1000

    def picks_nodes(self, emulated: bool) -> bool:
        # Not on the test cluster, whose "nodes" are tasks on one host.
        return not emulated

    def master_lines(self, suffix: str, nodes: int, emulated: bool) -> list[str]:
        if not self.picks_nodes(emulated):
            return [f'hpcai_master_host="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"{suffix}',
                    *_MASTER_ADDR]  # fmt: skip
        return [
            "# This launch's nodes: the allocation's first ones not in the run's exclusion file.",
            'hpcai_nodelist=$(scontrol show hostnames "$SLURM_JOB_NODELIST"'
            f' | grep -vxF -f <(cat "$HPCAI_RUN_DIR/{EXCLUDE_FILE}" 2>/dev/null)'
            f" | head -n {nodes} | paste -sd, - || true)",
            f'hpcai_master_host="${{hpcai_nodelist%%,*}}"{suffix}',
            "# The launch's first host, as an address every node can reach.",
            *_MASTER_ADDR,
        ]

    def requeue_lines(self) -> list[str]:
        return [
            "# The same job goes back in the queue: its next start is the run's next attempt.",
            'hpcai_event requeue "$rc"',
            "# Slurm ends this script here; the job may start again after the site's cred_expire (120 s by",
            "# default, Reason=BeginTime): nothing after this line runs.",
            'scontrol requeue "$SLURM_JOB_ID"',
        ]

    def queued_next_lines(self) -> list[str]:
        return [
            "# After an sbatch that failed: a job of this user in this run directory, other than this one, that it",
            "# queued all the same (a controller time-out after the job was accepted).",
            "hpcai_queued_next() {",
            "  sleep 5",
            """  squeue -h -u "$(id -un)" -o '%i|%Z' 2>/dev/null \\""",
            """    | awk -F'|' -v d="$HPCAI_RUN_DIR" -v me="$HPCAI_JOB_ID" '$2 == d && $1 != me {print $1}' \\""",
            "    | tail -n 1 || true",
            "}",
        ]

    def submit_next(self, python: str, walltime_s: int, emulated: bool) -> str:
        # Variables of this job's allocation must not leak into the new submission's resource request;
        # nodes the run found failing are left out (not on the test cluster: its one node is all it has).
        exclude = "" if emulated else ' ${hpcai_exclude:+"$hpcai_exclude"}'
        return (
            "env -u SLURM_MEM_PER_CPU -u SLURM_MEM_PER_NODE -u SLURM_MEM_PER_GPU -u SLURM_ARRAY_JOB_ID "
            f'-u SLURM_ARRAY_TASK_ID sbatch --parsable{exclude} "$HPCAI_RUN_DIR/{SCRIPT_NAME}"'
        )

    def resource_lines(self, script: str) -> list[str]:
        """A job script's #SBATCH lines but those naming the job, its folder and its logs: what a sweep's
        points must share to run as one array."""
        own = ("--job-name=", "--chdir=", "--output=", "--error=")
        return [ln for ln in script.splitlines() if ln.startswith("#SBATCH ") and not ln[8:].startswith(own)]

    def array_script(self, name: str, folder: str, point_script: str, run_dirs: list[str], parallel: int) -> str:
        """One job array whose task i runs point i's own job script in its run folder, at most `parallel` at
        once: the points' resource lines (all equal) with the array's name, logs and throttle."""
        lines = self.resource_lines(point_script)
        cases = [f"  {i}) hpcai_point={quote(d)} ;;" for i, d in enumerate(run_dirs)]
        return (
            "\n".join(
                [
                    "#!/bin/bash",
                    f"#SBATCH --job-name={name}",
                    f"#SBATCH --array=0-{len(run_dirs) - 1}%{parallel}",
                    f"#SBATCH --chdir={folder}",
                    f"#SBATCH --output={folder}/logs/array-%A_%a.out",
                    f"#SBATCH --error={folder}/logs/array-%A_%a.err",
                    *lines,
                    "# Task i of this array is point i of the sweep: its own run, folder, logs and job script.",
                    "set -euo pipefail",
                    'case "${SLURM_ARRAY_TASK_ID:-}" in',
                    *cases,
                    '  *) echo "hpcai sweep: no point ${SLURM_ARRAY_TASK_ID:-} in this array" >&2; exit 2 ;;',
                    "esac",
                    'hpcai_task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
                    'cd "$hpcai_point"',
                    f'exec bash "$hpcai_point/{SCRIPT_NAME}" >> "$hpcai_point/logs/slurm-$hpcai_task.out" '
                    '2>> "$hpcai_point/logs/slurm-$hpcai_task.err"',
                ]
            )
            + "\n"
        )
