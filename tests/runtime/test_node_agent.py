"""The per-node agent: the records it leaves for the recovery decision, in real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = """
import json, os, sys, time
from pathlib import Path
folder = Path(os.environ["HPCAI_HEARTBEAT_DIR"])
folder.mkdir(parents=True, exist_ok=True)
(folder / "rank-0.json").write_text(json.dumps({"pid": os.getpid(), "rank": 0, "phase": "step", "step": 12,
                                                "step_s": 0.1, "time": time.time()}))
Path(sys.argv[1]).write_text(f"{os.environ['HPCAI_NODE_AGENT_PID']} {os.getpid()}")
time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def agent(run_dir: Path, *worker_args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "hpcai.runtime.node_agent", "--run-dir", str(run_dir), "--node-rank", "1",
               "--floor", "600", "--", sys.executable, "-c", WORKER, *worker_args]  # fmt: skip
    job_env = {**os.environ, "HPCAI_JOB_ID": "77", "HPCAI_ATTEMPT": "2", "SLURMD_NODENAME": "nid0042", **(env or {})}
    return subprocess.Popen(command, env=job_env)


def records(run_dir: Path) -> tuple[dict[str, object], dict[str, object] | None]:
    start = json.loads((run_dir / "nodes" / "77-a2-node1.start").read_text())
    end_path = run_dir / "nodes" / "77-a2-node1.json"
    return start, json.loads(end_path.read_text()) if end_path.exists() else None


@pytest.mark.slow
def test_the_launcher_s_status_and_last_step_are_recorded(tmp_path: Path) -> None:
    proc = agent(tmp_path, str(tmp_path / "pid"), "0.2", "3")
    assert proc.wait(timeout=60) == 3  # the node's status is its launcher's
    start, end = records(tmp_path)
    assert start["scheduler_node"] == "nid0042" and start["node_rank"] == 1 and start["attempt"] == "2"
    assert end is not None and end["rc"] == 3 and end["stopped"] is False and end["last_step"] == 12
    assert end["hang"] is False
    assert int((tmp_path / "pid").read_text().split()[0]) == proc.pid  # the worker knows its agent


@pytest.mark.slow
def test_a_stop_from_outside_is_forwarded_and_marked_not_this_node_s_fault(tmp_path: Path) -> None:
    proc = agent(tmp_path, str(tmp_path / "pid"), "60", "0")
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what srun does to the other tasks when one failed
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    _, end = records(tmp_path)
    assert end is not None and end["stopped"] is True and end["rc"] == 128 + signal.SIGTERM


@pytest.mark.slow
def test_a_killed_agent_leaves_no_end_record(tmp_path: Path) -> None:
    proc = agent(tmp_path, str(tmp_path / "pid"), "60", "0")
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker = int((tmp_path / "pid").read_text().split()[1])
    proc.kill()  # the node dies with its task
    proc.wait(timeout=30)
    os.kill(worker, signal.SIGKILL)  # (a dead node takes its processes with it; here the test does)
    _, end = records(tmp_path)
    assert end is None  # what tells the recovery decision this node is the one that failed
    # Its heartbeats stay behind; an agent starting with the same job and attempt ignores them.
    proc = agent(tmp_path, str(tmp_path / "pid"), "0.1", "0")
    assert proc.wait(timeout=60) == 0
    _, end = records(tmp_path)
    assert end is not None and end["hang"] is False


SLOW_TO_STOP = """
import os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: None)  # a launcher whose teardown outlasts srun's KillWait
folder = Path(os.environ["HPCAI_HEARTBEAT_DIR"])
folder.mkdir(parents=True, exist_ok=True)
(folder / "rank-0.json").write_text('{"pid": %d, "rank": 0, "phase": "step", "step": 7, "step_s": 0.1, "time": %f}'
                                    % (os.getpid(), time.time()))
Path(sys.argv[1]).write_text("ready")
time.sleep(60)
"""


def test_a_task_killed_soon_after_it_was_told_to_stop_is_still_marked_stopped(tmp_path: Path) -> None:
    """srun sends SIGTERM, then SIGKILL after KillWait: the agent says it was stopped from outside before
    its launcher has finished stopping, so the recovery does not read the task as a dead node."""
    command = [sys.executable, "-m", "hpcai.runtime.node_agent", "--run-dir", str(tmp_path), "--node-rank", "1",
               "--floor", "600", "--", sys.executable, "-c", SLOW_TO_STOP, str(tmp_path / "ready")]  # fmt: skip
    env = {**os.environ, "HPCAI_JOB_ID": "77", "HPCAI_ATTEMPT": "2"}
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.time() + 30
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the agent and its launcher, before the launcher stopped
    proc.wait(timeout=30)
    _start, end = records(tmp_path)
    assert end is not None and end["stopped"] is True and end["provisional"] is True and end["last_step"] == 7
