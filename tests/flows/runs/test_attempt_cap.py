"""The job script bounds its own chain of jobs, whatever the Python side managed to do: a stale or
malformed ROLLBACK.json never submits another attempt, and a run stops at the total attempt cap."""

from __future__ import annotations

import json
from pathlib import Path

from hpcai.rundir.contract import EXIT_GAVE_UP, MAX_ATTEMPTS
from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal


def submit_into(run_dir: Path, probe: str, run_id: str, *settings: str) -> None:
    """Submit into `run_dir` holding the files an earlier attempt of the same run left there. `submit`
    refuses such a folder (it belongs to a run), so the check is switched off for this one call: these
    tests are about what the job script does with what it finds, as when it starts a later attempt."""
    from hpcai.backends.session import Session
    from hpcai.flows.resolve import prepare_job
    from hpcai.flows.runs import submission
    from hpcai.spec.jobspec import Overrides

    original = submission.check_target
    submission.check_target = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        with Session():
            rendered = prepare_job(probe, "local", Overrides(set=settings, run_id=run_id, run_dir=str(run_dir)))
            submission.submit_run(rendered, Store())
    finally:
        submission.check_target = original


def test_a_rollback_file_left_from_before_does_not_resubmit(probe_workload: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "stale"
    run_dir.mkdir()
    # Left by an attempt that crashed while applying it (or truncated): older than this attempt's start.
    (run_dir / "ROLLBACK.json").write_text('{"action": "rollback", "checkpoint_st')
    submit_into(run_dir, probe_workload, "stale", "lines=1", "exit_code=3")
    view = wait_terminal(Store(), "stale", timeout=120)
    assert view.state == "FAILED" and view.exit_code not in (None, 86)  # failed as itself, not "rolled back"
    events = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] in {"rollback", "submitted"}]
    assert len(Store().attempts("stale")) == 1


def test_a_run_stops_at_the_attempt_cap(probe_workload: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "capped"
    run_dir.mkdir()
    (run_dir / "attempt_count").write_text(f"{MAX_ATTEMPTS}\n")  # as after a long chain of self-submissions
    submit_into(run_dir, probe_workload, "capped", "lines=1")
    view = wait_terminal(Store(), "capped", timeout=120)
    assert view.state == "FAILED" and view.exit_code == EXIT_GAVE_UP
    assert "the cap of 30 is reached" in json.loads((run_dir / "GAVE_UP.json").read_text())["reason"]
    assert "probe step" not in "".join(p.read_text() for p in (run_dir / "logs").glob("*"))  # nothing launched
    detail = json.loads(run_cli("status", "capped", "--json").stdout)
    assert "gave up" in (detail["reason"] or "")
