"""What the job does after a launch ended early: relaunch inside the allocation, go back to the queue,
or stop. Run by the job script on the batch host (standard library only) after each launch; it prints
one line, `ACTION NODES WHY` (NODES: the scheduler names of the nodes to leave out, or `-`), appends the
suspect nodes to the run's node log (`node_failures.jsonl`, which the client turns into the cluster's
exclusion list) and to the run's `exclude_nodes` file (what srun/sbatch leave out).

The rules (the allocation is the scarce thing: a new one waits in the queue for hours on a busy site):

- a spike-guard rollback relaunches in the allocation, on the same nodes;
- a failed node -- its task killed with it (a start record and no end record), its launcher killed by a
  signal nobody sent it, or its ranks dying of a device/NCCL/RCCL error (the earliest one's node) --
  is replaced by a spare node of the allocation (`--spare-nodes`) when one is left, else the run goes
  back to the queue without it;
- a hang names a suspect only when one can be told apart: the node(s) whose ranks finished fewer steps
  than the others held everyone up; a one-node job's only node. A first hang relaunches in place (a
  stuck collective or a filesystem stall is often transient); the suspect is replaced by a spare at
  once when there is one, and goes back to the queue without it when it hangs a second time. A hang
  with no suspect (every node stopped at the same step) relaunches in place up to
  HANG_RELAUNCHES_IN_PLACE times per allocation, then asks the queue for another one;
- any other failure (an exception in the training code, bad data) stops: running it again would fail
  again. `hpcai status` says why from the ranks' error records.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcai.rundir.contract import ATTEMPTS_LOG, ERRORS_DIR, EXCLUDE_FILE, NODE_LOG
from hpcai.runtime.node_agent import NODES_DIR
from hpcai.runtime.watchdog import HANGS_DIR, record_name

HANG_RELAUNCHES_IN_PLACE = 2
# Messages that say a device or the fabric failed, not the training code (CUDA/ROCm/NCCL/RCCL wording).
DEVICE_ERROR = re.compile(
    r"uncorrectable ECC|ECC error|NCCL error|ncclSystemError|ncclInternalError|ncclUnhandledCudaError|"
    r"ncclRemoteError|RCCL error|HIP error|hipError|CUDA error: unspecified launch failure|"
    r"CUDA-capable device\(s\) (is|are) busy or unavailable|no CUDA-capable device|NVML|Xid|"
    r"device-side assert|GPU is lost|fell off the bus",
    re.IGNORECASE,
)
# What a scheduler's node name may hold (it ends up in --exclude and --nodelist).
NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


@dataclass
class Verdict:
    """What the job does next, why, and which nodes it suspects and leaves out."""

    action: str  # relaunch | queue | stop | none
    why: str
    suspects: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)  # scheduler node names to leave out from now on

    def line(self) -> str:
        nodes = ",".join(self.exclude) or "-"
        return f"{self.action} {nodes} {self.why}"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(value, dict):
            records.append(value)
    return records


def _identity(record: dict[str, Any], emulated: bool) -> str:
    """One failed node, for counting spares: on the test cluster, whose 'nodes' are tasks on one host,
    the task's rank tells them apart."""
    name = str(record.get("scheduler_node") or record.get("node") or "?")
    return f"{name}#{record.get('node_rank')}" if emulated else name


@dataclass
class Launch:
    """What one launch's nodes left in the run directory."""

    started: dict[int, dict[str, Any]]
    ended: dict[int, dict[str, Any]]
    hangs: list[dict[str, Any]]
    errors: list[dict[str, Any]]

    @classmethod
    def read(cls, run_dir: Path, job: str, attempt: str) -> Launch:
        every_node = record_name(job, attempt, "*")
        started: dict[int, dict[str, Any]] = {}
        ended: dict[int, dict[str, Any]] = {}
        for path in sorted((run_dir / NODES_DIR).glob(f"{every_node}.*")):
            record = _json(path)
            rank = record.get("node_rank") if record else None
            if record is None or not isinstance(rank, int):
                continue
            (started if path.suffix == ".start" else ended)[rank] = record
        hangs = [r for p in sorted((run_dir / HANGS_DIR).glob(f"{every_node}.json")) if (r := _json(p)) is not None]
        since = min((float(r.get("time", 0)) for r in started.values()), default=0.0)
        errors = [
            r for p in sorted((run_dir / ERRORS_DIR).glob("rank-*.json"))
            if (r := _json(p)) is not None and str(r.get("job_id")) == job and float(r.get("time", 0)) >= since
        ]  # fmt: skip
        return cls(started, ended, hangs, errors)

    def laggards(self) -> list[int]:
        """Node ranks that got less far than the others (they held the collective up): fewer steps
        finished, or no step while others stepped, or never a heartbeat while others beat."""
        reached: dict[int, int] = {}
        for rank, end in self.ended.items():
            if isinstance(end.get("last_step"), int):
                reached[rank] = int(end["last_step"])
            elif "progress" in end:  # agents before this field knew steps only
                reached[rank] = -1 if end["progress"] == "setup" else -2
        if len(set(reached.values())) < 2:
            return []
        ahead = max(reached.values())
        return sorted(n for n, s in reached.items() if s < ahead)

    def failed_nodes(self) -> list[tuple[int, str]]:
        """(node rank, why) of nodes that failed on their own, not as victims of another's failure."""
        failed: list[tuple[int, str]] = []
        for rank in self.started:
            end = self.ended.get(rank)
            if end is None:
                failed.append((rank, "its task was killed (no end record: the node or its agent died)"))
            elif isinstance(end.get("rc"), int) and end["rc"] > 128 and not end.get("stopped") and not end.get("hang"):
                failed.append((rank, f"its launcher was killed by signal {end['rc'] - 128}"))
        if failed:
            return failed
        device = sorted((r for r in self.errors if DEVICE_ERROR.search(str(r.get("message", "")))),
                        key=lambda r: float(r.get("time", 0)))  # fmt: skip
        if device:
            first = device[0]
            for rank, start in self.started.items():
                if start.get("node") == first.get("host"):
                    return [(rank, f"device error on rank {first.get('rank')}: {str(first.get('message'))[:200]}")]
        return []


def decide(run_dir: Path, *, job: str, attempt: str, outcome: str, nodes: int, spares: int,
           emulated: bool = False) -> Verdict:  # fmt: skip
    """The verdict for a launch that ended with `outcome` (rollback, hang, failed, or anything else)."""
    if outcome == "rollback":
        return Verdict("relaunch", "rollback")
    if outcome not in {"hang", "failed"}:
        return Verdict("none", outcome)
    launch = Launch.read(run_dir, job, attempt)
    history = _jsonl(run_dir / NODE_LOG)
    this_job = [r for r in history if str(r.get("job_id")) == job]
    replaced = {_identity(r, emulated) for r in this_job if r.get("replaced")}
    spares_left = spares - len(replaced)
    if outcome == "failed":
        failed = launch.failed_nodes()
        if not failed:
            return Verdict("stop", "failed")
        suspects = [{**launch.started[rank], "why": why} for rank, why in failed]
        action = "relaunch" if spares_left >= len(suspects) else "queue"
        return _record(run_dir, Verdict(action, "node-failure", suspects), emulated, replace=action == "relaunch")
    lagging = launch.laggards()
    if not lagging and nodes == 1 and launch.hangs:
        lagging = [int(launch.hangs[0].get("node_rank", 0))]
    if not lagging:
        in_place = sum(
            1
            for r in _jsonl(run_dir / ATTEMPTS_LOG)
            if r.get("event") == "relaunch" and r.get("why") == "hang" and str(r.get("job_id")) == job
        )
        return Verdict("relaunch" if in_place < HANG_RELAUNCHES_IN_PLACE else "queue", "hang")
    suspects = []
    for rank in lagging:
        record = launch.started.get(rank) or next((h for h in launch.hangs if h.get("node_rank") == rank), {})
        suspects.append(
            {
                **record,
                "node_rank": rank,
                "why": "hang: its ranks fell behind the others' steps" if nodes > 1 else "hang",
            }
        )
    if spares_left >= len(suspects):
        return _record(run_dir, Verdict("relaunch", "hang", suspects), emulated, replace=True)
    hung_before = {_identity(r, emulated) for r in history if str(r.get("why", "")).startswith("hang")}
    again = any(_identity(s, emulated) in hung_before for s in suspects)
    return _record(run_dir, Verdict("queue" if again else "relaunch", "hang", suspects), emulated,
                   replace=False, exclude=again)  # fmt: skip


def _record(run_dir: Path, verdict: Verdict, emulated: bool, *, replace: bool, exclude: bool = True) -> Verdict:
    """Write the suspects to the run's node log (and, when they are left out, to its exclusion file)."""
    names = [str(s.get("scheduler_node") or s.get("node") or "") for s in verdict.suspects]
    names = [n for n in names if NODE_NAME.fullmatch(n)]
    now = time.time()
    with open(run_dir / NODE_LOG, "a", encoding="utf-8") as log:
        for suspect in verdict.suspects:
            log.write(json.dumps({
                "job_id": suspect.get("job_id"), "attempt": suspect.get("attempt"),
                "node": suspect.get("scheduler_node") or suspect.get("node"), "node_rank": suspect.get("node_rank"),
                "why": suspect.get("why", verdict.why), "replaced": replace, "excluded": exclude, "time": now,
            }) + "\n")  # fmt: skip
    if exclude and names:
        with open(run_dir / EXCLUDE_FILE, "a", encoding="utf-8") as handle:
            handle.write("".join(f"{n}\n" for n in names))
        # The test cluster's "nodes" are tasks on one host: recorded, never left out of srun/sbatch.
        verdict.exclude = [] if emulated else sorted(set(names))
    return verdict


def main(argv: list[str] | None = None) -> int:
    """Print the verdict's line for the job script (suspects on stderr); always exit 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--attempt", required=True)
    parser.add_argument("--outcome", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--spares", type=int, default=0)
    parser.add_argument("--emulated", action="store_true")
    args = parser.parse_args(argv)
    verdict = decide(args.run_dir, job=args.job, attempt=args.attempt, outcome=args.outcome, nodes=args.nodes,
                     spares=args.spares, emulated=args.emulated)  # fmt: skip
    for suspect in verdict.suspects:
        print(f"hpcai: node {suspect.get('scheduler_node') or suspect.get('node')} (node {suspect.get('node_rank')}): "
              f"{suspect.get('why')}", file=sys.stderr)  # fmt: skip
    print(verdict.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
