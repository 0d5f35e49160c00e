"""`hpcai watch`: the client-side guard for a workload without the hpcai runtime (the probe, whose loss
is read from its output with the workload's regex)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from hpcai.flows.runs.watch import watch_run
from hpcai.store.db import Store
from tests.helpers import submit_probe


@pytest.mark.slow
def test_watch_cancels_a_diverging_run_without_checkpoints(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=200, interval=0.1, diverge_at=30)
    said: list[str] = []
    result = watch_run(store, run_id, say=said.append, poll_s=0.5, max_wait_s=120)
    assert result["action"] == "stopped" and "no complete checkpoint" in result["reason"]
    attempt = store.attempts(run_id)[-1]
    assert attempt.state == "CANCELLED" and "stopped by hpcai watch" in str(attempt.reason)
    assert any("divergence at step 30" in line for line in said)


@pytest.mark.slow
def test_watch_rolls_back_and_the_next_attempt_completes(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=70, interval=0.1, diverge_at=30, checkpoint_every=5)
    said: list[str] = []
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(watch_run(store, run_id, say=said.append, poll_s=0.5)))
    thread.start()
    thread.join(timeout=180)
    assert result.get("action") == "finished" and result["state"] == "COMPLETED" and result["rollbacks"] == 1, said
    first, second = store.attempts(run_id)
    assert first.state == "CANCELLED" and "rolled back by hpcai watch" in str(first.reason)
    assert second.resumed_from == "step-00000025" and second.lr_scale == 0.5
    run_dir = Path(store.run(run_id).run_dir)
    decisions = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    assert [d["by"] for d in decisions] == ["hpcai watch", "hpcai resume"]
