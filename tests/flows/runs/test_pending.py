"""Why a job waits, in words: Slurm's pending reasons translated with what to do, and shown by `status RUN`
(here driven by recorded squeue output: no Slurm needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcai.backends.schedulers.slurm import SlurmScheduler
from hpcai.backends.session import Backend, Session
from hpcai.flows.runs.pending import explain_pending, never_starts
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.views import views
from hpcai.spec.profiles import load_profile
from hpcai.store.db import Store
from tests.flows.runs.test_recorded_slurm import JOB, RecordedSlurm, start_run


@pytest.mark.parametrize(
    ("reason", "says", "never"),
    [
        ("Priority", "ahead of it", False),
        ("Resources", "enough nodes", False),
        ("(ReqNodeNotAvail, Reserved for maintenance)", "maintenance", False),
        ("ReqNodeNotAvail, UnavailableNodes:jwb[0001-0002]", "down, drained", False),
        ("QOSMaxNodePerUserLimit", "your other jobs end", False),
        ("QOSMaxWallDurationPerJobLimit", "shorter --time", True),
        ("AssocGrpBillingMinutes", "allocation is used up", False),
        ("BeginTime", "starts by itself", False),
        ("Dependency", "another job", False),
        ("DependencyNeverSatisfied", "cancel it", True),
        ("PartitionTimeLimit", "shorter", True),
        ("InvalidAccount", "hpcai budget", True),
    ],
)
def test_each_pending_reason_says_what_it_means_and_what_to_do(reason: str, says: str, never: bool) -> None:
    meaning = explain_pending(reason)
    assert meaning is not None and says in meaning, meaning
    assert never_starts(reason) is never


def test_no_reason_or_an_unknown_one_adds_nothing() -> None:
    assert explain_pending(None) is None and explain_pending("None") is None
    assert explain_pending("SomethingNewInSlurm25") is None


def _pending_run(tmp_path: Path) -> tuple[Store, Path, RecordedSlurm, Session]:
    """A run whose job waits in Slurm's queue, and a session whose scheduler answers from recorded output."""
    store = Store()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start_run(store, run_dir)
    store.update_attempt("rec", 1, job_id=JOB, state="PENDING")
    transport = RecordedSlurm()
    session = Session()
    session._backends["juwels-booster"] = Backend(load_profile("juwels-booster"), transport, SlurmScheduler(transport))
    return store, run_dir, transport, session


def test_status_says_why_a_recorded_pending_job_waits(tmp_path: Path) -> None:
    store, run_dir, transport, session = _pending_run(tmp_path)
    pending = f"{JOB}|PENDING|ReqNodeNotAvail, Reserved for maintenance|N/A|N/A|{run_dir}\n"
    transport.replies["squeue"] += [(0, pending, "")]
    with session:
        refresh(store, [store.run("rec")], session)
        (view,) = views(store, [store.run("rec")], session, with_progress=False)
    assert view.state == "PENDING" and view.waiting == "ReqNodeNotAvail, Reserved for maintenance"
    assert view.waiting_means is not None and "maintenance" in view.waiting_means


def test_status_run_shows_the_schedulers_start_estimate(tmp_path: Path) -> None:
    """`squeue --start` for a pending job, in `status RUN` (`expected_start`); N/A (not planned yet) is none."""
    from hpcai.flows.runs.views import run_detail

    store, run_dir, transport, session = _pending_run(tmp_path)
    pending = f"{JOB}|PENDING|Priority|N/A|N/A|{run_dir}\n"
    transport.replies["squeue"] += [(0, pending, ""), (0, "2026-12-08T09:30:00\n", ""),
                                    (0, pending, ""), (0, "N/A\n", "")]  # fmt: skip
    with session:
        detail = run_detail(store, "rec")
        assert detail["expected_start"] == "2026-12-08T09:30:00" and "ahead of it" in detail["waiting_means"]
        assert transport.asked[1][:2] == ["squeue", "--start"]
        assert run_detail(store, "rec")["expected_start"] is None
