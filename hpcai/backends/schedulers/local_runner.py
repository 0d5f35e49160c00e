"""Detached runner for one local job: start the script in its own process group, enforce the walltime,
honour cancellation (SIGTERM), record the final state and exit code in the job file.

A script that requeues itself (walltime checkpoint) sends SIGUSR2 first: the walltime clock restarts, as
Slurm gives a requeued job a fresh time limit. When the script's leader exits, whatever it left in its
process group, and every process that carries the job's id in its environment, is stopped before the end is
recorded: no training outlives its job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from hpcai.backends.schedulers.local import job_lock, kill_job_processes, read_job, write_job

KILL_WAIT_S = 5.0


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's process group, then SIGKILL what is left after KILL_WAIT_S (as Slurm does)."""
    for sig, wait in ((signal.SIGTERM, KILL_WAIT_S), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)


def main(job_path: str) -> int:
    job_id = Path(job_path).stem
    cancelled = False
    restarted = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal cancelled
        cancelled = True

    def on_requeue(signum: int, frame: FrameType | None) -> None:
        nonlocal restarted
        restarted = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR2, on_requeue)
    with job_lock(job_id):
        data = read_job(job_id)
        if data is None or data["state"] != "PENDING":  # cancelled before it started
            return 0
        run_dir = str(data["run_dir"])
        logs = Path(run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        os.umask(0o027 if data.get("umask") == "027" else 0o077)  # the logs are the user's (as sbatch's)
        out = open(logs / f"local-{job_id}.out", "ab")  # noqa: SIM115 -- closed below, after the job
        err = open(logs / f"local-{job_id}.err", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            ["bash", str(data["script"])],
            cwd=run_dir,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "HPCAI_LOCAL_JOB_ID": job_id, "HPCAI_LOCAL_RUNNER_PID": str(os.getpid())},
        )
        started = time.time()
        data.update(state="RUNNING", runner_pid=os.getpid(), job_pid=proc.pid, started=started)
        write_job(data)
    deadline = started + float(data["walltime_s"])
    timed_out = False
    while proc.poll() is None:
        if restarted:  # the script requeued itself: a fresh time limit, as Slurm gives
            restarted = False
            deadline = time.time() + float(data["walltime_s"])
        if cancelled or time.time() >= deadline:
            timed_out = not cancelled
            break
        time.sleep(0.2)
    _stop_group(proc)  # on cancel and timeout, and whatever a dead leader left behind
    returncode = proc.wait()
    # Launchers start their workers in sessions of their own: what outlived the group goes too, before the
    # end is recorded (a resume must never train next to a survivor).
    kill_job_processes(job_id, wait_s=10.0)
    out.close()
    err.close()
    exit_code = returncode if returncode >= 0 else 128 - returncode
    if cancelled:
        state, reason = "CANCELLED", "cancelled by user"
    elif timed_out:
        state, reason = "TIMEOUT", "walltime exceeded"
    elif returncode == 0:
        state, reason = "COMPLETED", None
    else:
        state, reason = "FAILED", f"exit code {exit_code}"
    with job_lock(job_id):
        data.update(state=state, exit_code=exit_code, reason=reason, ended=time.time())
        write_job(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
