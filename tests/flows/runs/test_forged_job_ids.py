"""Job ids read from a run folder or from scheduler output are checked against the scheduler's format
before they reach a command line: a planted `{"event": "submitted", "job_id": "-uroot"}` made `hpcai cancel`
run `scancel -uroot` (every job of the user)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.backends.schedulers.base import SchedulerError
from hpcai.backends.schedulers.local import LocalScheduler
from hpcai.backends.schedulers.pbs import PbsScheduler
from hpcai.backends.schedulers.slurm import SlurmScheduler
from hpcai.backends.session import Backend, Session
from hpcai.backends.transport.local import LocalTransport
from hpcai.flows.runs.control import cancel_run
from hpcai.flows.runs.reconcile import refresh
from hpcai.spec.profiles import load_profile
from hpcai.store.db import Store
from tests.flows.runs.test_recorded_slurm import JOB, RecordedSlurm, event, start_run

FORGED = ["-uroot", "--user=root", "12 13", "1;id", "../../etc/passwd", "", "4242\n", "L1234", "1e3"]


@pytest.mark.parametrize("scheduler", [SlurmScheduler, PbsScheduler, LocalScheduler])
@pytest.mark.parametrize("job_id", FORGED)
def test_a_forged_id_reaches_no_command(scheduler: type, job_id: str) -> None:
    transport = RecordedSlurm()
    backend = scheduler(transport)
    with pytest.raises(SchedulerError, match=r"not a .* job id"):
        backend.cancel(job_id)
    with pytest.raises(SchedulerError, match=r"not a .* job id"):
        backend.requeue(job_id)
    assert backend.states([job_id])[job_id].state.value == "UNKNOWN"
    assert transport.asked == [] and backend.warnings


def test_real_ids_pass() -> None:
    assert SlurmScheduler(LocalTransport()).valid_job_id("4242") and SlurmScheduler(LocalTransport()).valid_job_id(
        "7_3"
    )
    assert PbsScheduler(LocalTransport()).valid_job_id("8123.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov")
    assert LocalScheduler(LocalTransport()).valid_job_id("L0a1b2c3d")


def test_a_planted_submitted_line_is_not_recorded_and_cancel_sends_nothing_forged(tmp_path: Path) -> None:
    store = Store()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = start_run(store, run_dir)
    event(run_dir, event="start", epoch=1000.0)
    event(run_dir, event="end", epoch=1100.0, rc=86)
    with open(run_dir / "attempts.jsonl", "a") as handle:
        handle.write(json.dumps({"event": "submitted", "job_id": "-uroot", "after": JOB, "why": "rollback"}) + "\n")
    transport = RecordedSlurm()
    transport.replies["squeue"].append((1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    transport.replies["sacct"].append((0, f"{JOB}|FAILED|86:0|None|2026-11-24T10:00:00|2026-11-24T10:40:00|x\n", ""))
    session = Session()
    session._backends["juwels-booster"] = Backend(load_profile("juwels-booster"), transport, SlurmScheduler(transport))
    with session:
        refresh(store, [run], session)
        assert [a.job_id for a in store.attempts("rec")] == [JOB]
        transport.replies["squeue"].append((1, "", "slurm_load_jobs error: Invalid job id specified\n"))
        transport.replies["sacct"].append(
            (0, f"{JOB}|FAILED|86:0|None|2026-11-24T10:00:00|2026-11-24T10:40:00|x\n", "")
        )
        result = cancel_run(store, "rec")
    assert result["cancelled"] is False
    assert not any(argv[0] == "scancel" for argv in transport.asked)
