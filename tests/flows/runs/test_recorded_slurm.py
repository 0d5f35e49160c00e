"""The fast tier: the status state machine driven by recorded Slurm output (squeue/sacct as Slurm 22.05
prints them for hpcai's formats) through a transport that answers scheduler commands from a script of
replies, while the run directory's files are real. Milliseconds, no Slurm: a relaunch inside the
allocation becomes an attempt with the same job id, a NODE_FAIL names the node whose task never ended."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from hpcai.backends.schedulers.slurm import SlurmScheduler
from hpcai.backends.session import Backend, Session
from hpcai.backends.transport.base import CommandResult
from hpcai.backends.transport.local import LocalTransport
from hpcai.flows.runs.reconcile import refresh
from hpcai.flows.runs.views import run_detail
from hpcai.spec.profiles import load_profile
from hpcai.store.db import Run, Store

JOB = "4242"


class RecordedSlurm(LocalTransport):
    """Files from this machine; `squeue`/`sacct` answered from recorded output, in order of the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: dict[str, list[tuple[int, str, str]]] = {"squeue": [], "sacct": []}
        self.asked: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 60, **_: object) -> CommandResult:  # type: ignore[override]
        self.asked.append(list(argv))
        code, out, err = self.replies[argv[0]].pop(0)
        return CommandResult(list(argv), code, out, err)


def start_run(store: Store, run_dir: Path) -> Run:
    run = Run(id="rec", workload="llava", cluster="juwels-booster", stage=None, run_dir=str(run_dir),
              spec={"nodes": 4, "spare_nodes": 1}, created=time.time(), state="SUBMITTING")  # fmt: skip
    store.create_run(run)
    store.update_attempt("rec", 1, job_id=JOB, state="RUNNING")
    return store.run("rec")


def event(run_dir: Path, **record: object) -> None:
    with open(run_dir / "attempts.jsonl", "a") as handle:
        handle.write(json.dumps({"job_id": JOB, "time": "2026-11-24T10:00:00Z", **record}) + "\n")


def node_record(run_dir: Path, attempt: int, rank: int, name: str, *, ended: bool) -> None:
    folder = run_dir / "nodes"
    folder.mkdir(exist_ok=True)
    identity = {"job_id": JOB, "attempt": str(attempt), "node_rank": rank, "node": f"{name}.juwels",
                "scheduler_node": name}  # fmt: skip
    (folder / f"{JOB}-a{attempt}-node{rank}.start").write_text(json.dumps(identity))
    if ended:
        (folder / f"{JOB}-a{attempt}-node{rank}.json").write_text(json.dumps({**identity, "rc": 143, "stopped": True}))


def test_a_relaunch_then_a_node_fail_from_recorded_slurm_output(tmp_path: Path) -> None:
    store = Store()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = start_run(store, run_dir)
    transport = RecordedSlurm()
    session = Session()  # one command's session: entered once (leaving it closes its connections)
    session._backends["juwels-booster"] = Backend(load_profile("juwels-booster"), transport, SlurmScheduler(transport))
    with session:
        _relaunch_then_node_fail(store, run, run_dir, transport, session)


def _relaunch_then_node_fail(store: Store, run: Run, run_dir: Path, transport: RecordedSlurm, session: Session) -> None:
    # The job started, a rollback relaunched the training inside the allocation.
    event(run_dir, event="start", epoch=1000.0)
    event(run_dir, event="end", epoch=1100.0, rc=86)
    event(run_dir, event="relaunch", why="rollback", resume="step-00000020", epoch=1100.1)
    event(run_dir, event="start", epoch=1100.2)
    decision = {"action": "rollback", "by": "spike guard", "checkpoint_step": 20, "lr_scale": 0.5,
                "reason": "divergence at step 26"}  # fmt: skip
    (run_dir / "decisions.jsonl").write_text(json.dumps(decision) + "\n")
    running = f"{JOB}|RUNNING|None|2026-11-24T10:00:00|2026-11-24T12:00:00|{run_dir}\n"
    transport.replies["squeue"] += [(0, running, ""), (0, running, "")]  # the new attempt is asked about at once
    refresh(store, [run], session)
    first, second = store.attempts("rec")
    assert first.job_id == second.job_id == JOB and first.exit_code == 86 and first.state == "FAILED"
    assert "relaunched in the same job" in (first.reason or "") and second.state == "RUNNING"
    assert second.resumed_from == "step-00000020" and second.lr_scale == 0.5
    # Then Slurm ended the job for a failed node (no --no-kill): the job left the queue, sacct says why.
    for rank, name in enumerate(["jwb0001", "jwb0002", "jwb0003"]):
        node_record(run_dir, 2, rank, name, ended=True)
    node_record(run_dir, 2, 3, "jwb0107", ended=False)  # its task never ended: the failed node
    transport.replies["squeue"].append((1, "", "slurm_load_jobs error: Invalid job id specified\n"))
    transport.replies["sacct"].append(
        (0, f"{JOB}|NODE_FAIL|0:0|None|2026-11-24T10:00:00|2026-11-24T10:40:00|{run_dir}\n", "")
    )
    refresh(store, [store.run("rec")], session)
    assert store.attempts("rec")[-1].state == "NODE_FAIL", transport.asked
    (entry,) = store.bad_nodes("juwels-booster")
    assert entry.node == "jwb0107" and entry.reason.startswith("NODE_FAIL")
    assert [a[0] for a in transport.asked] == ["squeue", "squeue", "squeue", "sacct"]
    # The attempt is terminal: no scheduler call; the spare is allocated (and paid for) too.
    assert run_detail(store, "rec")["goodput"]["nodes"] == 5
    assert len(transport.asked) == 4
