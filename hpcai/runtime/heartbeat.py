"""Per-rank heartbeats for the node's hang watchdog (hpcai.runtime.watchdog), and stack dumps on demand.

Each rank replaces one small file in a node-local folder (HPCAI_HEARTBEAT_DIR, set by the job script:
/dev/shm or /tmp, never the parallel filesystem) at every step and phase change: its pid, step, phase
(setup, loading, step, checkpoint, done) and the last step's duration. At 1,000 ranks that is 1,000
tmpfs writes per step spread over the nodes, and no metadata traffic on Lustre/GPFS.

`faulthandler` is registered on SIGUSR2: the watchdog sends it to every worker of a hung node and each
one writes all its threads' Python stacks into the run directory (`stacks/<job>-rank-<R>.txt`).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import time
from pathlib import Path
from typing import IO

VARIABLE = "HPCAI_HEARTBEAT_DIR"
STACKS_DIR = "stacks"
DUMP_SIGNAL = signal.SIGUSR2


class Heartbeat:
    def __init__(self, run_dir: Path, rank: int, local_rank: int) -> None:
        folder = os.environ.get(VARIABLE, "")
        self.path = Path(folder) / f"rank-{rank}.json" if folder else None
        self.rank, self.local_rank = rank, local_rank
        self._stacks: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            job = os.environ.get("HPCAI_JOB_ID", "job")
            stacks = run_dir / STACKS_DIR
            stacks.mkdir(parents=True, exist_ok=True)
            self._stacks = open(stacks / f"{job}-rank-{rank}.txt", "a", encoding="utf-8")  # noqa: SIM115
            faulthandler.register(DUMP_SIGNAL, file=self._stacks, all_threads=True, chain=False)

    def beat(self, phase: str, step: int | None = None, step_s: float | None = None) -> None:
        if self.path is None:
            return
        record = {"pid": os.getpid(), "rank": self.rank, "local_rank": self.local_rank, "phase": phase,
                  "step": step, "step_s": step_s, "time": time.time(), "mono": time.monotonic()}  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.beat("done")
        if self._stacks is not None:
            faulthandler.unregister(DUMP_SIGNAL)
            self._stacks.close()
            self._stacks = None
