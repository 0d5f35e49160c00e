"""HF Trainer with `HpcaiCallback` (two lines in the user's script), run by `hpcai submit ./script.py` under
torchrun with 2 processes: an injected spike is rolled back with the LR cut and the run completes with no
human; a walltime stop saves at a step every rank agrees on, and the next attempt resumes from there."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hpcai.backends.schedulers.local import read_job
from hpcai.flows.resolve import prepare_job
from hpcai.flows.runs.submission import submit_run
from hpcai.flows.runs.views import status
from hpcai.spec.jobspec import Overrides
from hpcai.spec.userapp import program_workload
from hpcai.store.db import Store
from tests.conftest import REPO
from tests.helpers import wait_for, wait_terminal

pytest.importorskip("transformers", reason="the `train` extra")
pytest.importorskip("datasets", reason="the `programs` extra")

SCRIPT = REPO / "tests" / "fixtures" / "programs" / "hf_trainer_spike.py"
OPTIONS: dict[str, object] = dict(module=None, launcher="torchrun", accelerate_config=None, metrics_pattern=None,
                                  stop_signal=None, stop_grace_s=60, hang_timeout_s=None,
                                  resume_args="--resume_from_checkpoint {checkpoint}",
                                  checkpoint_pattern="out/checkpoint-*")  # fmt: skip


def _submit(store: Store, run_id: str, tiny_sft: Path, *args: str) -> Path:
    program_args = ["--model", str(tiny_sft / "model"), "--data", str(tiny_sft / "data"), *args]
    workload = program_workload(str(SCRIPT), program_args, **OPTIONS)  # type: ignore[arg-type]
    assert workload is not None
    submit_run(prepare_job(workload, "local", Overrides(run_id=run_id)), store)
    return Path(wait_for(store, run_id, {"RUNNING", "COMPLETED", "FAILED"}, timeout=120).run_dir)


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_injected_spike_is_rolled_back_with_the_lr_cut_and_the_run_completes(tiny_sft: Path) -> None:
    store = Store()
    run_dir = _submit(store, "hf-spike", tiny_sft, "--max_steps", "80", "--save_steps", "10", "--spike_at", "45")
    final = wait_terminal(store, "hf-spike", timeout=400)
    assert final.state == "COMPLETED", final
    decisions = [json.loads(x) for x in (run_dir / "decisions.jsonl").read_text().splitlines()]
    rollback = next(d for d in decisions if d["action"] == "rollback")
    assert rollback["checkpoint_step"] == 40 and rollback["lr_scale"] == 0.5 and rollback["step"] > 45
    assert any(d["action"] == "rollback_applied" and d["checkpoint_step"] == 40 for d in decisions)
    rows = _metrics(run_dir)
    steps = [int(r["step"]) for r in rows]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    first, second = rows[:restart], rows[restart:]
    assert max(r["loss"] for r in first if r["step"] > 45) > 50  # the spike, seen with its exact step
    assert second[0]["step"] == 41 and second[-1]["step"] == 80
    assert all(r["lr"] == pytest.approx(2.5e-4) for r in second[1:])  # the LR halved from step 42's log on
    assert all(r["lr"] == pytest.approx(5e-4) for r in first)
    assert max(r["loss"] for r in second) < 10  # no spike on the rolled-back trajectory
    (row,), _ = status(store, "hf-spike")
    assert row.step == 80


def test_a_walltime_stop_saves_where_every_rank_agrees_and_resumes_from_there(tiny_sft: Path) -> None:
    store = Store()
    run_dir = _submit(store, "hf-stop", tiny_sft, "--max_steps", "400", "--save_steps", "1000")
    deadline = time.monotonic() + 180
    while not (run_dir / "metrics.jsonl").exists() or len(_metrics(run_dir)) < 15:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    view = wait_for(store, "hf-stop", {"RUNNING"})
    job = read_job(str(view.job_id))
    assert job is not None
    os.kill(int(job["job_pid"]), signal.SIGUSR1)  # what Slurm's --signal=B:USR1 does before walltime
    final = wait_terminal(store, "hf-stop", timeout=400)
    assert final.state == "COMPLETED", final
    log = "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").iterdir()))
    saved = [int(line.split("saving at step ")[1].split()[0]) for line in log.splitlines() if "saving at step" in line]
    assert saved and saved[0] % 10 == 0  # the agreed step: a multiple of check_every, not of save_steps (1000)
    assert f"resuming with --resume_from_checkpoint {run_dir}/out/checkpoint-{saved[0]}" in log
    # Saved at the stop and resumed from there: every step logged once, none lost, none repeated.
    assert [int(r["step"]) for r in _metrics(run_dir)] == list(range(1, 401))
    events = [json.loads(x)["event"] for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert events[:3] == ["start", "end", "requeue"]


def test_an_accelerate_launched_script_survives_walltime_on_two_slurm_nodes(slurm_cluster: str, tiny_sft: Path) -> None:
    """`hpcai submit ./script.py --launcher accelerate -N 2` on the test Slurm (2 emulated nodes, one process
    each): accelerate's own launcher with nothing added, the walltime signal (scancel -b -s USR1, what
    --signal=B:USR1 sends) saves at an agreed step, Slurm requeues the job, and it resumes there."""
    import subprocess

    options = {**OPTIONS, "launcher": "accelerate"}
    program_args = ["--model", str(tiny_sft / "model"), "--data", str(tiny_sft / "data"), "--max_steps", "300",
                    "--save_steps", "1000"]  # fmt: skip
    workload = program_workload(str(SCRIPT), program_args, **options)  # type: ignore[arg-type]
    assert workload is not None
    store = Store()
    rendered = prepare_job(workload, slurm_cluster, Overrides(run_id="hf-accelerate", nodes=2, time="00:30:00"))
    launch = next(line for line in rendered.script.splitlines() if "accelerate.commands.launch" in line)
    assert "--use_fsdp" not in launch and "--num_machines 2" in launch and "--mixed_precision" not in launch
    submit_run(rendered, store)
    run_dir = Path(rendered.job.run_dir)
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.jsonl").exists() or len(_metrics(run_dir)) < 12:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.5)
    view = wait_for(store, "hf-accelerate", {"RUNNING"})
    subprocess.run(["scancel", "-s", "USR1", "-b", str(view.job_id)], check=True)
    final = wait_terminal(store, "hf-accelerate", timeout=400)
    assert final.state == "COMPLETED", final
    log = "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").iterdir()))
    assert "resuming with --resume_from_checkpoint" in log and "saving at step" in log
    assert [int(r["step"]) for r in _metrics(run_dir)] == list(range(1, 301))
