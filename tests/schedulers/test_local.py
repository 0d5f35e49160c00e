"""The local backend's own edge: a runner that vanishes reads as a node failure, never as running."""

from __future__ import annotations

import os
import signal

from hpcai.schedulers import JobState
from hpcai.schedulers.local import read_job
from hpcai.store import Store
from tests.helpers import submit_probe, wait_for, wait_terminal


def test_killed_runner_is_reported_as_node_fail(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=600, interval=0.1)
    view = wait_for(store, run_id, {"RUNNING"})
    job = read_job(str(view.job_id))
    assert job is not None
    os.kill(int(job["runner_pid"]), signal.SIGKILL)
    os.killpg(int(job["job_pid"]), signal.SIGKILL)
    assert wait_terminal(store, run_id, timeout=30).state == JobState.NODE_FAIL.value
