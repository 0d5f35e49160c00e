"""`hpcai resume` refuses what would poison or duplicate a run, before anything is written or submitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal


@pytest.fixture
def failed_run(probe_workload: str) -> str:
    submitted = run_cli("submit", probe_workload, "--cluster", "local", "--set", "lines=2", "--set", "exit_code=3",
                        "--set", "checkpoint_every=1", "--run-id", "broken", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert wait_terminal(Store(), "broken", timeout=120).state == "FAILED"
    return "broken"


@pytest.mark.parametrize("scale", ["nan", "inf", "-1", "0"])
def test_a_poisoned_lr_scale_is_refused_before_anything_is_written(failed_run: str, scale: str) -> None:
    result = run_cli("resume", failed_run, "--lr-scale", scale)
    assert result.returncode == 2 and "--lr-scale" in result.stderr and "Traceback" not in result.stderr
    run_dir = Path(Store().run(failed_run).run_dir)
    assert not (run_dir / "ROLLBACK.json").exists() and not (run_dir / "decisions.jsonl").exists()
    assert len(Store().attempts(failed_run)) == 1
    assert run_cli("status", failed_run).returncode == 0


def test_a_malformed_checkpoint_name_is_refused(failed_run: str) -> None:
    garbage = Path(Store().run(failed_run).run_dir) / "checkpoints" / "step-abc"
    garbage.mkdir(parents=True)
    (garbage / "COMPLETE.json").write_text("{}")
    result = run_cli("resume", failed_run, "--checkpoint", "step-abc")
    assert result.returncode == 2 and "not a complete checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_a_completed_run_is_not_resumed(probe_workload: str) -> None:
    assert (
        run_cli("submit", probe_workload, "--cluster", "local", "--set", "lines=1", "--run-id", "done").returncode == 0
    )
    assert wait_terminal(Store(), "done", timeout=120).state == "COMPLETED"
    result = run_cli("resume", "done")
    assert result.returncode == 2 and "would do nothing" in result.stderr and "--from-step" in result.stderr
    assert len(Store().attempts("done")) == 1


def test_a_resume_appends_to_the_decision_log(failed_run: str) -> None:
    run_dir = Path(Store().run(failed_run).run_dir)
    (run_dir / "decisions.jsonl").write_text(json.dumps({"action": "note", "by": "the job"}) + "\n")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert checkpoints, "the probe wrote no checkpoint markers"
    result = run_cli("resume", failed_run, "--checkpoint", checkpoints[0], "--lr-scale", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    lines = (run_dir / "decisions.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["by"] == "the job" and json.loads(lines[1])["by"] == "hpcai resume"
    wait_terminal(Store(), failed_run, timeout=120)


def test_a_lease_the_ended_job_left_is_dropped_and_any_other_kept(tmp_path: Path) -> None:
    """A cancelled job killed before its exit trap leaves its run lease; the attempt `resume` submits would
    wait up to two minutes for it to go stale. resume drops a lease naming the last attempt's own (ended)
    job, and never one naming another job."""
    import time

    from hpcai.backends.transport import LocalTransport
    from hpcai.flows.runs.control import _drop_ended_lease
    from hpcai.store.db import Attempt, Run

    run = Run("r", "probe", "local", None, str(tmp_path), {}, time.time(), "CANCELLED")
    last = Attempt("r", 1, "L00ab", "CANCELLED", time.time(), None, None, None, None, None, 1.0, None)
    lease = tmp_path / ".lease"
    lease.write_text("L00cd somehost\n")
    _drop_ended_lease(LocalTransport(), run, last)
    assert lease.read_text() == "L00cd somehost\n"  # another job's: left to the job script
    lease.write_text("L00ab somehost\n")
    _drop_ended_lease(LocalTransport(), run, last)
    assert not lease.exists()
