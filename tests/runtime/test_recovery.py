"""The job's recovery decision after a launch ended early (hpcai.runtime.recovery), on run directories
built the way the node agents, watchdogs and ranks leave them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcai.runtime.recovery import HANG_RELAUNCHES_IN_PLACE, decide


def node(run_dir: Path, job: str, attempt: str, rank: int, name: str, *, end: dict[str, object] | None,
         t: float = 100.0) -> None:  # fmt: skip
    """A node agent's records: start, and end unless the node died with its task."""
    folder = run_dir / "nodes"
    folder.mkdir(parents=True, exist_ok=True)
    identity = {"job_id": job, "attempt": attempt, "node_rank": rank, "node": f"{name}.site", "scheduler_node": name}
    (folder / f"{job}-a{attempt}-node{rank}.start").write_text(json.dumps({**identity, "time": t}))
    if end is not None:
        record = {**identity, "rc": 1, "stopped": False, "hang": False, "last_step": 10, "time": t + 50, **end}
        (folder / f"{job}-a{attempt}-node{rank}.json").write_text(json.dumps(record))


def hang(run_dir: Path, job: str, attempt: str, rank: int, name: str, step: int) -> None:
    folder = run_dir / "hangs"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"job_id": job, "attempt": attempt, "node_rank": rank, "scheduler_node": name, "step": step}
    (folder / f"{job}-a{attempt}-node{rank}.json").write_text(json.dumps(record))


def node_log(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "node_failures.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_rollback_relaunches_in_place_and_other_outcomes_are_not_recovery_s(tmp_path: Path) -> None:
    assert decide(tmp_path, job="7", attempt="1", outcome="rollback", nodes=4, spares=0).line() == "relaunch - rollback"
    assert decide(tmp_path, job="7", attempt="1", outcome="requeue", nodes=4, spares=0).action == "none"
    assert node_log(tmp_path) == []


def test_a_node_killed_with_its_task_is_replaced_by_a_spare_or_sent_back_to_the_queue(tmp_path: Path) -> None:
    for rank, name in enumerate(["n1", "n2", "n3"]):
        node(tmp_path, "7", "1", rank, name, end={"rc": 143, "stopped": True})  # srun stopped the survivors
    node(tmp_path, "7", "1", 3, "n4", end=None)  # started, never ended: died with its node
    verdict = decide(tmp_path, job="7", attempt="1", outcome="failed", nodes=4, spares=1)
    assert verdict.line() == "relaunch n4 node-failure"
    (entry,) = node_log(tmp_path)
    assert entry["node"] == "n4" and entry["replaced"] is True and "no end record" in str(entry["why"])
    assert (tmp_path / "exclude_nodes").read_text() == "n4\n"
    # The spare is used up: the same failure in the next launch of this job goes back to the queue.
    for rank, name in enumerate(["n1", "n2", "n5"]):
        node(tmp_path, "7", "2", rank, name, end={"rc": 143, "stopped": True})
    node(tmp_path, "7", "2", 3, "n3", end=None)
    assert decide(tmp_path, job="7", attempt="2", outcome="failed", nodes=4, spares=1).line() == "queue n3 node-failure"


def test_a_launcher_killed_by_a_signal_nobody_sent_names_its_node(tmp_path: Path) -> None:
    node(tmp_path, "9", "3", 0, "a1", end={"rc": 1})
    node(tmp_path, "9", "3", 1, "a2", end={"rc": 137})  # OOM killer, or a kill -9: not a stop by srun
    assert decide(tmp_path, job="9", attempt="3", outcome="failed", nodes=2, spares=0).line() == "queue a2 node-failure"


def test_a_device_error_names_the_node_of_the_rank_that_failed_first(tmp_path: Path) -> None:
    node(tmp_path, "5", "1", 0, "g1", end={"rc": 1})
    node(tmp_path, "5", "1", 1, "g2", end={"rc": 1})
    errors = tmp_path / "errors"
    errors.mkdir()
    first = {"rank": 4, "host": "g2.site", "job_id": "5", "time": 120.0,
             "message": "CUDA error: unspecified launch failure"}  # fmt: skip
    later = {"rank": 0, "host": "g1.site", "job_id": "5", "time": 121.0,
             "message": "NCCL error: remote process exited or there was a network error"}  # fmt: skip
    (errors / "rank-4.json").write_text(json.dumps(first))
    (errors / "rank-0.json").write_text(json.dumps(later))
    assert decide(tmp_path, job="5", attempt="1", outcome="failed", nodes=2, spares=0).line() == "queue g2 node-failure"


def test_a_bug_in_the_training_code_stops_instead_of_looping(tmp_path: Path) -> None:
    node(tmp_path, "5", "1", 0, "g1", end={"rc": 1})
    node(tmp_path, "5", "1", 1, "g2", end={"rc": 1})
    errors = tmp_path / "errors"
    errors.mkdir()
    (errors / "rank-0.json").write_text(json.dumps({"rank": 0, "host": "g1.site", "job_id": "5", "time": 120.0,
                                                    "message": "KeyError: 'pixel_values'"}))  # fmt: skip
    assert decide(tmp_path, job="5", attempt="1", outcome="failed", nodes=2, spares=3).action == "stop"
    # An error record of an earlier job is not this launch's.
    (errors / "rank-1.json").write_text(json.dumps({"rank": 1, "host": "g2.site", "job_id": "4", "time": 120.0,
                                                    "message": "NCCL error: unhandled system error"}))  # fmt: skip
    assert decide(tmp_path, job="5", attempt="1", outcome="failed", nodes=2, spares=3).action == "stop"


def test_a_hang_names_the_node_behind_the_others(tmp_path: Path) -> None:
    node(tmp_path, "8", "1", 0, "h1", end={"rc": 1, "last_step": 500, "hang": True})
    node(tmp_path, "8", "1", 1, "h2", end={"rc": 1, "last_step": 499, "hang": True})  # held everyone up
    node(tmp_path, "8", "1", 2, "h3", end={"rc": 1, "last_step": 500})
    hang(tmp_path, "8", "1", 0, "h1", 500)
    # No spare: a first hang is relaunched in place (it may be transient), the suspect recorded.
    assert decide(tmp_path, job="8", attempt="1", outcome="hang", nodes=3, spares=0).line() == "relaunch - hang"
    assert [e["node"] for e in node_log(tmp_path)] == ["h2"] and not (tmp_path / "exclude_nodes").exists()
    # The same node hangs again: back to the queue without it.
    node(tmp_path, "8", "2", 0, "h1", end={"rc": 1, "last_step": 900})
    node(tmp_path, "8", "2", 1, "h2", end={"rc": 1, "last_step": 898, "hang": True})
    node(tmp_path, "8", "2", 2, "h3", end={"rc": 1, "last_step": 900})
    assert decide(tmp_path, job="8", attempt="2", outcome="hang", nodes=3, spares=0).line() == "queue h2 hang"
    assert (tmp_path / "exclude_nodes").read_text() == "h2\n"


def test_a_node_that_never_beat_held_up_the_ones_that_did(tmp_path: Path) -> None:
    node(tmp_path, "8", "1", 0, "h1", end={"rc": 1, "last_step": None, "progress": "setup", "hang": True})
    node(tmp_path, "8", "1", 1, "h2", end={"rc": 1, "last_step": None, "progress": None, "hang": True})
    assert decide(tmp_path, job="8", attempt="1", outcome="hang", nodes=2, spares=1).line() == "relaunch h2 hang"


def test_a_hang_suspect_is_replaced_at_once_when_a_spare_is_left(tmp_path: Path) -> None:
    node(tmp_path, "8", "1", 0, "h1", end={"rc": 1, "last_step": 30})
    node(tmp_path, "8", "1", 1, "h2", end={"rc": 1, "last_step": 29, "hang": True})
    assert decide(tmp_path, job="8", attempt="1", outcome="hang", nodes=2, spares=1).line() == "relaunch h2 hang"


def test_a_hang_with_no_node_behind_relaunches_in_place_a_bounded_number_of_times(tmp_path: Path) -> None:
    log = tmp_path / "attempts.jsonl"
    for attempt in range(1, HANG_RELAUNCHES_IN_PLACE + 2):
        for rank, name in enumerate(["h1", "h2"]):
            node(tmp_path, "8", str(attempt), rank, name, end={"rc": 1, "last_step": 30, "hang": True})
        verdict = decide(tmp_path, job="8", attempt=str(attempt), outcome="hang", nodes=2, spares=1)
        expected = "relaunch" if attempt <= HANG_RELAUNCHES_IN_PLACE else "queue"
        assert verdict.line() == f"{expected} - hang", attempt
        with open(log, "a") as handle:
            handle.write(json.dumps({"event": "relaunch", "job_id": "8", "why": "hang"}) + "\n")
    assert node_log(tmp_path) == []  # no culprit: nobody is blamed


def test_on_the_test_cluster_tasks_are_told_apart_and_never_excluded_from_srun(tmp_path: Path) -> None:
    node(tmp_path, "3", "1", 0, "box", end={"rc": 143, "stopped": True})
    node(tmp_path, "3", "1", 1, "box", end=None)
    verdict = decide(tmp_path, job="3", attempt="1", outcome="failed", nodes=2, spares=1, emulated=True)
    assert verdict.line() == "relaunch - node-failure"
    node(tmp_path, "3", "2", 0, "box", end=None)
    node(tmp_path, "3", "2", 1, "box", end={"rc": 143, "stopped": True})
    # Task 0 is another 'node' than task 1: the one spare is gone, back to the queue.
    assert decide(tmp_path, job="3", attempt="2", outcome="failed", nodes=2, spares=1, emulated=True).action == "queue"


def test_damaged_records_are_skipped_and_the_command_prints_one_line(tmp_path: Path) -> None:
    node(tmp_path, "4", "1", 0, "c1", end=None)
    (tmp_path / "nodes" / "4-a1-node1.json").write_text('{"node_rank": 1, "rc"')  # cut by a crash
    (tmp_path / "node_failures.jsonl").write_text('{"job_id": "4", "replaced": tr\n')
    out = subprocess.run(
        [sys.executable, "-m", "hpcai.runtime.recovery", "--run-dir", str(tmp_path), "--job", "4", "--attempt", "1",
         "--outcome", "failed", "--nodes", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == "queue c1 node-failure\n" and "c1 (node 0)" in out.stderr


def _settled(run_id: str, timeout: float = 300) -> dict[str, object]:
    """Status once the run has ended and no next attempt is on its way."""
    import time

    from tests.conftest import run_cli

    deadline = time.monotonic() + timeout
    while True:
        detail: dict[str, object] = json.loads(run_cli("status", run_id, "--json").stdout)
        attempts = detail["attempts"]
        assert isinstance(attempts, list)
        going_on = detail["state"] == "FAILED" and attempts and attempts[-1]["exit_code"] in {89, 90}
        if detail["state"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"} and attempts and not going_on:
            return detail
        assert time.monotonic() < deadline, detail
        time.sleep(2)


COMMON = ("--set", "max_steps=10", "--set", "checkpoint_every=4", "--set", "inject_crash_at=6")


@pytest.mark.usefixtures("slurm_cluster", "isolated_hpcai")
def test_a_node_killed_with_no_spare_sends_the_run_to_a_new_job_without_it() -> None:
    from tests.conftest import run_cli

    out = run_cli("submit", "llava", "-c", "local-slurm", "--nodes", "2", *COMMON, "--json")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    detail = _settled(run["run_id"])
    assert detail["state"] == "COMPLETED", detail
    first, second = detail["attempts"]  # type: ignore[misc]
    assert first["exit_code"] == 90 and "node failure" in first["reason"] and "node 1" in first["reason"]
    assert "the next attempt is a new job" in first["reason"]
    assert second["job_id"] != first["job_id"] and second["resumed_from"] == "step-00000004"
    run_dir = Path(run["run_dir"])
    (entry,) = [json.loads(x) for x in (run_dir / "node_failures.jsonl").read_text().splitlines()]
    assert entry["node_rank"] == 1 and entry["excluded"] is True and "no end record" in entry["why"]
    assert (run_dir / "exclude_nodes").read_text().split() == [entry["node"]]  # (not passed to srun here)
    # Status fed the cluster's exclusion list: later submissions there leave the node out.
    listed = json.loads(run_cli("nodes", "--cluster", "local-slurm", "--json").stdout)["nodes"]
    assert [(n["node"], n["excluded"]) for n in listed] == [(entry["node"], True)]


@pytest.mark.usefixtures("slurm_cluster", "isolated_hpcai")
def test_a_node_killed_with_a_spare_left_is_replaced_inside_the_same_job() -> None:
    from tests.conftest import run_cli

    out = run_cli("submit", "llava", "-c", "local-slurm", "--spare-nodes", "1", *COMMON, "--json")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    assert "#SBATCH --ntasks=2" in (Path(run["run_dir"]) / "job.sh").read_text()
    detail = _settled(run["run_id"])
    assert detail["state"] == "COMPLETED", detail
    first, second = detail["attempts"]  # type: ignore[misc]
    assert first["exit_code"] == 90 and "relaunched in the same job" in first["reason"]
    assert second["job_id"] == first["job_id"] and second["resumed_from"] == "step-00000004"
    assert detail["step"] == 10
