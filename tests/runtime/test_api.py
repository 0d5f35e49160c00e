"""The guard for users' own loops: a rollback decision read from the run folder is validated field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.runtime.api import Guard, ResumePlan, load_guard_state, read_pending_decision


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"action": "give_up", "checkpoint_step": 3, "lr_scale": 0.5}',
        '{"action": "rollback", "checkpoint_step": "3", "lr_scale": 0.5}',
        '{"action": "rollback", "checkpoint_step": true, "lr_scale": 0.5}',
        '{"action": "rollback", "checkpoint_step": -1, "lr_scale": 0.5}',
        '{"action": "rollback", "checkpoint_step": 1e400, "lr_scale": 0.5}',
        '{"action": "rollback", "checkpoint_step": 3, "lr_scale": 40}',
        '{"action": "rollback", "checkpoint_step": 3, "lr_scale": 0}',
        '{"action": "rollback", "checkpoint_step": 3, "lr_scale": NaN}',
    ],
)
def test_a_malformed_or_hostile_decision_is_no_decision(tmp_path: Path, text: str) -> None:
    (tmp_path / "ROLLBACK.json").write_text(text)
    assert read_pending_decision(tmp_path) is None


def test_a_rollback_decision_is_read_and_retired(tmp_path: Path) -> None:
    (tmp_path / "ROLLBACK.json").write_text(json.dumps(
        {"action": "rollback", "checkpoint_step": 40, "lr_scale": 0.25, "skip_from": 40, "skip_to": 60}))  # fmt: skip
    guard = Guard(tmp_path)
    plan = guard.resume_plan()
    assert plan == ResumePlan(40, 0.25, 40, 60)
    guard.retire(plan)
    assert read_pending_decision(tmp_path) is None and list(tmp_path.glob("rollback-applied-*.json"))


def test_guard_state_round_trips_and_a_damaged_one_is_ignored(tmp_path: Path) -> None:
    guard = Guard(tmp_path)
    for step in range(1, 40):
        guard.report(step, 2.0 + 0.01 * (step % 3))
    guard.lr_scale = 0.5
    guard.save_state(tmp_path)
    detector, scale = load_guard_state(tmp_path)
    assert scale == 0.5 and detector is not None and detector.seen == 39
    (tmp_path / "hpcai_guard.json").write_text('{"lr_scale": 0.5, "detector": {"config": {}, "events": [{"x": 1}]}}')
    assert load_guard_state(tmp_path) == (None, 1.0)


def test_outside_a_job_the_guard_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPCAI_RUN_DIR", raising=False)
    guard = Guard()
    assert not guard.active and guard.report(1, float("nan")) is None and not guard.should_stop()
