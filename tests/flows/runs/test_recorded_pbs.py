"""The fast tier: the status state machine on PBS Pro, driven by recorded `qstat -f` output (as PBS Pro 2022
prints it on Polaris) through a transport that answers from a script of replies, while the run folder's
files are real. A walltime stop on PBS is a new job (the job script submits the next attempt with qsub): the
run is followed under it, the first attempt is REQUEUED with exit 85, the second completes."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from hpcai.backends.schedulers.pbs import PbsScheduler
from hpcai.backends.session import Backend, Session
from hpcai.backends.transport.base import CommandResult
from hpcai.backends.transport.local import LocalTransport
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.views import run_detail
from hpcai.spec.profiles import load_profile
from hpcai.store.db import Run, Store

SERVER = "polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
FIRST, SECOND = f"1234.{SERVER}", f"1240.{SERVER}"


def qstat(job: str, state: str, *, exit_status: int | None = None) -> str:
    lines = [f"Job Id: {job}", "    Job_Name = hpcai-llava", f"    job_state = {state}",
             "    Resource_List.select = 2:ncpus=32:ngpus=4:system=polaris",
             "    Variable_List = PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,PBS_O_PATH=/usr/bin:/bi",
             "\tn,PBS_O_SHELL=/bin/bash"]  # fmt: skip
    if exit_status is not None:
        lines.append(f"    Exit_status = {exit_status}")
    return "\n".join(lines) + "\n\n"


class RecordedPbs(LocalTransport):
    """Files from this machine; `qstat` answered from recorded output, in order of the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[tuple[int, str, str]] = []
        self.asked: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 60, **_: object) -> CommandResult:  # type: ignore[override]
        self.asked.append(list(argv))
        assert argv[0] == "qstat", argv  # nothing else may be asked of the scheduler here
        code, out, err = self.replies.pop(0)
        return CommandResult(list(argv), code, out, err)


def event(run_dir: Path, **record: object) -> None:
    with open(run_dir / "attempts.jsonl", "a") as handle:
        handle.write(json.dumps({"time": "2026-12-07T10:00:00Z", **record}) + "\n")


def test_a_walltime_stop_on_pbs_is_followed_into_the_next_job(tmp_path: Path) -> None:
    store = Store()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = Run(id="pbs", workload="llava", cluster="polaris", stage=None, run_dir=str(run_dir),
              spec={"nodes": 2}, created=time.time(), state="SUBMITTING")  # fmt: skip
    store.create_run(run)
    store.update_attempt("pbs", 1, job_id=FIRST, state="PENDING")
    transport = RecordedPbs()
    session = Session()
    session._backends["polaris"] = Backend(load_profile("polaris"), transport, PbsScheduler(transport))
    with session:
        # Queued, then running.
        transport.replies.append((0, qstat(FIRST, "Q"), ""))
        refresh(store, [store.run("pbs")], session)
        assert store.attempts("pbs")[0].state == "PENDING"
        event(run_dir, event="start", job_id=FIRST, epoch=1000.0)
        transport.replies.append((0, qstat(FIRST, "R"), ""))
        refresh(store, [store.run("pbs")], session)
        assert store.attempts("pbs")[0].state == "RUNNING"
        # Walltime near: the training checkpointed (85) and the job submitted its successor with qsub.
        event(run_dir, event="end", job_id=FIRST, epoch=4000.0, rc=85)
        event(run_dir, event="submitted", job_id=SECOND, after=FIRST, why="walltime", resume="step-00000300")
        transport.replies.append((0, qstat(FIRST, "F", exit_status=85) + qstat(SECOND, "Q"), ""))
        transport.replies.append((0, qstat(SECOND, "Q"), ""))  # the new attempt may be asked about at once
        refresh(store, [store.run("pbs")], session)
        first, second = store.attempts("pbs")
        assert first.job_id == FIRST and first.state == "REQUEUED" and first.exit_code == 85, first
        assert second.job_id == SECOND and second.state == "PENDING" and second.resumed_from == "step-00000300"
        # The second job runs to the end.
        event(run_dir, event="start", job_id=SECOND, epoch=5000.0)
        event(run_dir, event="end", job_id=SECOND, epoch=6000.0, rc=0)
        transport.replies.append((0, qstat(SECOND, "F", exit_status=0), ""))
        refresh(store, [store.run("pbs")], session)
        assert [a.state for a in store.attempts("pbs")] == ["REQUEUED", "COMPLETED"]
        assert store.run("pbs").state == "COMPLETED"
        asked = len(transport.asked)
        detail = run_detail(store, "pbs")  # both attempts have ended: no scheduler call
        assert len(transport.asked) == asked
    assert [a["job_id"] for a in detail["attempts"]] == [FIRST, SECOND]
    assert all(call[:2] == ["qstat", "-f"] for call in transport.asked), transport.asked
    assert len(transport.asked) == 5 and not transport.replies  # one qstat per refresh, one for the new job
