"""The README's main job end to end: `hpcai submit llava` on the local cluster, then the walltime path:
SIGUSR1 to the job -> STOP -> checkpoint -> requeue -> resume -> COMPLETED."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hpcai.backends.schedulers.local import read_job
from hpcai.flows.resolve import prepare_job
from hpcai.flows.runs.control import follow_logs
from hpcai.flows.runs.submission import submit_run
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Store
from tests.helpers import wait_for, wait_terminal
from tests.train.launch import launch

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")


def test_submit_llava_on_local_trains_and_shows_progress() -> None:
    store = Store()
    rendered = prepare_job("llava", "local", Overrides(set=("max_steps=30", "samples=64"), run_id="quick"))
    submit_run(rendered, store)
    view = wait_terminal(store, "quick", timeout=300)
    assert view.state == "COMPLETED", view
    assert view.step == 30 and view.loss is not None
    lines: list[str] = []
    follow_logs(store, "quick", write=lines.append)
    assert "checkpoint step-00000030" in "".join(lines)


def test_walltime_signal_checkpoints_requeues_and_resumes_exactly(isolated_hpcai: Path) -> None:
    store = Store()
    params = ("max_steps=200", "samples=64", "checkpoint_every=1000", "per_device_batch_size=2")
    submit_run(prepare_job("clip", "local", Overrides(set=params, run_id="walltime")), store)
    view = wait_for(store, "walltime", {"RUNNING"})
    metrics = Path(view.run_dir) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 5:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    job = read_job(str(view.job_id))
    assert job is not None
    os.kill(int(job["job_pid"]), signal.SIGUSR1)  # what Slurm's --signal=B:USR1 does before walltime
    final = wait_terminal(store, "walltime", timeout=600)
    assert final.state == "COMPLETED" and final.step == 200
    events = [json.loads(x)["event"] for x in (Path(view.run_dir) / "attempts.jsonl").read_text().splitlines()]
    assert events == ["start", "end", "requeue", "start", "end"]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert (Path(view.run_dir) / "checkpoints" / "latest").read_text().strip() == "step-00000200"
    assert steps == list(range(1, 201))  # resumed where it stopped, not restarted
    # The losses are exactly those of a run that was never interrupted.
    reference = isolated_hpcai / "reference"
    done = launch("clip", reference, params=dict(p.split("=") for p in params))
    assert done.returncode == 0, done.stderr[-2000:]
    interrupted = [json.loads(x)["loss"] for x in metrics.read_text().splitlines()]
    assert interrupted == [json.loads(x)["loss"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
