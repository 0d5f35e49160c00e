"""Why a job ended, in words: each rank that dies of an exception leaves a one-line account in the run
directory (`errors/rank-<N>.json`), so `hpcai status` can say "torch.OutOfMemoryError: CUDA out of memory
... (rank 3 on node0042)" instead of "exit code 1". The first rank to fail is usually the cause; the
others die of the collective it left behind."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

from hpcai.rundir.contract import ERRORS_DIR


def _cause(exc: BaseException) -> BaseException:
    """The exception that says why: torch's distributed checkpoint wraps each rank's own failure (a damaged
    shard's "failed reading zip archive", a missing file) in a CheckpointException that names only ranks."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)] if all(isinstance(k, int) for k in failures) else next(iter(failures.values()))
        inner = first[0] if isinstance(first, tuple) and first else first
        if isinstance(inner, BaseException):
            return inner
    return exc


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Write this rank's exception (type, message, innermost frame) atomically; never raises."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        outer, exc = exc, _cause(exc)
        frames = traceback.extract_tb(exc.__traceback__) or traceback.extract_tb(outer.__traceback__)
        # The innermost frame in hpcai's or the workload's code says more than one deep in a library.
        ours = [f for f in frames if "/hpcai/" in f.filename or "/workloads/" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else None
        message = str(exc).strip().splitlines()
        record = {
            "rank": rank,
            "host": socket.gethostname(),
            "job_id": os.environ.get("HPCAI_JOB_ID"),
            "time": time.time(),
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
            "message": (message[0] if message else "")[:500],
            "where": where,
        }
        folder = run_dir / ERRORS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank-{rank}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, folder / f"rank-{rank}.json")
    except Exception:  # reporting must never hide the original error
        pass
