"""Recovery from a loss spike on the local Slurm: steps lost per rollback, and the seconds from the spike
to the next attempt's first step (detection, checkpoint choice, relaunch inside the allocation, start-up, resume).

The tiny LLaVA workload with a spike injected at step K (the `inject_spike_at` test hook) runs under the
real Slurm that `tests/infra/slurm.sh start` brings up; the job rolls itself back, no client involved.

Run: python benchmarks/recovery.py [--cluster local-slurm] [--spike-at 25] [--checkpoint-every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cluster", default="local-slurm")
    parser.add_argument("--spike-at", type=int, default=25)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    if args.cluster == "local-slurm" and subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        sys.exit("the test Slurm is not running: tests/infra/slurm.sh start")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HPCAI_HOME"] = tmp
        from hpcai.flows.resolve import prepare_job
        from hpcai.flows.runs.submission import submit_run
        from hpcai.flows.runs.views import run_detail
        from hpcai.spec.jobspec import Overrides
        from hpcai.store.db import Store

        store = Store()
        settings = (
            "stage=finetune", "lr=2e-3", "samples=64", f"max_steps={args.steps}",
            f"checkpoint_every={args.checkpoint_every}", f"inject_spike_at={args.spike_at}",
        )  # fmt: skip
        submit_run(prepare_job("llava", args.cluster, Overrides(set=settings, run_id="recovery")), store)
        deadline = time.monotonic() + 900
        while True:
            detail = run_detail(store, "recovery")
            attempts = detail["attempts"]
            if len(attempts) >= 2 and attempts[-1]["state"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
                break
            if time.monotonic() > deadline:
                sys.exit(f"the run did not finish: {detail['state']}")
            time.sleep(1)
        run_dir = Path(str(detail["run_dir"]))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        decisions = [d for d in detail["decisions"] if d["action"] == "rollback"]
    onset = args.spike_at + 1  # the corrupted update shows in the next step's loss
    split = next(i for i in range(1, len(rows)) if rows[i]["step"] <= rows[i - 1]["step"])
    first, second = rows[:split], rows[split:]
    spike_time = next(r["time"] for r in first if r["step"] == onset)
    print(f"cluster {args.cluster}: tiny llava, spike injected at step {args.spike_at}, checkpoints every "
          f"{args.checkpoint_every} steps")  # fmt: skip
    for decision in decisions:
        detected = decision["step"]
        target = decision["checkpoint_step"]
        print(f"rollback: {decision['reason']}")
        print(f"  detected at step {detected} ({detected - onset} steps after the onset)")
        print(f"  steps lost: {detected - target} (trained again from step {target})")
    print(f"seconds from the spike to the next attempt's first step: {second[0]['time'] - spike_time:.1f}")
    print(f"  of which detection (steps {onset}-{first[-1]['step']}): {first[-1]['time'] - spike_time:.1f} s")
    print(f"  exit, relaunch in the allocation, start-up and resume: {second[0]['time'] - first[-1]['time']:.1f} s")
    print(f"attempts: {len(attempts)}, final state {attempts[-1]['state']} at step {rows[-1]['step']}")


if __name__ == "__main__":
    main()
