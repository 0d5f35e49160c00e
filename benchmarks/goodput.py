"""Goodput under faults, measured on the test Slurm, then projected to a 7-day run at scale.

One tiny LLaVA run (1 node + 1 spare, compressed time) meets, in order: a loss spike (`inject_spike_at`:
the job rolls back inside its allocation), a hang (`inject_hang_at`: the watchdog detects it, the spare
takes the node's place inside the allocation), a killed node task (`inject_crash_at`: the spare is used
up, so the run goes back to the queue without the node) and walltime (USR1 sent by this script, as
Slurm's `--signal` would: checkpoint, requeue). Nobody intervenes. For each event it prints the measured
cost in seconds -- detection, teardown (detection to the attempt's end), wait (end to the next start:
in-allocation relaunch, or resubmission + queue), restart (start to the first step) and work lost -- and
the run's measured ETTR (the goodput account of `hpcai status`).

Then it projects ETTR for a 7-day run on 64 and 1,024 GPUs (24 h walltime per job) from those measured
costs plus stated costs for a 7B model (MODEL_START_S: imports, NCCL set-up and loading model and
checkpoint; CHECKPOINT_S: one sharded save), Llama 3's interruption rate (466 in 54 days on 16,384 GPUs)
scaled to the GPU count, the watchdog's default hang limit (180 s) for detection, and a checkpoint
interval from Young/Daly's rule (sqrt(2 x save cost x MTBF)), capped at one hour.

Run: tests/infra/slurm.sh start; python benchmarks/goodput.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL_START_S = 120.0  # 7B: imports + NCCL init + model build + sharded checkpoint load from Lustre
CHECKPOINT_S = 30.0  # 7B sharded save (112 GB of weights + AdamW state) at a few GB/s per job
HANG_LIMIT_S = 180.0  # the watchdog's default floor (hang_timeout_s), what a real run waits
LLAMA3_RATE = 466 / (54 * 24 * 16384)  # interruptions per GPU-hour (Llama 3 report, 2024)
DAYS, WALLTIME_H = 7, 24


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(run_dir: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = jsonl(run_dir / "metrics.jsonl")
        if rows and rows[-1]["step"] >= step and (run_dir / ".injected-crash").exists():
            return
        time.sleep(0.2)
    sys.exit(f"the run did not reach step {step}")


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from hpcai.flows.resolve import prepare_job
    from hpcai.flows.runs.goodput import account
    from hpcai.flows.runs.submission import submit_run
    from hpcai.flows.runs.views import run_detail
    from hpcai.spec.jobspec import Overrides
    from hpcai.store.db import Store

    store = Store()
    settings = (
        "stage=finetune", "lr=2e-3", "samples=64", f"max_steps={args.steps}", "checkpoint_every=10",
        f"inject_spike_at={args.spike_at}", f"inject_hang_at={args.hang_at}", f"inject_crash_at={args.crash_at}",
        f"hang_timeout_s={args.hang_timeout}",
    )  # fmt: skip
    overrides = Overrides(set=settings, run_id="goodput", spare_nodes=1, time="00:30:00")
    submit_run(prepare_job("llava", "local-slurm", overrides), store)
    run_dir = Path(str(run_detail(store, "goodput")["run_dir"]))
    wait_for(run_dir, args.walltime_at)
    job = (run_dir / "job_id").read_text().strip()
    usr1_at = time.time()
    subprocess.run(["scancel", "-s", "USR1", "-b", job], check=True)  # walltime is near
    deadline = time.monotonic() + 900
    while True:
        detail = run_detail(store, "goodput")
        attempts = detail["attempts"]
        last = attempts[-1]
        if last["state"] in {"COMPLETED", "CANCELLED", "TIMEOUT"} or (
            last["state"] == "FAILED" and last["exit_code"] not in {89, 90}
        ):
            break
        if time.monotonic() > deadline:
            sys.exit(f"the run did not finish: {detail['state']}")
        time.sleep(1)
    log = jsonl(run_dir / "attempts.jsonl")
    metrics = jsonl(run_dir / "metrics.jsonl")
    goodput = account(log, metrics, jsonl(run_dir / "timeline.jsonl"), nodes=2).to_json()
    starts = [e for e in log if e["event"] == "start"]
    ends = [e for e in log if e["event"] == "end"]
    hangs = [json.loads(p.read_text()) for p in sorted((run_dir / "hangs").glob("*.json"))]
    decisions = [d for d in jsonl(run_dir / "decisions.jsonl") if d.get("action") == "rollback"]
    crash_step = int((run_dir / ".injected-crash").read_text())

    def step_time(step: int, before: float) -> float:
        return max(m["time"] for m in metrics if m["step"] == step and m["time"] <= before)

    events = []
    for index, end in enumerate(ends[:-1]):
        rc, finish = end["rc"], end["epoch"]
        if rc == 86:
            decision = decisions[0]
            fault, detected, name = step_time(args.spike_at + 1, finish), decision["time"], "loss spike (rollback)"
        elif rc == 89:
            fault = hangs[0]["time"] - hangs[0]["stalled_s"]
            detected, name = hangs[0]["time"], "hang"
        elif rc == 85:
            fault, detected, name = usr1_at, usr1_at, "walltime (checkpoint, requeue)"
        else:  # the node died right after step crash_step (before its metrics line): its last progress
            fault = max(m["time"] for m in metrics if m["time"] <= finish and m["step"] < crash_step)
            detected, name = finish, "killed node task"
        start = starts[index + 1]["epoch"]
        first = min(m["time"] - m.get("step_s", 0) for m in metrics if m["time"] > start)
        account_of = goodput["attempts"][index]
        events.append({
            "event": name, "how": "relaunch in allocation" if goodput["attempts"][index + 1]["relaunched"] else
            ("requeue" if rc == 85 else "new job"),
            "detection_s": detected - fault, "teardown_s": finish - detected, "wait_s": start - finish,
            "restart_s": first - start, "lost_s": account_of["lost_s"],
            "steps_lost": account_of["steps_run"] - account_of["steps_kept"],
        })  # fmt: skip
    return events, {"goodput": goodput, "state": detail["state"], "attempts": len(attempts),
                    "median_step_s": sorted(m["step_s"] for m in metrics)[len(metrics) // 2]}  # fmt: skip


def project(gpus: int, events: list[dict[str, Any]]) -> dict[str, float]:
    hours = DAYS * 24
    rate = LLAMA3_RATE * gpus  # interruptions per hour
    mtbf_s = 3600 / rate
    interval = min(3600.0, math.sqrt(2 * CHECKPOINT_S * mtbf_s))
    in_place = [e for e in events if e["how"] == "relaunch in allocation"]
    overhead = max(e["teardown_s"] + e["wait_s"] for e in in_place) if in_place else 60.0
    per_failure = HANG_LIMIT_S + overhead + MODEL_START_S + interval / 2  # detection, teardown, restart, lost
    failures = rate * hours
    saves = hours * 3600 / interval * CHECKPOINT_S
    requeues = (hours / WALLTIME_H - 1) * (MODEL_START_S + CHECKPOINT_S)
    lost = failures * per_failure + saves + requeues + MODEL_START_S
    return {"gpus": gpus, "interruptions": failures, "checkpoint_interval_s": interval, "checkpoint_s": saves,
            "failures_s": failures * per_failure, "restarts_s": requeues + MODEL_START_S,
            "ettr": 1 - lost / (hours * 3600)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--spike-at", type=int, default=25)
    parser.add_argument("--hang-at", type=int, default=45)
    parser.add_argument("--crash-at", type=int, default=65)
    parser.add_argument("--walltime-at", type=int, default=82)
    parser.add_argument("--hang-timeout", type=int, default=5)
    parser.add_argument("--home", help="keep the run's store and files here (default: a temporary folder)")
    args = parser.parse_args()
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode:
        sys.exit("the test Slurm is not running: tests/infra/slurm.sh start")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HPCAI_HOME"] = args.home or tmp
        events, run = measure(args)
    goodput = run["goodput"]
    print(f"tiny llava on the test Slurm, 1 node + 1 spare, {args.steps} steps, median step "
          f"{run['median_step_s']:.3f} s; {run['attempts']} attempts, final state {run['state']}")  # fmt: skip
    print(f"{'event':32} {'recovery':24} {'detect':>7} {'teardown':>8} {'wait':>6} {'restart':>7} {'lost':>6}")
    for e in events:
        print(f"{e['event']:32} {e['how']:24} {e['detection_s']:7.1f} {e['teardown_s']:8.1f} {e['wait_s']:6.1f} "
              f"{e['restart_s']:7.1f} {e['lost_s']:6.1f}  ({e['steps_lost']} steps)")  # fmt: skip
    limit = max(3 * run["median_step_s"], 60.0)
    hang = next(e for e in events if e["event"] == "hang")
    print(f"hang detected {hang['detection_s']:.1f} s after the last progress (hang_timeout_s={args.hang_timeout:g}; "
          f"target <= max(3 x median step, 60 s) = {limit:.0f} s)")  # fmt: skip
    names = ("allocated_s", "startup_s", "productive_s", "lost_s", "checkpoint_s", "hang_s", "other_s")
    parts = ", ".join(f"{k.removesuffix('_s')} {goodput[k]:.1f} s" for k in names)
    print(f"measured ETTR {goodput['ettr']:.3f} ({parts}): a tiny CPU model is mostly start-up")
    print(f"\nprojection: {DAYS}-day run, {WALLTIME_H} h walltime, 7B model (start-up {MODEL_START_S:.0f} s, "
          f"checkpoint save {CHECKPOINT_S:.0f} s), Llama 3 interruption rate, hang limit "
          f"{HANG_LIMIT_S:.0f} s")  # fmt: skip
    print(f"{'GPUs':>6} {'interruptions':>13} {'ckpt every':>10} {'ckpt cost':>10} {'failures':>9} {'restarts':>9} "
          f"{'ETTR':>7}")  # fmt: skip
    for gpus in (64, 1024):
        p = project(gpus, events)
        interval = p["checkpoint_interval_s"] / 60
        print(f"{gpus:6d} {p['interruptions']:13.2f} {interval:8.0f} m {p['checkpoint_s'] / 3600:8.2f} h "
              f"{p['failures_s'] / 3600:7.2f} h {p['restarts_s'] / 3600:7.2f} h {p['ettr']:7.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
