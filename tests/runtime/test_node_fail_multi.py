"""A real node failure on the multi-node test Slurm (3 slurmd in network namespaces): the node of rank 1
dies with everything on it mid-run; Slurm itself marks it DOWN and ends the job NODE_FAIL, then requeues
it; hpcai shows the NODE_FAIL run as an attempt of its own, puts the node on the cluster's exclusion list,
and the requeued job resumes from the newest complete checkpoint on the two nodes left, to completion."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import MULTI, run_cli
from tests.helpers import wait_for, wait_terminal

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")


def _rows(run_dir: Path) -> list[dict[str, int]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in _rows(run_dir)]


def _kill_rank_1s_node_mid_run(store: Store, run_id: str, run_dir: Path) -> tuple[str, str]:
    """Once the run has made 25 steps and a complete checkpoint: kill the node of rank 1 with everything on
    it. The job id and the node."""
    view = wait_for(store, run_id, {"RUNNING"}, timeout=180)
    deadline = time.monotonic() + 240
    while len(_steps(run_dir)) < 25 or not (run_dir / "checkpoints" / "latest").exists():
        assert time.monotonic() < deadline and max(_steps(run_dir) or [0]) < 200, _steps(run_dir)[-3:]
        time.sleep(0.5)
    assert view.job_id
    start = json.loads(next((run_dir / "nodes").glob(f"{view.job_id}-a1-node1.start")).read_text())
    subprocess.run([str(MULTI), "kill", start["scheduler_node"]], check=True, timeout=30)
    return view.job_id, str(start["scheduler_node"])


def test_a_killed_node_is_slurms_node_fail_and_the_run_goes_on_without_it(slurm_multi: str) -> None:
    out = run_cli("submit", "llava", "-c", slurm_multi, "--nodes", "2", "--run-id", "node-fail",
                  "--set", "max_steps=200", "--set", "checkpoint_every=10", "--json", timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    store = Store()
    job_id, victim = _kill_rank_1s_node_mid_run(store, "node-fail", run_dir)

    final = wait_terminal(store, "node-fail", timeout=600)
    assert final.state == "COMPLETED", final
    attempts = store.attempts("node-fail")
    first, last = attempts[0], attempts[-1]
    assert first.state == "NODE_FAIL" and first.job_id == last.job_id == job_id, attempts
    assert first.reason and first.reason.startswith("requeued by the scheduler after NODE_FAIL"), first.reason
    assert last.state == "COMPLETED" and len(attempts) == 2
    # Slurm's own verdict on the node, and hpcai's list of nodes to leave out of later jobs on this cluster.
    state = subprocess.run(["sinfo", "-h", "-n", victim, "-o", "%T"], capture_output=True, text=True).stdout
    assert state.strip().startswith("down"), state
    listed = json.loads(run_cli("nodes", "--cluster", slurm_multi, "--json").stdout)["nodes"]
    assert [(n["node"], n["excluded"]) for n in listed] == [(victim, True)], listed
    # The second run resumed from a complete checkpoint (a step run again, never a step skipped), to the end.
    steps = _steps(run_dir)
    assert steps[-1] == 200 and sorted(set(steps)) == list(range(1, 201))
    # The requeued run's first step follows a complete checkpoint (every 10 steps). Whether steps are run
    # twice depends on where the kill lands: right after a checkpoint, none are.
    resumed = [r for r in _rows(run_dir)[1:] if r["attempt_step"] == 1]
    assert resumed and resumed[-1]["step"] > 1 and (resumed[-1]["step"] - 1) % 10 == 0, resumed
    goodput = json.loads(run_cli("status", "node-fail", "--json").stdout)["goodput"]
    assert len(goodput["attempts"]) == 2 and not any(a["running"] for a in goodput["attempts"])


def test_a_killed_node_with_a_spare_left_is_replaced_inside_the_same_allocation(slurm_multi: str) -> None:
    """With a spare node (--no-kill) the job outlives its node: the training is relaunched inside the same
    allocation on the nodes left, Slurm's --exclude leaving the dead one out, from the newest checkpoint."""
    out = run_cli("submit", "llava", "-c", slurm_multi, "--nodes", "2", "--spare-nodes", "1", "--run-id", "spare",
                  "--set", "max_steps=200", "--set", "checkpoint_every=10", "--json", timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    assert "#SBATCH --nodes=3" in (run_dir / "job.sh").read_text()
    store = Store()
    job_id, victim = _kill_rank_1s_node_mid_run(store, "spare", run_dir)

    final = wait_terminal(store, "spare", timeout=600)
    assert final.state == "COMPLETED", final
    attempts = store.attempts("spare")
    assert len({a.job_id for a in attempts}) == 1 and len(attempts) == 2, attempts  # one job all along
    assert attempts[0].exit_code == 90 and "relaunched in the same job" in (attempts[0].reason or "")
    relaunched = [json.loads(p.read_text()) for p in (run_dir / "nodes").glob(f"{job_id}-a2-node*.start")]
    assert len(relaunched) == 2 and victim not in {r["scheduler_node"] for r in relaunched}
    assert _steps(run_dir)[-1] == 200


def test_a_hang_across_two_real_nodes_is_detected_on_each_and_relaunched_in_place(slurm_multi: str) -> None:
    """Every rank stops making steps (inject_hang_at): each node's watchdog declares the hang, the training is
    stopped on both nodes and relaunched inside the same job from the newest complete checkpoint."""
    out = run_cli("submit", "llava", "-c", slurm_multi, "--nodes", "2", "--run-id", "hang", "--set", "max_steps=10",
                  "--set", "checkpoint_every=4", "--set", "hang_timeout_s=5", "--set", "inject_hang_at=6",
                  "--json", timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    store = Store()
    deadline = time.monotonic() + 600
    final = wait_terminal(store, "hang", timeout=600)
    while final.state == "FAILED" and final.exit_code in (89, 90):  # the hang's attempt; its relaunch follows
        assert time.monotonic() < deadline, final
        time.sleep(2)
        final = wait_terminal(store, "hang", timeout=max(1.0, deadline - time.monotonic()))
    assert final.state == "COMPLETED", final
    first, second = store.attempts("hang")
    assert first.exit_code == 89 and (first.reason or "").startswith("hang on ") and first.job_id == second.job_id
    assert second.resumed_from == "step-00000004"
    hosts = {json.loads(p.read_text())["scheduler_node"] for p in (run_dir / "hangs").glob("*.json")}
    assert len(hosts) == 2, hosts  # declared on each of the two real nodes
    assert _steps(run_dir)[-1] == 10
