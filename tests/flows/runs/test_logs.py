"""`hpcai logs`: a log of any size in constant memory; a failed attempt's error shown without --stderr."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hpcai.store.db import Run, Store
from tests.conftest import REPO, run_cli


def _ended_run(run_dir: Path, run_id: str, state: str, job_id: str = "L0000beef") -> None:
    store = Store()
    store.create_run(Run(run_id, "probe", "local", None, str(run_dir), {}, time.time(), "SUBMITTING"))
    store.update_attempt(run_id, 1, job_id=job_id, state=state, exit_code=0 if state == "COMPLETED" else 1)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)


def test_a_big_log_streams_in_constant_memory(isolated_hpcai: Path, tmp_path: Path) -> None:
    """200 MB of log: the whole file held in memory (as before) takes the CLI past 400 MB."""
    _ended_run(tmp_path, "big-log-run", "COMPLETED")
    line = b"x" * 99 + b"\n"
    with open(tmp_path / "logs" / "local-L0000beef.out", "wb") as handle:
        for _ in range(200):
            handle.write(line * 10_000)
    # A fresh parent, so the peak it reports is this one child's (RUSAGE_CHILDREN keeps every child's max).
    measure = ("import resource, subprocess, sys; "
               "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # fmt: skip
    command = [sys.executable, "-m", "hpcai", "logs", "big-log-run", "--raw"]
    proc = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True, cwd=REPO,
                          timeout=300)  # fmt: skip
    rc, peak_kb = proc.stdout.split()
    assert rc == "0", proc.stderr
    assert int(peak_kb) / 1024 < 150, f"logs took {int(peak_kb) / 1024:.0f} MB for a 200 MB log"


def test_logs_of_a_failed_attempt_end_with_its_error(isolated_hpcai: Path, tmp_path: Path) -> None:
    _ended_run(tmp_path, "failed-run", "FAILED")
    (tmp_path / "logs" / "local-L0000beef.out").write_text("step 1\nstep 2\n")
    (tmp_path / "logs" / "local-L0000beef.err").write_text(
        "".join(f"noise {i}\n" for i in range(100)) + "RuntimeError: CUDA out of memory\n"
    )
    result = run_cli("logs", "failed-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("step 1\nstep 2\n") and "the attempt ended FAILED" in result.stdout
    assert result.stdout.rstrip().endswith("RuntimeError: CUDA out of memory") and "noise 50" not in result.stdout
    _ended_run(tmp_path / "ok", "completed-run", "COMPLETED", job_id="L0000cafe")
    (tmp_path / "ok" / "logs" / "local-L0000cafe.out").write_text("done\n")
    (tmp_path / "ok" / "logs" / "local-L0000cafe.err").write_text("a warning\n")
    assert run_cli("logs", "completed-run").stdout == "done\n"
