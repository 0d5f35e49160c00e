"""The local backend's own edges: a runner that vanishes reads as a node failure, never as running, and
only once nothing of its job is left; a cancel before start sticks; a requeue gets a fresh walltime."""

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
from hpcai.backends.schedulers.local import LocalScheduler, job_file, job_processes, read_job, write_job
from hpcai.backends.transport import LocalTransport
from hpcai.store.db import Store
from tests.helpers import submit_probe, wait_for, wait_for_file, wait_terminal


def _running_job(run_id: str, store: Store) -> tuple[dict[str, object], Path]:
    view = wait_for(store, run_id, {"RUNNING"})
    metrics = Path(view.run_dir) / "metrics.jsonl"
    wait_for_file(metrics, what="the probe never started")
    job = read_job(str(view.job_id))
    assert job is not None
    return job, metrics


def _still_growing(metrics: Path) -> bool:
    before = metrics.stat().st_size
    time.sleep(1.0)
    return metrics.stat().st_size != before


def test_killed_runner_takes_its_job_with_it_before_node_fail(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=600, interval=0.1)
    job, metrics = _running_job(run_id, store)
    os.kill(int(job["runner_pid"]), signal.SIGKILL)  # the job's processes live on, orphaned
    assert wait_terminal(store, run_id, timeout=30).state == JobState.NODE_FAIL.value
    assert job_processes(str(job["job_id"])) == []
    assert not _still_growing(metrics), "a second training could now run next to the survivor"


def test_killed_job_script_leaves_no_training_behind(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=600, interval=0.1)
    job, metrics = _running_job(run_id, store)
    os.kill(int(job["job_pid"]), signal.SIGKILL)  # the script's shell; launcher and workers remain
    final = wait_terminal(store, run_id, timeout=30)
    assert final.state == JobState.FAILED.value and final.exit_code == 137
    assert job_processes(str(job["job_id"])) == []
    assert not _still_growing(metrics)


def test_killed_runner_takes_torchrun_workers_in_their_own_sessions(isolated_hpcai: Path, tmp_path: Path) -> None:
    """The supervisor, torchrun and each worker start sessions of their own: a sweep of the job's process
    group alone left the training running after `kill -9` of the runner while status said it was stopped."""
    pytest.importorskip("torch", reason="torchrun is the launcher under test (the `train` extra)")
    from hpcai.flows.resolve import prepare_job
    from hpcai.flows.runs.submission import submit_run
    from hpcai.spec.jobspec import Overrides
    from hpcai.spec.userapp import program_workload

    script = tmp_path / "loop.py"
    script.write_text("import time\nfor i in range(10**6):\n    print(f'step {i} loss: 1.0', flush=True)\n"
                      "    time.sleep(0.1)\n")  # fmt: skip
    workload = program_workload(str(script), [], module=None, launcher="torchrun", accelerate_config=None,
                                metrics_pattern=None, stop_signal=None, stop_grace_s=5, hang_timeout_s=None,
                                checkpoint_pattern=None, resume_args=None)  # fmt: skip
    assert workload is not None
    store = Store()
    run_id = str(submit_run(prepare_job(workload, "local", Overrides(run_id="loop-killed-runner")), store)["run_id"])
    job, metrics = _running_job(run_id, store)
    deadline = time.monotonic() + 60
    while len(job_processes(str(job["job_id"]))) < 5:  # bash, agent, supervisor, torchrun, 2 workers
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(int(job["runner_pid"]), signal.SIGKILL)
    assert wait_terminal(store, run_id, timeout=30).state == JobState.NODE_FAIL.value
    assert job_processes(str(job["job_id"])) == []
    assert not _still_growing(metrics), "a second training could now run next to the survivor"


def test_cancel_before_the_runner_starts_is_not_lost(isolated_hpcai: Path, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\ntouch {mark}\n")
    write_job({"job_id": "L0000aace", "script": str(script), "run_dir": str(tmp_path), "walltime_s": 60,
               "state": "PENDING", "submitted": time.time()})  # fmt: skip
    LocalScheduler(LocalTransport()).cancel("L0000aace")  # lands before the runner has read the job
    subprocess.run(
        [sys.executable, "-m", "hpcai.backends.schedulers.local_runner", str(job_file("L0000aace"))], timeout=30
    )
    assert not mark.exists()
    assert LocalScheduler(LocalTransport()).states(["L0000aace"])["L0000aace"].state is JobState.CANCELLED


@pytest.mark.slow  # real job scripts against real timers: tens of seconds
def test_a_requeued_local_job_gets_a_fresh_walltime(probe_workload: str) -> None:
    """30 s walltime, asked to checkpoint 10 s before it: 35 s of work needs a second attempt that runs
    past the first attempt's deadline, as a requeued Slurm job may."""
    store = Store()
    run_id = submit_probe(store, "local", time_limit="00:00:30", lines=350, interval=0.1, honour_stop="true")
    final = wait_terminal(store, run_id, timeout=180)
    events = [json.loads(x)["event"] for x in (Path(final.run_dir) / "attempts.jsonl").read_text().splitlines()]
    assert final.state == JobState.COMPLETED.value, (final, events)
    assert events.count("requeue") >= 1 and events[-1] == "end"
    steps = [json.loads(x)["step"] for x in (Path(final.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 351))
    # Each launch is an attempt of its own: the requeued ones ended REQUEUED (85), the last one completed.
    attempts = store.attempts(run_id)
    assert len(attempts) == events.count("requeue") + 1 and final.attempt == len(attempts)
    assert all(a.state == "REQUEUED" and a.exit_code == 85 and a.ended for a in attempts[:-1]), attempts
    assert attempts[-1].state == "COMPLETED" and len({a.job_id for a in attempts}) == 1


@pytest.mark.slow  # real job scripts against real timers: tens of seconds
def test_a_second_attempt_never_trains_next_to_a_live_one(probe_workload: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run lease: a second copy of the job script (a duplicate submission, a resume while the old job
    still runs somewhere) waits for the live attempt's lease to go stale, and gives up while it is fresh."""
    monkeypatch.setattr("hpcai.render.script.LEASE_REFRESH_S", 1)
    monkeypatch.setattr("hpcai.render.script.LEASE_STALE_S", 4)
    store = Store()
    run_id = submit_probe(store, "local", lines=250, interval=0.1)
    job, metrics = _running_job(run_id, store)
    run_dir = metrics.parent
    assert (run_dir / ".lease").read_text().split()[0] == job["job_id"]
    env = {**os.environ, "HPCAI_LOCAL_JOB_ID": "Lsecond"}
    second = subprocess.run(["bash", str(run_dir / "job.sh")], env=env, capture_output=True, text=True, timeout=90)
    assert second.returncode == 88 and "another attempt" in second.stderr
    assert (run_dir / "job_id").read_text().strip() == job["job_id"]  # the live attempt's files untouched
    final = wait_terminal(store, run_id, timeout=120)
    assert final.state == JobState.COMPLETED.value
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, 251)), "two trainings wrote into one run"
    assert not (run_dir / ".lease").exists()  # released at the end


def test_an_abandoned_lease_is_taken_over(probe_workload: str, tmp_path: Path) -> None:
    """A lease whose holder died with its node stops being refreshed: the next attempt takes it over."""
    store = Store()
    run_id = submit_probe(store, "local", lines=1)
    run_dir = Path(wait_terminal(store, run_id, timeout=60).run_dir)
    lease = run_dir / ".lease"
    lease.write_text("Ldead node17\n")
    os.utime(lease, (time.time() - 600, time.time() - 600))
    env = {**os.environ, "HPCAI_LOCAL_JOB_ID": "Lnext"}
    again = subprocess.run(["bash", str(run_dir / "job.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert not lease.exists()


def test_a_finished_job_leaves_no_terminated_noise_in_its_error_log(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=1)
    view = wait_terminal(store, run_id, timeout=60)
    assert view.state == JobState.COMPLETED.value
    errors = "".join(p.read_text() for p in (Path(view.run_dir) / "logs").glob("*.err"))
    assert "Terminated" not in errors and "Killed" not in errors
