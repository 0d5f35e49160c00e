"""`hpcai status` with 1,000 runs in the store: wall time, and how many scheduler commands it ran.

Needs the test Slurm (`tests/infra/slurm.sh start`). Half the runs are finished (never asked about
again), half are active with job ids Slurm no longer knows, the worst case: squeue, then sacct for all.
Scheduler commands are counted by wrappers on PATH that log each call before running the real one.

With --ssh, the same status is asked from "a laptop": through the test sshd (tests/infra/sshd.sh, started
here), and it prints the remote round trips (commands and file reads) the status took.

Run: python benchmarks/status_scale.py [--runs 1000] [--repeats 3] [--ssh]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["squeue", "sacct", "sbatch", "scontrol", "scancel"]


def fill_store(home: Path, runs: int) -> None:
    os.environ["HPCAI_HOME"] = str(home)
    from hpcai.store.db import Run, Store

    store = Store()
    now = time.time()
    for i in range(runs):
        run_id = f"bench-{i:05d}"
        store.create_run(
            Run(run_id, "llava", "local-slurm", "pretrain", f"{home}/runs/{run_id}", {}, now, "SUBMITTING")
        )
        finished = i % 2 == 0
        store.update_attempt(
            run_id,
            1,
            job_id=str(900000 + i),
            state="COMPLETED" if finished else "RUNNING",
            exit_code=0 if finished else None,
        )


def make_wrappers(directory: Path, log: Path) -> None:
    directory.mkdir()
    for name in COMMANDS:
        real = subprocess.run(["which", name], capture_output=True, text=True).stdout.strip()
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/bash\necho {name} >> "{log}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ssh", action="store_true", help="ask through the test sshd and count round trips")
    args = parser.parse_args()
    if args.ssh:
        return over_ssh(args.runs)
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        sys.exit("the test Slurm is not running: tests/infra/slurm.sh start")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fill_store(root / "home", args.runs)
        log = root / "calls.log"
        make_wrappers(root / "bin", log)
        env = {**os.environ, "HPCAI_HOME": str(root / "home"), "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
        times, calls = [], []
        for _ in range(args.repeats):
            log.write_text("")
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "hpcai", "status", "--json"], env=env, check=True, capture_output=True
            )
            times.append(time.perf_counter() - start)
            calls.append(log.read_text().split())
        print(f"runs in store:            {args.runs} ({args.runs // 2} active, {args.runs - args.runs // 2} finished)")
        print(f"hpcai status --json:      median {statistics.median(times):.2f} s over {args.repeats} runs")
        print(f"scheduler calls per run:  {len(calls[-1])} ({', '.join(calls[-1])})")


def over_ssh(runs: int) -> None:
    import json
    import socket

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        env = {**os.environ, "HPCAI_SSHD_PORT": port}
        subprocess.run([str(repo / "tests/infra/sshd.sh"), "start", str(root / "sshd")], check=True, env=env)
        try:
            fill_store(root / "home", runs)
            for i in range(runs):
                run_dir = root / "home" / "runs" / f"bench-{i:05d}"
                run_dir.mkdir(parents=True)
                (run_dir / "metrics.jsonl").write_text(json.dumps({"step": i, "loss": 1.0}) + "\n")
            (root / "config").mkdir()
            (root / "config" / "config.toml").write_text('[clusters.local-slurm]\nssh_host = "hpcai-test"\n')
            os.environ.update(HPCAI_CONFIG_DIR=str(root / "config"), HPCAI_SSH_CONFIG=str(root / "sshd" / "ssh_config"))
            sys.path.insert(0, str(repo))
            from hpcai.backends.session import Session
            from hpcai.flows.runs.views import status
            from hpcai.store.db import Store

            with Session() as session:
                start = time.perf_counter()
                views, _ = status(Store())
                elapsed = time.perf_counter() - start
                operations = session.get("local-slurm").transport.operations  # type: ignore[attr-defined]
            print(f"runs in store:            {runs} ({runs // 2} active, {runs - runs // 2} finished), over SSH")
            print(f"hpcai status:             {elapsed:.2f} s, {len(views)} runs shown")
            print(f"remote round trips:       {operations} (squeue, sacct, one read of all run directories)")
        finally:
            subprocess.run([str(repo / "tests/infra/sshd.sh"), "stop", str(root / "sshd")], env=env)


if __name__ == "__main__":
    main()
