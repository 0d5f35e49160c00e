"""The goodput account: exact figures from a constructed run directory, plausible ones from a real run."""

from __future__ import annotations

import json
import time

import pytest

from hpcai.flows.runs.goodput import account
from tests.conftest import run_cli


def _steps(first: int, last: int, first_time: float, step_s: float = 2.0) -> list[dict[str, object]]:
    return [{"step": s, "loss": 1.0, "time": first_time + (s - first) * step_s, "step_s": step_s}
            for s in range(first, last + 1)]  # fmt: skip


def _run_directory(*, finished: bool = True) -> tuple[list[dict[str, object]], ...]:
    """Three attempts: a rollback (job 100 -> 101) from step 5 after step 10, then a walltime requeue of
    job 101 from the checkpoint at step 10 after step 12; a hang record in the last attempt."""
    log: list[dict[str, object]] = [
        {"event": "start", "job_id": "100", "epoch": 1000.0, "host": "n1", "rc": None},
        {"event": "end", "job_id": "100", "epoch": 1060.0, "rc": 86},
        {"event": "rollback", "job_id": "100", "epoch": 1060.0, "rc": 86},
        {"event": "submitted", "job_id": "101", "after": "100", "time": "2026-11-24T07:00:00Z"},
        {"event": "start", "job_id": "101", "epoch": 1100.0, "host": "n2", "rc": None},
        {"event": "end", "job_id": "101", "epoch": 1140.0, "rc": 85},
        {"event": "requeue", "job_id": "101", "epoch": 1140.0, "rc": 85},
        {"event": "start", "job_id": "101", "time": "1970-01-01T00:20:00Z", "host": "n3", "rc": None},  # 1200, no epoch
    ]
    if finished:
        log.append({"event": "end", "job_id": "101", "epoch": 1230.0, "rc": 0})
    metrics = [*_steps(1, 10, 1032.0), *_steps(6, 12, 1122.0), *_steps(11, 15, 1212.0)]
    timeline = [
        {"event": "checkpoint", "time": 1042.5, "step": 5, "seconds": 3.0},
        {"event": "checkpoint", "time": 1131.0, "step": 10, "seconds": 4.0},
        {"event": "hang", "time": 1225.0, "stalled_s": 3.0},
    ]
    return log, metrics, timeline


def test_goodput_equals_the_figures_computed_by_hand() -> None:
    log, metrics, timeline = _run_directory()
    result = account(log, metrics, timeline, nodes=2, submitted={"100": 990.0, "101": 1065.0}, now=5000.0)
    first, second, third = result.attempts
    assert (first.allocated_s, first.queue_wait_s, first.startup_s) == (60, 10, 30)
    assert (first.steps_run, first.steps_kept, first.productive_s, first.lost_s) == (10, 5, 10, 10)
    assert (first.checkpoint_s, first.hang_s, first.other_s) == (3, 0, 7)
    assert (second.allocated_s, second.queue_wait_s, second.startup_s) == (40, 35, 20)
    assert (second.steps_run, second.steps_kept, second.productive_s, second.lost_s) == (7, 5, 10, 4)
    assert (second.checkpoint_s, second.other_s) == (4, 2)
    # The requeued job waited from its previous end, not from its first submission.
    assert (third.allocated_s, third.queue_wait_s, third.startup_s, third.productive_s) == (30, 60, 10, 10)
    assert (third.hang_s, third.other_s, third.exit_code, third.running) == (3, 7, 0, False)
    summary = result.to_json()
    assert summary["ettr"] == round(30 / 130, 4)
    assert summary["allocated_s"] == 130 and summary["productive_s"] == 30 and summary["lost_s"] == 14
    assert summary["queue_wait_s"] == 105 and summary["checkpoint_s"] == 7 and summary["hang_s"] == 3
    assert summary["node_hours_allocated"] == round(130 * 2 / 3600, 4)
    assert (summary["steps_kept"], summary["steps_lost"]) == (15, 7)


def test_a_running_attempt_is_counted_until_now_and_damage_is_skipped() -> None:
    log, metrics, timeline = _run_directory(finished=False)
    log = [*log, {"event": "start"}, {"epoch": "x"}, "garbage"]  # type: ignore[list-item]
    metrics = [*metrics, {"step": "nan"}, {"step": 3}]
    result = account([r for r in log if isinstance(r, dict)], metrics, timeline, nodes=1, now=1240.0)
    last = result.attempts[-1]
    assert last.running and last.allocated_s == 40 and last.productive_s == 10
    assert result.to_json()["ettr"] == round(30 / 140, 4)


def test_an_attempt_the_scheduler_ended_without_an_end_record_is_not_running() -> None:
    """Cancelled or killed with its node: no end record, but the scheduler's end closes it (counted as
    running until now, it made a cancelled attempt "1*" and the ETTR over 100 %)."""
    log, metrics, timeline = _run_directory(finished=False)
    result = account(log, metrics, timeline, nodes=1, ended={"101": 1235.0, "100": 1060.0}, now=9000.0)
    last = result.attempts[-1]
    assert not last.running and last.allocated_s == 35
    unknown = account(log, metrics, timeline, nodes=1, ended={"101": None}, now=9000.0).attempts[-1]
    assert not unknown.running and unknown.allocated_s == 0  # ended, time unknown: nothing invented
    early = account(log, metrics, timeline, nodes=1, ended={"101": 10.0}, now=9000.0).attempts[-1]
    assert early.allocated_s == 0  # a forged end before the start never goes negative


@pytest.mark.usefixtures("isolated_hpcai")
def test_a_real_run_has_a_plausible_account() -> None:
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    done = run_cli("submit", "llava", "--set", "max_steps=12", "--set", "checkpoint_every=6", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    deadline = time.monotonic() + 240
    detail: dict[str, object] = {}
    while time.monotonic() < deadline:
        detail = json.loads(run_cli("status", run_id, "--json").stdout)
        if detail["state"] in {"COMPLETED", "FAILED", "CANCELLED"}:
            break
        time.sleep(2)
    assert detail["state"] == "COMPLETED"
    goodput = detail["goodput"]
    assert isinstance(goodput, dict)
    (attempt,) = goodput["attempts"]
    assert attempt["steps_kept"] == attempt["steps_run"] == 12 and goodput["lost_s"] == 0
    assert 0 < goodput["ettr"] < 1 and goodput["productive_s"] > 0 and goodput["checkpoint_s"] > 0
    parts = sum(goodput[k] for k in ("startup_s", "productive_s", "checkpoint_s", "other_s"))
    assert abs(parts - goodput["allocated_s"]) < 0.01
    assert goodput["startup_s"] > goodput["productive_s"] / 12  # imports and model build take longer than a step
    shown = run_cli("status", run_id)
    assert "goodput" in shown.stdout and "ETTR (productive / allocated)" in shown.stdout
