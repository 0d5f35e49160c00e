"""The headline: a spike injected at step K is detected in the job, the job itself relaunches the
training inside its own allocation (same job id, no queue) from a checkpoint before K with the LR
halved, training passes K and the run completes; the store and `status` show the lineage. On the local
backend and on the real Slurm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.flows.resolve import prepare_job
from hpcai.flows.runs.submission import submit_run
from hpcai.flows.runs.views import run_detail
from hpcai.rundir.contract import EXIT_GAVE_UP, EXIT_ROLLBACK
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")

SPIKE = ("stage=finetune", "lr=2e-3", "samples=64", "max_steps=40", "checkpoint_every=10", "inject_spike_at=25")


def submit(cluster: str, run_id: str, *extra: str) -> Store:
    store = Store()
    overrides = Overrides(set=(*SPIKE, *extra), run_id=run_id, time="00:30:00")
    submit_run(prepare_job("llava", cluster, overrides), store)
    return store


def settle(store: Store, run_id: str, timeout: float = 600) -> dict[str, object]:
    """Wait until the run's latest attempt has ended and no further attempt appears."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        wait_terminal(store, run_id, timeout=max(1, deadline - time.monotonic()))
        time.sleep(2)
        detail = run_detail(store, run_id)
        if detail["state"] not in {"SUBMITTING", "PENDING", "RUNNING", "COMPLETING"}:
            return detail
        assert time.monotonic() < deadline


@pytest.mark.parametrize("cluster", ["local", "local-slurm"])
def test_injected_spike_is_rolled_back_by_the_job_and_the_run_completes(
    cluster: str, request: pytest.FixtureRequest
) -> None:
    if cluster == "local-slurm":
        request.getfixturevalue("slurm_cluster")
    run_id = f"spike-{cluster}"
    # on Slurm with a host sync every 4 steps (the GPU default is 10): the guard reads the window's losses
    # at its end, before any checkpoint, and still rolls back to the checkpoint before the spike
    store = submit(cluster, run_id, *(["sync_every=4"] if cluster == "local-slurm" else []))
    detail = settle(store, run_id)
    attempts = detail["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 2, attempts
    first, second = attempts
    assert first["exit_code"] == EXIT_ROLLBACK and "divergence at step 26" in first["reason"]
    assert second["resumed_from"] == "step-00000020" and second["lr_scale"] == 0.5
    assert second["state"] == "COMPLETED" and detail["state"] == "COMPLETED" and detail["step"] == 40
    assert first["job_id"] == second["job_id"]  # relaunched inside the allocation: no new submission
    assert "relaunched in the same job" in first["reason"]
    kinds = {(e["kind"], e["status"]) for e in detail["events"]}  # type: ignore[union-attr]
    assert ("divergence", "persistent") in kinds
    run_dir = Path(str(detail["run_dir"]))
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-20:] == list(range(21, 41))  # the second attempt went from step 20 past K to the end
    human = run_cli("status", run_id)
    assert "rolled back" in human.stdout and "step-00000020" in human.stdout and "0.5" in human.stdout


def test_exceeding_max_rollbacks_stops_with_a_clear_reason() -> None:
    store = submit("local", "give-up", "max_rollbacks=0")
    detail = settle(store, "give-up")
    (attempt,) = detail["attempts"]  # type: ignore[misc]
    assert attempt["exit_code"] == EXIT_GAVE_UP and attempt["state"] == "FAILED"
    assert "max_rollbacks=0" in attempt["reason"] and "gave up" in attempt["reason"]


@pytest.mark.parametrize("transient", [True, False])
def test_the_rerun_check_tells_a_transient_fault_from_bad_data(transient: bool) -> None:
    run_id = f"rerun-{'transient' if transient else 'data'}"
    nan = ("inject_spike_at=0", "inject_nan_at=25", f"inject_nan_transient={str(transient).lower()}",
           "rerun_check=true")  # fmt: skip
    store = submit("local", run_id, *nan)
    detail = settle(store, run_id)
    assert detail["state"] == "COMPLETED" and detail["step"] == 40, detail
    decisions = detail["decisions"]
    assert isinstance(decisions, list)
    actions = [(d["action"], d.get("verdict"), d.get("lr_scale")) for d in decisions]
    if transient:  # re-run once as it was, finite this time: training went on at the same LR
        assert actions == [("rollback", None, 1.0), ("rerun_check", "transient", None)]
        assert [a["lr_scale"] for a in detail["attempts"]] == [1.0, 1.0]  # type: ignore[index]
    else:  # non-finite again from the same checkpoint: the data, so the LR cut follows
        assert actions == [("rollback", None, 1.0), ("rerun_check", "data", None), ("rollback", None, 0.5)]
        assert detail["attempts"][-1]["lr_scale"] == 0.5  # type: ignore[index]
    assert decisions[0]["rerun_step"] == 25 and decisions[0]["checkpoint_step"] == 20


def test_resume_by_hand_plot_and_terminal_chart(tmp_path: Path) -> None:
    store = submit("local", "by-hand")
    settle(store, "by-hand")
    result = run_cli("resume", "by-hand", "--from-step", "35", "--lr-scale", "0.25", "--skip-batches", "3", "--json")
    assert result.returncode == 0, result.stderr
    resumed = json.loads(result.stdout)
    assert resumed["attempt"] == 3 and resumed["checkpoint_step"] == 30 and resumed["lr_scale"] == 0.25
    detail = settle(store, "by-hand")
    third = detail["attempts"][-1]  # type: ignore[index]
    assert third["resumed_from"] == "step-00000030" and third["skipped_batches"] == "30-33"
    assert third["state"] == "COMPLETED"
    decisions = detail["decisions"]
    assert decisions[-1]["by"] == "hpcai resume"  # type: ignore[index]
    png = tmp_path / "loss.png"
    plotted = run_cli("plot", "by-hand", "-o", str(png))
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    chart = run_cli("plot", "by-hand")
    assert "3 attempt(s)" in chart.stdout and "R" in chart.stdout
    data = json.loads(run_cli("plot", "by-hand", "--json").stdout)
    assert len(data["attempts"]) == 3 and data["rollbacks"][0] == {"onset_step": 26, "to_step": 20}
    busy = run_cli("resume", "by-hand", "--checkpoint", "step-00000099")
    assert busy.returncode == 2 and "not a complete checkpoint" in busy.stderr
