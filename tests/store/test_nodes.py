"""The per-cluster exclusion list: which failures leave a node out, fed once from run node logs, shown and
cleared by `hpcai nodes`, honoured by what `render`/`submit` put in the script."""

from __future__ import annotations

import json
import time

import pytest

from hpcai.store.db import BadNode, Store
from hpcai.store.nodes import NODE_EXCLUSION_S, exclusions, record_from_node_log
from tests.conftest import run_cli


def entry(node: str, *, hang: bool, since: float, source: str) -> BadNode:
    return BadNode(cluster="c", node=node, reason="hang" if hang else "its task was killed", run_id="r",
                   source=source, hang=hang, since=since, expires=since + NODE_EXCLUSION_S)  # fmt: skip


def test_one_failure_of_its_own_or_two_hangs_leave_a_node_out() -> None:
    now = 1_000_000.0
    entries = [
        entry("bad", hang=False, since=now, source="1"),
        entry("hung-once", hang=True, since=now, source="2"),
        entry("hung-twice", hang=True, since=now - 100, source="3"),
        entry("hung-twice", hang=True, since=now, source="4"),
    ]
    out = {e.node: e for e in exclusions(entries)}
    assert set(out) == {"bad", "hung-twice"}
    assert out["hung-twice"].until == now - 100 + NODE_EXCLUSION_S  # out until the older hang expires
    assert out["hung-twice"].reason.startswith("hung 2 times")


@pytest.mark.usefixtures("isolated_hpcai")
def test_node_logs_are_recorded_once_expire_and_never_carry_a_hostile_name() -> None:
    store = Store()
    now = time.time()
    log = [
        {"job_id": "11", "attempt": "1", "node": "jwb0001", "node_rank": 3, "why": "device error", "time": now},
        {"job_id": "11", "attempt": "1", "node": "x;touch pwned", "node_rank": 1, "why": "x", "time": now},
        {"job_id": "11", "attempt": "1", "node": "jwb0002", "node_rank": 2, "why": "old", "time": now - 4 * 86400},
        {"job_id": "11", "attempt": "1", "node": "jwb0003", "node_rank": 0, "why": "no time"},
    ]
    assert record_from_node_log(store, "juwels-booster", "run-a", log) == 2
    assert record_from_node_log(store, "juwels-booster", "run-a", log) == 0  # status reads the log again
    assert [e.node for e in store.bad_nodes("juwels-booster")] == ["jwb0001"]  # jwb0002's record expired
    assert len(store.bad_nodes("juwels-booster", now=0)) == 2


@pytest.mark.usefixtures("isolated_hpcai")
def test_later_submissions_leave_the_nodes_out_until_cleared() -> None:
    store = Store()
    now = time.time()
    record_from_node_log(store, "juwels-booster", "run-a", [
        {"job_id": "11", "attempt": "1", "node": "jwb0001", "node_rank": 3, "why": "device error", "time": now},
        {"job_id": "11", "attempt": "2", "node": "jwb0107", "node_rank": 0, "why": "hang", "time": now},
    ])  # fmt: skip
    record_from_node_log(store, "local-slurm", "run-b", [
        {"job_id": "5", "attempt": "1", "node": "vm", "node_rank": 1, "why": "its task was killed", "time": now},
    ])  # fmt: skip
    store.close()
    shown = json.loads(run_cli("nodes", "--json").stdout)["nodes"]
    by_node = {(r["cluster"], r["node"]): r for r in shown}
    assert by_node[("juwels-booster", "jwb0001")]["excluded"] is True
    assert by_node[("juwels-booster", "jwb0107")]["excluded"] is False  # one hang: watched, not left out
    human = run_cli("nodes", "--cluster", "juwels-booster")
    assert human.returncode == 0 and "jwb0001" in human.stdout and "until" in human.stdout
    script = run_cli("render", "llava", "-c", "juwels-booster", "-A", "training2410").stdout
    assert "#SBATCH --exclude=jwb0001\n" in script
    # The test cluster's "nodes" are tasks on its one host: never excluded there.
    assert "--exclude" not in run_cli("render", "llava", "-c", "local-slurm").stdout
    assert run_cli("nodes", "--clear", "jwb0001").returncode == 2  # which cluster?
    cleared = run_cli("nodes", "--clear", "jwb0001", "--cluster", "juwels-booster", "--json")
    assert json.loads(cleared.stdout)["records_removed"] == 1
    assert "#SBATCH --exclude" not in run_cli("render", "llava", "-c", "juwels-booster", "-A", "training2410").stdout


@pytest.mark.usefixtures("isolated_hpcai")
def test_a_node_fail_names_the_node_whose_task_never_ended() -> None:
    """The local backend reads a vanished runner as NODE_FAIL (as Slurm does a failed node without
    --no-kill): the node agent that began and never ended names the node for the cluster's list."""
    import os
    import signal
    from pathlib import Path

    from hpcai.backends.schedulers.local import read_job
    from tests.helpers import wait_for, wait_for_file, wait_terminal

    pytest.importorskip("accelerate", reason="the training stack is the `train` extra")
    out = run_cli("submit", "llava", "-c", "local", "--set", "max_steps=2000", "--set", "checkpoint_every=1000",
                  "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    store = Store()
    view = wait_for(store, run["run_id"], {"RUNNING"})
    wait_for_file(Path(run["run_dir"]) / "metrics.jsonl", timeout=120, what="training never started")
    job = read_job(str(view.job_id))
    assert job is not None
    os.kill(int(job["runner_pid"]), signal.SIGKILL)
    assert wait_terminal(store, run["run_id"], timeout=60).state == "NODE_FAIL"
    run_cli("status", run["run_id"])
    listed = json.loads(run_cli("nodes", "--cluster", "local", "--json").stdout)["nodes"]
    assert len(listed) == 1 and listed[0]["excluded"] is True and listed[0]["reason"].startswith("NODE_FAIL")
