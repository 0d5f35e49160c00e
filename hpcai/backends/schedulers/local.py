"""The local backend: runs the rendered script on this machine as a detached process group, with the same
run-directory layout, states, exit codes, cancel and logs as a real scheduler.

Each job is a small JSON file under `<state dir>/local-jobs/`; a detached runner process
(`python -m hpcai.backends.schedulers.local_runner`) starts the script, enforces the walltime and records the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hpcai.backends.schedulers.base import JobState, JobStatus, Scheduler, SchedulerError, ScriptFragments
from hpcai.paths import state_dir
from hpcai.rundir.contract import SCRIPT_NAME
from hpcai.shellquote import quote


def jobs_dir() -> Path:
    return state_dir() / "local-jobs"


def job_file(job_id: str) -> Path:
    return jobs_dir() / f"{job_id}.json"


def read_job(job_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(job_file(job_id).read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_job(data: dict[str, Any]) -> None:
    path = job_file(str(data["job_id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@contextlib.contextmanager
def job_lock(job_id: str) -> Iterator[None]:
    """Serialises the job file's state changes between the runner, cancel and status (a cancel that
    lands while the runner starts is never overwritten by RUNNING)."""
    path = jobs_dir() / f"{job_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def process_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"local_runner" in cmdline


def job_processes(job_id: str) -> list[int]:
    """Every live process of this user that carries the job's id in its environment, whatever its process
    group or session: the node agent, the supervisor and torchrun each start their children in a session of
    their own, so the job's process group alone misses the training itself. The id (random, per job) is what
    marks a process as the job's; a recycled process number is never mistaken for it."""
    found = []
    marker = f"HPCAI_LOCAL_JOB_ID={job_id}".encode()
    uid = os.getuid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            if stat[stat.rindex(b")") + 2 :].split()[0] == b"Z":
                continue
            if marker in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill_job_processes(job_id: str, *, wait_s: float = 3.0) -> bool:
    """SIGKILL what is left of a job whose runner is gone (as a failed node takes its processes with it);
    True once nothing is left."""
    deadline = time.monotonic() + wait_s
    while True:
        left = job_processes(job_id)
        if not left:
            return True
        if time.monotonic() >= deadline:
            return False
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


class LocalScheduler(Scheduler):
    kind = "local"
    job_id_pattern = re.compile(r"L[0-9a-f]{8}")

    def submit_command(self, script_path: str, run_dir: str) -> list[str]:
        return ["hpcai-local-runner", script_path]  # a detached process on this machine

    def submit(
        self, script_path: str, run_dir: str, *, walltime_s: int | None = None, umask: str = "077",
        command: Sequence[str] | None = None,
    ) -> str:  # fmt: skip
        job_id = f"L{secrets.token_hex(4)}"
        while job_file(job_id).exists():
            job_id = f"L{secrets.token_hex(4)}"
        walltime = walltime_s or 7 * 86400
        write_job(
            {
                "job_id": job_id,
                "script": script_path,
                "run_dir": run_dir,
                "walltime_s": walltime,
                "state": JobState.PENDING.value,
                "submitted": time.time(),
                "umask": umask,
            }
        )
        self.calls += 1
        try:
            subprocess.Popen(
                [sys.executable, "-m", "hpcai.backends.schedulers.local_runner", str(job_file(job_id))],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                # A job that submits its own next attempt must not pass its id on: the new runner is not
                # the old job's, and the old job's end sweeps every process that carries the old id.
                env={k: v for k, v in os.environ.items() if k not in ("HPCAI_LOCAL_JOB_ID", "HPCAI_LOCAL_RUNNER_PID")},
            )
        except OSError as exc:
            raise SchedulerError(f"could not start the local runner: {exc}") from exc
        return job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self.calls += 1
        valid = set(self.valid_ids(job_ids))
        return {j: self._status(j) if j in valid else JobStatus(j, JobState.UNKNOWN) for j in dict.fromkeys(job_ids)}

    def _status(self, job_id: str) -> JobStatus:
        data = read_job(job_id)
        if data is None:
            return JobStatus(job_id, JobState.UNKNOWN)
        state = JobState(data["state"])
        if not state.terminal:
            runner = data.get("runner_pid")
            started_long_ago = time.time() - float(data.get("submitted", 0)) > 30
            if (runner and not process_alive(int(runner))) or (not runner and started_long_ago):
                return self._runner_lost(job_id)
        return JobStatus(
            job_id,
            state,
            data.get("exit_code"),
            data.get("reason"),
            _iso(data.get("started")),
            _iso(data.get("ended")),
        )

    def _runner_lost(self, job_id: str) -> JobStatus:
        """The runner vanished (killed, machine rebooted): like a node failure on a cluster, the job's
        processes go with it -- and only once they are gone is the job called failed, so a resume never
        trains next to a survivor."""
        with job_lock(job_id):
            data = read_job(job_id)
            if data is None:
                return JobStatus(job_id, JobState.UNKNOWN)
            if JobState(data["state"]).terminal:
                return JobStatus(job_id, JobState(data["state"]), data.get("exit_code"), data.get("reason"))
            started = data.get("job_pid") is not None
            if started and not kill_job_processes(job_id):
                return JobStatus(job_id, JobState.RUNNING, None, "local runner lost; stopping its processes")
            reason = "local runner process disappeared" + ("; its processes were stopped" if started else "")
            data.update(state=JobState.NODE_FAIL.value, reason=reason, ended=time.time())
            write_job(data)
        return JobStatus(job_id, JobState.NODE_FAIL, None, reason, _iso(data.get("started")), _iso(data["ended"]))

    def cancel(self, job_id: str) -> None:
        self.check_job_id(job_id)
        self.calls += 1
        with job_lock(job_id):
            data = read_job(job_id)
            if data is None or JobState(data["state"]).terminal:
                return
            runner = data.get("runner_pid")
            if runner and process_alive(int(runner)):
                os.kill(int(runner), signal.SIGTERM)
                return
            if data.get("job_pid"):  # the runner is gone but its processes may not be
                kill_job_processes(job_id)
            # Not started yet (the runner sees this and never starts the script), or runner gone.
            data.update(state=JobState.CANCELLED.value, reason="cancelled by user", ended=time.time())
            write_job(data)

    def requeue(self, job_id: str) -> None:
        data = read_job(self.check_job_id(job_id))
        if data is None:
            raise SchedulerError(f"no local job {job_id}")
        self.cancel(job_id)
        self.submit(str(data["script"]), str(data["run_dir"]), walltime_s=int(data["walltime_s"]))

    def log_paths(self, run_dir: str, job_id: str) -> tuple[str, str]:
        return f"{run_dir}/logs/local-{job_id}.out", f"{run_dir}/logs/local-{job_id}.err"


def _iso(stamp: object) -> str | None:
    if not isinstance(stamp, int | float):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(stamp))


def main(argv: list[str]) -> int:
    """`python -m hpcai.backends.schedulers.local SCRIPT RUN_DIR WALLTIME_S`: submit a local job, print its id (the
    job script uses it to submit its own next attempt)."""
    from hpcai.backends.transport.local import LocalTransport

    script, run_dir, walltime = argv
    print(LocalScheduler(LocalTransport()).submit(script, run_dir, walltime_s=int(walltime)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class LocalScript(ScriptFragments):
    """The local backend's fragments: one host, the runner's walltime clock, `exec` for a requeue."""

    kind = "local"
    job_id = "${HPCAI_LOCAL_JOB_ID:-local-$$}"
    job_number = "$$"
    times_itself = True

    def master_lines(self, suffix: str, nodes: int, emulated: bool) -> list[str]:
        return ["MASTER_ADDR=127.0.0.1"]

    def requeue_lines(self) -> list[str]:
        return [
            'hpcai_event requeue "$rc"',
            "# The local runner restarts its walltime clock, as Slurm gives a requeued job a fresh time limit.",
            'if [ -n "${HPCAI_LOCAL_RUNNER_PID:-}" ]; then kill -USR2 "$HPCAI_LOCAL_RUNNER_PID" 2>/dev/null '
            "|| true; fi",
            f'exec bash "$HPCAI_RUN_DIR/{SCRIPT_NAME}"',
        ]

    def submit_next(self, python: str, walltime_s: int, emulated: bool) -> str:
        module = "hpcai.backends.schedulers.local"
        return f'{quote(python)} -m {module} "$HPCAI_RUN_DIR/{SCRIPT_NAME}" "$HPCAI_RUN_DIR" {walltime_s}'
