"""The node's hang watchdog: run by the node agent next to the launcher on every node (standard
library only: it must run where the training stack is stuck).

It reads the node's per-rank heartbeats (hpcai.runtime.heartbeat) and declares a hang when no local
rank has progressed for longer than the limit of the phase the newest heartbeat is in:

- step: max(k x the median step time seen, `floor`) -- k = 10 and floor = 180 s by default: a step
  10x slower than usual is not slowness any more, and 180 s is NVIDIA's resiliency extension's default
  for a training-step section; the workload's `hang_timeout_s` sets the floor;
- checkpoint: max(600 s, the step limit) (the extension uses 420 s; parallel filesystems at the sites
  are slower when a whole machine writes);
- setup and loading: 1,800 s (the extension's first-heartbeat timeout: imports, NCCL start-up, model and
  checkpoint loading on a busy filesystem); the same from the launch when no rank has written a
  heartbeat at all (stuck in `import`), for workloads known to be on the hpcai runtime.

A workload not on the hpcai runtime writes no heartbeat and is never declared hung. On a hang
it asks every worker for its Python stacks (SIGUSR2 -> faulthandler; `py-spy dump` too when installed),
writes a HANG record (`hangs/<job>-a<attempt>-node<N>.json`, and `timeline.jsonl` for the goodput account), then
stops the workers (TERM, then KILL) so the launcher fails at once instead of holding the allocation
until walltime. The node agent (hpcai.runtime.node_agent) runs it; the job script's recovery decision reads the
record (hpcai.runtime.recovery).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HANGS_DIR = "hangs"


def record_name(job: str, attempt: str, node_rank: int | str) -> str:
    """The stem of one node's records of one launch (node agent start/end, HANG): job, attempt, node
    rank (`"*"` makes the glob of every node's)."""
    return f"{job}-a{attempt}-node{node_rank}"


SETUP_LIMIT_S = 1800.0
CHECKPOINT_LIMIT_S = 600.0


def read_heartbeats(folder: Path) -> list[dict[str, Any]]:
    beats = []
    for path in sorted(folder.glob("rank-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now
        if isinstance(record, dict) and isinstance(record.get("time"), int | float):
            beats.append(record)
    return beats


def beat_age(beat: dict[str, Any], now_mono: float) -> float:
    """Seconds since a heartbeat, on the monotonic clock (CLOCK_MONOTONIC is one clock for every process
    of a node): a step of the wall clock (NTP, an administrator) must not make a healthy rank look hung.
    A beat without one (an older writer) falls back to the wall clock."""
    mono = beat.get("mono")
    if isinstance(mono, int | float) and not isinstance(mono, bool) and 0 <= mono <= now_mono + 1:
        return now_mono - float(mono)
    return time.time() - float(beat["time"])


def limit_for(phase: str, median_step_s: float | None, *, k: float, floor: float) -> float:
    step_limit = max(k * (median_step_s or 0.0), floor)
    if phase == "step":
        return step_limit
    if phase == "checkpoint":
        return max(CHECKPOINT_LIMIT_S, step_limit)
    return max(SETUP_LIMIT_S, step_limit)


def _alive(pid: int) -> bool:
    """Running (a zombie -- exited, not yet reaped by its parent -- is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _dump_stacks(beats: list[dict[str, Any]], run_dir: Path, job: str) -> None:
    for beat in beats:
        if beat.get("phase") == "startup":
            continue  # no faulthandler registered yet: SIGUSR2 would only kill it (py-spy below still looks)
        with contextlib.suppress(ProcessLookupError, PermissionError, TypeError, ValueError):
            os.kill(int(beat["pid"]), signal.SIGUSR2)
    spy = shutil.which("py-spy")
    if spy is not None:
        for beat in beats:
            target = run_dir / "stacks" / f"{job}-rank-{beat.get('rank')}.py-spy.txt"
            with contextlib.suppress(OSError, subprocess.SubprocessError), open(target, "w") as out:
                subprocess.run([spy, "dump", "--pid", str(beat["pid"])], stdout=out, stderr=out, timeout=30)
    time.sleep(2)  # faulthandler writes from a signal handler: give every rank the moment it needs


def _stop(pids: list[int], grace_s: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def declare_hang(
    beats: list[dict[str, Any]], *, run_dir: Path, job: str, node_rank: int, stalled_s: float, limit_s: float,
    median_step_s: float | None, grace_s: float = 10.0,
) -> dict[str, Any]:  # fmt: skip
    newest = max(beats, key=lambda b: float(b["time"]))
    (run_dir / "stacks").mkdir(parents=True, exist_ok=True)
    _dump_stacks(beats, run_dir, job)
    now = time.time()
    attempt = os.environ.get("HPCAI_ATTEMPT", "0")
    record = {
        "event": "hang", "job_id": job, "attempt": attempt, "node": socket.gethostname(), "node_rank": node_rank,
        # The scheduler's name for the node (what --exclude takes): Slurm sets it for every task.
        "scheduler_node": os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0],
        "ranks": sorted(int(b["rank"]) for b in beats if isinstance(b.get("rank"), int)),  # none: never beat
        "step": newest.get("step"), "phase": newest.get("phase"), "stalled_s": round(stalled_s, 3),
        "limit_s": round(limit_s, 3), "median_step_s": median_step_s, "time": now,
        "stacks": f"stacks/{job}-rank-*.txt",
    }  # fmt: skip
    folder = run_dir / HANGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{record_name(job, attempt, node_rank)}.json"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, target)
    with open(run_dir / "timeline.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(
        f"hpcai: hang on {record['node']} (node {node_rank}): no rank progressed for {stalled_s:.0f} s "
        f"(limit {limit_s:.0f} s, phase {record['phase']}, step {record['step']}); stacks in "
        f"{run_dir / 'stacks'}; stopping the workers",
        file=sys.stderr,
        flush=True,
    )
    _stop([int(b["pid"]) for b in beats if isinstance(b.get("pid"), int)], grace_s)
    return record


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): the workers of a launcher whose workers never beat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def watch(
    folder: Path, run_dir: Path, *, launcher_pid: int, job: str, node_rank: int, k: float, floor: float,
    poll_s: float | None = None, expect_heartbeats: bool = False, setup_limit_s: float = SETUP_LIMIT_S,
) -> dict[str, Any] | None:  # fmt: skip
    """Watch until the launcher ends (None) or a hang is declared (its record). With `expect_heartbeats`
    (a workload on the hpcai runtime), no heartbeat at all for `setup_limit_s` after the launch is a hang
    too: stuck before the runtime's first line (an `import torch` on a sick filesystem, a dead mount)."""
    poll = poll_s if poll_s is not None else max(0.5, min(5.0, floor / 20))
    step_times: dict[tuple[int, int], float] = {}  # (rank, step) -> that step's duration
    launched = time.monotonic()
    while _alive(launcher_pid):
        beats = read_heartbeats(folder)
        live = [b for b in beats if b.get("phase") != "done"]
        for b in live:
            if isinstance(b.get("step_s"), int | float) and isinstance(b.get("step"), int):
                step_times[(int(b.get("rank", -1)), int(b["step"]))] = float(b["step_s"])
        if live:
            recent = sorted(step_times)[-200:]
            median = statistics.median(step_times[key] for key in recent) if recent else None
            now = time.monotonic()
            newest = min(live, key=lambda b: beat_age(b, now))
            stalled = beat_age(newest, now)
            limit = limit_for(str(newest.get("phase")), median, k=k, floor=floor)
            if stalled > limit:
                return declare_hang(live, run_dir=run_dir, job=job, node_rank=node_rank, stalled_s=stalled,
                                    limit_s=limit, median_step_s=median)  # fmt: skip
        elif expect_heartbeats and not beats and time.monotonic() - launched > setup_limit_s:
            workers = [{"pid": pid, "rank": None, "phase": "startup", "step": None, "time": launched}
                       for pid in _descendants(launcher_pid)]  # fmt: skip
            return declare_hang(workers or [{"pid": launcher_pid, "phase": "startup", "time": launched}],
                                run_dir=run_dir, job=job, node_rank=node_rank, stalled_s=time.monotonic() - launched,
                                limit_s=setup_limit_s, median_step_s=None)  # fmt: skip
        time.sleep(poll)
    return None
