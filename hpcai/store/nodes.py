"""The per-cluster exclusion list: nodes that runs found failing, left out of later submissions.

Fed from each run's node log (`node_failures.jsonl`, written by the job's recovery decision,
hpcai.runtime.recovery) whenever hpcai looks at the run. A node is left out of later Slurm submissions
to its cluster (`#SBATCH --exclude`) while one of these holds, until its records expire:

- it failed on its own once: its task died with it, its launcher was killed by a signal nobody sent, or
  its ranks died of a device/NCCL/RCCL error first;
- it hung twice (a single hang may be a stuck collective that was nobody's fault).

Records expire after NODE_EXCLUSION_S (3 days: sites drain and repair a failing node within about a
day, and a node left out longer only lengthens queue waits); `hpcai nodes clear` forgets them sooner.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from hpcai.runtime.recovery import NODE_NAME
from hpcai.store.db import BadNode, Store

NODE_EXCLUSION_S = 3 * 24 * 3600


@dataclass(frozen=True)
class Exclusion:
    """A node later submissions leave out, why, and until when."""

    node: str
    reason: str
    until: float  # when the last record that keeps it out expires


def exclusions(entries: list[BadNode]) -> list[Exclusion]:
    """The nodes to leave out, from a cluster's unexpired failure records."""
    by_node: dict[str, list[BadNode]] = defaultdict(list)
    for entry in entries:
        by_node[entry.node].append(entry)
    result = []
    for node, records in sorted(by_node.items()):
        failures = [r for r in records if not r.hang]
        hangs = [r for r in records if r.hang]
        if failures:
            result.append(Exclusion(node, failures[-1].reason, max(r.expires for r in failures)))
        elif len(hangs) >= 2:
            # Out until the second-newest hang expires: from then on only one hang is on record.
            until = sorted(r.expires for r in hangs)[-2]
            result.append(Exclusion(node, f"hung {len(hangs)} times: {hangs[-1].reason}", until))
    return result


def excluded_nodes(store: Store, cluster: str) -> list[str]:
    """The nodes a submission to `cluster` leaves out now."""
    return [e.node for e in exclusions(store.bad_nodes(cluster))]


def record_from_node_log(store: Store, cluster: str, run_id: str, records: list[dict[str, Any]]) -> int:
    """Record a run's node-log lines on its cluster's list (each once); returns how many were new."""
    entries = []
    for record in records:
        node = str(record.get("node") or "")
        when = record.get("time")
        if not NODE_NAME.fullmatch(node) or not isinstance(when, int | float) or isinstance(when, bool):
            continue
        since = float(when)
        if not math.isfinite(since) or since <= 0:
            continue  # not a time (1e400 reads as inf)
        # A failure cannot have happened in the future: a planted or clock-skewed "time" would keep the
        # node excluded for centuries.
        since = min(since, time.time())
        why = str(record.get("why") or "failed")[:300]
        source = f"{run_id}/{record.get('job_id')}/{record.get('attempt')}/{record.get('node_rank')}"[:300]
        entries.append(BadNode(cluster=cluster, node=node, reason=why, run_id=run_id, source=source,
                               hang=why.startswith("hang"), since=since, expires=since + NODE_EXCLUSION_S))  # fmt: skip
    return store.record_bad_nodes(entries)
