"""Slurm-specific behaviour against the real slurmctld/slurmd/slurmdbd on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcai.backends.schedulers import JobState
from hpcai.backends.schedulers.slurm import SlurmScheduler, parse_state
from hpcai.backends.session import Session
from hpcai.backends.transport import LocalTransport
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.views import run_detail, status
from hpcai.store.db import Store
from tests.conftest import REPO
from tests.helpers import submit_probe, wait_for, wait_terminal


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 0", JobState.CANCELLED),
        ("COMPLETED", JobState.COMPLETED),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("REQUEUED", JobState.REQUEUED),
        ("PREEMPTED", JobState.PREEMPTED),
        ("TIMEOUT", JobState.TIMEOUT),
        ("RUNNING+", JobState.RUNNING),
        ("SPECIAL_EXIT", JobState.UNKNOWN),
        ("", JobState.UNKNOWN),
    ],
)
def test_state_vocabulary(text: str, state: JobState) -> None:
    assert parse_state(text) is state


def test_too_short_walltime_gives_timeout(slurm_cluster: str, probe_workload: str) -> None:
    store = Store()
    # Slurm counts walltime in minutes: the shortest limit is one minute.
    run_id = submit_probe(store, slurm_cluster, time_limit="00:01:00", lines=10_000, interval=0.1)
    view = wait_terminal(store, run_id, timeout=240)
    assert view.state == "TIMEOUT"


def test_states_of_twenty_jobs_use_a_constant_number_of_scheduler_calls(
    slurm_cluster: str, probe_workload: str
) -> None:
    store = Store()
    run_ids = [submit_probe(store, slurm_cluster, lines=1) for _ in range(20)]
    try:
        backends = refresh(store, store.runs())
        assert backends.scheduler_calls <= 2  # one squeue, at most one sacct
        for run_id in run_ids:
            wait_terminal(store, run_id, timeout=180)
        backends = refresh(store, [store.run(r) for r in run_ids])
        assert backends.scheduler_calls == 0  # finished attempts are never asked about again
    finally:
        job_ids = [a.job_id for a in store.latest_attempts(run_ids).values() if a.job_id]
        subprocess.run(["scancel", *job_ids], check=False)


def test_cli_killed_between_sbatch_and_the_store_update_loses_nothing(
    slurm_cluster: str, probe_workload: str, tmp_path: Path
) -> None:
    """An `sbatch` that submits for real and then SIGKILLs the hpcai process that called it, before
    hpcai can record the job id: the next `status` finds the job."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    sbatch = wrappers / "sbatch"
    sbatch.write_text('#!/bin/bash\nout=$(/usr/bin/sbatch "$@")\nkill -9 "$PPID"\necho "$out"\n')
    sbatch.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrappers}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpcai", "submit", "probe", "--cluster", slurm_cluster, "--set", "lines=2"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == -signal.SIGKILL
    store = Store()
    (run,) = store.runs()
    assert store.attempts(run.id)[0].job_id is None  # the CLI died before recording it
    status = subprocess.run(
        [sys.executable, "-m", "hpcai", "status", run.id, "--json"], capture_output=True, text=True, cwd=REPO
    )
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["job_id"] and view["state"] != "SUBMITTING"
    assert wait_terminal(store, run.id).state == "COMPLETED"
    assert any(e.kind == "reconciled" for e in store.events(run.id))


def test_two_emulated_machines_meet_at_the_rendered_rendezvous(slurm_cluster: str, probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, slurm_cluster, nodes=2, rendezvous="true", lines=1)
    view = wait_terminal(store, run_id)
    assert view.state == "COMPLETED", (Path(view.run_dir) / "logs").glob("*")
    meeting = json.loads((Path(view.run_dir) / "rendezvous.json").read_text())
    assert meeting["ranks"] == [0, 1]
    _host, port = meeting["master"].rsplit(":", 1)
    assert 20000 <= int(port) < 60000  # derived from the job id


def test_transient_controller_errors_are_retried_with_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An squeue that times out twice, then answers: the scheduler retries and succeeds."""
    counter = tmp_path / "count"
    wrapper = tmp_path / "squeue"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}\n"
        'if [ "$n" -le 2 ]; then echo "squeue: error: Socket timed out on send/recv operation" >&2; exit 1; fi\n'
        'echo "77|RUNNING|None|2026-01-01T00:00:00|N/A|/tmp"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    scheduler = SlurmScheduler(LocalTransport(), backoff_s=0.01)
    sleeps: list[float] = []
    scheduler._sleep = sleeps.append
    states = scheduler.states(["77"])
    assert states["77"].state is JobState.RUNNING
    assert sleeps == [0.01, 0.02] and scheduler.calls == 3


def test_requeue_puts_the_job_back_in_the_queue(slurm_cluster: str, probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, slurm_cluster, lines=600, interval=0.1)
    view = wait_for(store, run_id, {"RUNNING"})
    scheduler = Session().get(slurm_cluster).scheduler
    assert view.job_id
    scheduler.requeue(view.job_id)
    time.sleep(1)
    state = scheduler.states([view.job_id])[view.job_id].state
    assert state in {JobState.REQUEUED, JobState.PENDING, JobState.RUNNING}
    restarts = subprocess.run(
        ["scontrol", "show", "job", view.job_id], capture_output=True, text=True, check=True
    ).stdout
    assert "Restarts=1" in restarts
    subprocess.run(["scancel", view.job_id], check=True)
    final = wait_terminal(store, run_id, timeout=60)
    # The requeued job's pending reason (BeginTime) is why it waited, never why it ended.
    assert final.state == "CANCELLED" and final.reason and "BeginTime" not in final.reason, final
    assert "cancelled" in final.reason and final.waiting is None


def test_walltime_signal_makes_the_job_checkpoint_and_requeue_itself(slurm_cluster: str, probe_workload: str) -> None:
    """USR1 (what --signal=B:USR1@lead sends before walltime) -> STOP file -> the workload exits 85 ->
    the job script requeues its own job, which runs again to completion."""
    store = Store()
    run_id = submit_probe(store, slurm_cluster, lines=40, interval=0.25, honour_stop="true")
    view = wait_for(store, run_id, {"RUNNING"})
    assert view.job_id
    time.sleep(2)
    (view,), _ = status(store, run_id)
    # Elapsed, not the 10-minute walltime (squeue's end of a running job is a forecast).
    assert view.elapsed_s is not None and view.elapsed_s < 120, view
    subprocess.run(["scancel", "-s", "USR1", "-b", view.job_id], check=True)
    final = wait_terminal(store, run_id, timeout=300)  # a requeued job waits ~120 s (BeginTime)
    assert final.state == "COMPLETED"
    events = [json.loads(x)["event"] for x in (Path(view.run_dir) / "attempts.jsonl").read_text().splitlines()]
    assert events == ["start", "end", "requeue", "start", "end"]
    # Each launch is an attempt: in the store (status, list), in the goodput account, none left "running".
    first, second = store.attempts(run_id)
    assert (first.job_id, first.state, first.exit_code) == (view.job_id, "REQUEUED", 85), first
    assert first.reason and "requeued" in first.reason and "BeginTime" not in first.reason
    assert (second.job_id, second.state, second.exit_code) == (view.job_id, "COMPLETED", 0), second
    assert final.attempt == 2
    goodput = run_detail(store, run_id)["goodput"]
    assert len(goodput["attempts"]) == 2 and not any(a["running"] for a in goodput["attempts"])
    assert (Path(view.run_dir) / "requeues").read_text().strip() == "1"
    restarts = subprocess.run(["scontrol", "show", "job", view.job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts
