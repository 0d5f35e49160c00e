"""The per-node agent: what the job script starts on every node of a launch (one srun/mpiexec task per
node). Standard library only: it must work where the training stack is broken.

It starts the node's launcher (accelerate launch) in a process group of its own, runs the node's hang
watchdog (hpcai.runtime.watchdog) beside it, and leaves two records in the run directory for the job
script's recovery decision (hpcai.runtime.recovery):

- `nodes/<job>-a<attempt>-node<R>.start` when the node's task began, and
- `nodes/<job>-a<attempt>-node<R>.json` when it ended: the launcher's exit status, whether the agent was
  told to stop (srun stopping the other tasks after one failed: not this node's fault), whether its
  watchdog declared a hang, and the last step its ranks finished (a node behind the others held them up).

A task that began and never ended was killed with its node (or its agent): that node is the suspect.
Its workers are killed with it: an orphaned worker would keep the GPU and a collective half-open.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hpcai.runtime.heartbeat import VARIABLE as HEARTBEAT_VARIABLE
from hpcai.runtime.watchdog import SETUP_LIMIT_S, read_heartbeats, record_name, watch

NODES_DIR = "nodes"


def scheduler_node() -> str:
    """The scheduler's name for this node (what --exclude takes): Slurm sets it for every task."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _status(returncode: int) -> int:
    """A shell's view of an exit status: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _last_step(beats: list[dict[str, Any]]) -> int | None:
    steps = [int(b["step"]) for b in beats if isinstance(b.get("step"), int)]
    return min(steps) if steps else None


def run(command: list[str], *, run_dir: Path, node_rank: int, k: float, floor: float,
        expect_heartbeats: bool = False, setup_limit_s: float = SETUP_LIMIT_S) -> int:  # fmt: skip
    """Run the node's launcher under the watchdog, leave the start and end records; its status."""
    job = os.environ.get("HPCAI_JOB_ID", "job")
    attempt = os.environ.get("HPCAI_ATTEMPT", "0")
    base = run_dir / NODES_DIR / record_name(job, attempt, node_rank)
    identity = {"job_id": job, "attempt": attempt, "node_rank": node_rank, "node": socket.gethostname(),
                "scheduler_node": scheduler_node()}  # fmt: skip
    _write(base.with_suffix(".start"), {**identity, "event": "node_start", "time": time.time()})
    scratch = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))
    beats_dir = scratch / f"hpcai-{job}-a{attempt}-{node_rank}"
    # A killed agent's heartbeats stay behind: they would read as a hang, and they fill node memory.
    # Earlier launches of this job are over (the job script runs one at a time): theirs go too.
    for old in scratch.glob(f"hpcai-{job}-a*-*"):
        number = old.name.removeprefix(f"hpcai-{job}-a").split("-")[0]
        if old == beats_dir or (number.isdigit() and attempt.isdigit() and int(number) < int(attempt)):
            shutil.rmtree(old, ignore_errors=True)
    env = {**os.environ, HEARTBEAT_VARIABLE: str(beats_dir), "HPCAI_NODE_AGENT_PID": str(os.getpid())}
    launcher = subprocess.Popen(command, env=env, start_new_session=True)
    stopped = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        first = not stopped.is_set()
        stopped.set()  # told to stop from outside (srun after another task failed, scancel, walltime)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signum)
        if first:
            # Said at once: srun's SIGKILL follows its SIGTERM within KillWait (often seconds), sooner than a
            # launcher with data workers may take to stop, and a task with no end record reads as a node
            # that died. The record below is replaced by the full one if the agent lives that long.
            with contextlib.suppress(OSError):
                _write(base.with_suffix(".json"), {**identity, "event": "node_end", "rc": 128 + signum,
                                                   "stopped": True, "hang": False, "provisional": True,
                                                   "last_step": _last_step(read_heartbeats(beats_dir)),
                                                   "time": time.time()})  # fmt: skip

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    hang: dict[str, Any] | None = None

    def watchdog() -> None:
        nonlocal hang
        hang = watch(beats_dir, run_dir, launcher_pid=launcher.pid, job=job, node_rank=node_rank, k=k, floor=floor,
                     expect_heartbeats=expect_heartbeats, setup_limit_s=setup_limit_s)  # fmt: skip

    watcher = threading.Thread(target=watchdog, daemon=True)
    watcher.start()
    returncode = launcher.wait()
    watcher.join(timeout=15)
    beats = read_heartbeats(beats_dir)
    last = _last_step(beats)
    # How far the node got: a step number, or "setup" (beat, no step yet), or None (never beat at all).
    progress = "step" if last is not None else ("setup" if beats else None)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(launcher.pid, signal.SIGKILL)  # workers the launcher left behind
    status = _status(returncode)
    _write(base.with_suffix(".json"), {**identity, "event": "node_end", "rc": status, "stopped": stopped.is_set(),
                                       "hang": hang is not None, "last_step": last, "progress": progress,
                                       "time": time.time()})  # fmt: skip
    shutil.rmtree(beats_dir, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one node's launch under the agent; exit with the launcher's status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--k", type=float, default=10.0, help="hang limit: k x the median step time")
    parser.add_argument("--floor", type=float, default=180.0, help="hang limit: at least this many seconds")
    parser.add_argument(
        "--expect-heartbeats",
        action="store_true",
        help="the workload is on the hpcai runtime: no heartbeat at all in time is a hang",
    )
    parser.add_argument("--setup-limit", type=float, default=SETUP_LIMIT_S, help="seconds to the first heartbeat")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the node's launcher and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no launcher command after --")
    return run(command, run_dir=args.run_dir, node_rank=args.node_rank, k=args.k, floor=args.floor,
               expect_heartbeats=args.expect_heartbeats, setup_limit_s=args.setup_limit)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
