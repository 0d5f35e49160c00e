"""An unchanged third-party training program (TRL's SFT script, installed from the package registry) run
by `hpcai submit -m trl.scripts.sft -- ARGS` under torchrun: loss visible in status, a walltime stop ->
requeue -> resume by the program's own --resume_from_checkpoint, a failure named by the rank's exception.
On `local` (2 processes) and on the test Slurm (2 emulated nodes, 1 process each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
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
from tests.helpers import wait_for, wait_terminal

pytest.importorskip("trl", reason="TRL is the third-party program these tests run (the `train` extra)")

OPTIONS: dict[str, object] = dict(launcher="torchrun", accelerate_config=None, metrics_pattern=None,
                                  stop_signal=None, stop_grace_s=5, hang_timeout_s=None)  # fmt: skip


def _sft(root: Path, *, data: str = "data", steps: int = 120) -> list[str]:
    return ["--model_name_or_path", str(root / "model"), "--dataset_name", str(root / data), "--output_dir", "out",
            "--max_steps", str(steps), "--save_steps", "20", "--logging_steps", "1", "--use_cpu", "true",
            "--per_device_train_batch_size", "4", "--max_length", "64", "--report_to", "none"]  # fmt: skip


def _submit(store: Store, cluster: str, run_id: str, args: list[str], nodes: int | None = None) -> None:
    workload = program_workload(None, args, module="trl.scripts.sft", checkpoint_pattern="out/checkpoint-*",
                                resume_args="--resume_from_checkpoint {checkpoint}", **OPTIONS)  # type: ignore[arg-type]  # fmt: skip
    assert workload is not None
    submit_run(prepare_job(workload, cluster, Overrides(run_id=run_id, nodes=nodes, time="00:30:00")), store)


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.exists() else []


def _walltime_signal(cluster: str, job_id: str) -> None:
    """What the scheduler does before walltime: USR1 to the batch script."""
    if cluster == "local":
        job = read_job(job_id)
        assert job is not None
        os.kill(int(job["job_pid"]), signal.SIGUSR1)
    else:
        subprocess.run(["scancel", "-s", "USR1", "-b", job_id], check=True)


def _walltime_requeue_resume(cluster: str, tiny_sft: Path, nodes: int | None) -> None:
    store = Store()
    run_id = f"sft-walltime-{cluster}"
    _submit(store, cluster, run_id, _sft(tiny_sft), nodes=nodes)
    view = wait_for(store, run_id, {"RUNNING"}, timeout=180)
    run_dir = Path(view.run_dir)
    deadline = time.monotonic() + 240
    while not list((run_dir / "out").glob("checkpoint-*")) or len(_steps(run_dir)) < 25:
        assert time.monotonic() < deadline, (run_dir / "logs").iterdir()
        time.sleep(0.5)
    assert view.job_id
    _walltime_signal(cluster, view.job_id)
    final = wait_terminal(store, run_id, timeout=400)
    assert final.state == "COMPLETED", final
    events = [json.loads(x)["event"] for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert events[:3] == ["start", "end", "requeue"] and events[-1] == "end"
    log = "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").iterdir()))
    assert "hpcai: walltime is near: sending SIGUSR1" in log
    resumed = [line for line in log.splitlines() if "resuming with --resume_from_checkpoint" in line]
    assert resumed, log[-3000:]
    checkpoint = int(resumed[0].rsplit("checkpoint-", 1)[1])
    steps = _steps(run_dir)
    # The second attempt went on from the checkpoint (its first step is the one after it), not from 0: every
    # step is there, step 1 once, and where the steps go back (the first attempt got past the checkpoint;
    # not when it was stopped right after saving it) they go back to the step after the checkpoint.
    assert set(steps) == set(range(1, 121)) and steps.count(1) == 1 and steps[-1] == 120
    drops = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(drops) <= 1 and all(steps[i] == checkpoint + 1 for i in drops), (checkpoint, steps)
    (row,), _ = status(store, run_id)
    assert row.step == 120 and row.loss is not None


def test_trl_sft_unchanged_survives_a_walltime_requeue_on_local(tiny_sft: Path) -> None:
    _walltime_requeue_resume("local", tiny_sft, nodes=None)


def test_trl_sft_unchanged_survives_a_walltime_requeue_on_slurm(slurm_cluster: str, tiny_sft: Path) -> None:
    _walltime_requeue_resume(slurm_cluster, tiny_sft, nodes=2)


def test_a_failing_program_is_named_by_its_ranks_exception(tiny_sft: Path) -> None:
    store = Store()
    _submit(store, "local", "sft-fails", _sft(tiny_sft, data="no-such-data", steps=20))
    final = wait_terminal(store, "sft-fails", timeout=180)
    assert final.state == "FAILED"
    errors = list((Path(final.run_dir) / "errors").glob("rank-*.json"))
    assert errors
    record = json.loads(errors[0].read_text())
    assert record["type"] == "FileNotFoundError" and "no-such-data" in record["message"]
    (row,), _ = status(store, "sft-fails")
    assert row.reason is not None and row.reason.startswith("FileNotFoundError"), row.reason


def test_srun_launcher_starts_a_task_per_process_with_its_rank(slurm_cluster: str, tmp_path: Path) -> None:
    """`--launcher srun`: one Slurm task per process, each with SLURM_PROCID and torch's RANK/WORLD_SIZE
    (as open_clip-style programs read them), each under its own supervisor; task 0's loss reaches status."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os\n"
        "keys = ['SLURM_PROCID', 'SLURM_NTASKS', 'RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']\n"
        "seen = {k: os.environ.get(k) for k in keys}\n"
        "os.makedirs('ranks', exist_ok=True)\n"
        "open(f\"ranks/{seen['RANK']}.json\", 'w').write(json.dumps(seen))\n"
        "print(f\"step 1 loss: {0.25 + int(seen['RANK'])}\", flush=True)\n"
    )
    options = {**OPTIONS, "launcher": "srun", "module": None, "resume_args": None, "checkpoint_pattern": None}
    workload = program_workload(str(script), [], **options)  # type: ignore[arg-type]
    assert workload is not None
    store = Store()
    submit_run(prepare_job(workload, slurm_cluster, Overrides(run_id="srun-ranks", nodes=2, time="00:05:00")), store)
    final = wait_terminal(store, "srun-ranks", timeout=240)
    assert final.state == "COMPLETED", final
    ranks = {int(p.stem): json.loads(p.read_text()) for p in (Path(final.run_dir) / "ranks").glob("*.json")}
    assert sorted(ranks) == [0, 1]
    for rank, seen in ranks.items():
        assert seen["SLURM_PROCID"] == str(rank) and seen["WORLD_SIZE"] == "2" and seen["SLURM_NTASKS"] == "2"
        assert seen["MASTER_ADDR"] and seen["MASTER_PORT"]
    assert final.loss == 0.25  # task 0 writes the metrics


def test_trl_sft_unchanged_moves_from_local_to_slurm(slurm_cluster: str, tiny_sft: Path) -> None:
    """`hpcai move` with the user's own program (issue 32, item 1): TRL's SFT stopped on `local` goes on on the
    test Slurm from its newest checkpoint folder (out/checkpoint-N, its --checkpoint-pattern), carried into the
    new run folder, where the job hands it to the program's --resume_from_checkpoint."""
    from tests.conftest import run_cli

    store = Store()
    run_id = "sft-move"
    _submit(store, "local", run_id, _sft(tiny_sft))
    view = wait_for(store, run_id, {"RUNNING"}, timeout=180)
    old_dir = Path(view.run_dir)
    deadline = time.monotonic() + 240
    while not list((old_dir / "out").glob("checkpoint-*")) or len(_steps(old_dir)) < 25:
        assert time.monotonic() < deadline, (old_dir / "logs").iterdir()
        time.sleep(0.5)
    assert run_cli("cancel", run_id).returncode == 0
    assert wait_terminal(store, run_id, timeout=120).state == "CANCELLED"

    moved = run_cli("move", run_id, "--to", slurm_cluster, "-N", "2", "--json", timeout=180)
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert result["checkpoint"].startswith("checkpoint-") and result["cluster"] == slurm_cluster
    new_dir = Path(result["run_dir"])
    assert new_dir != old_dir and (new_dir / "out" / result["checkpoint"] / "trainer_state.json").is_file()
    final = wait_terminal(store, run_id, timeout=400)
    assert final.state == "COMPLETED", final
    log = "".join(p.read_text(errors="replace") for p in sorted((new_dir / "logs").iterdir()))
    resumed = [line for line in log.splitlines() if "resuming with --resume_from_checkpoint" in line]
    assert resumed and f"{new_dir}/out/{result['checkpoint']}" in resumed[0], log[-3000:]
    steps = _steps(new_dir)  # the carried history and the new attempt's steps: every step, none lost
    assert set(steps) == set(range(1, 121)) and steps[-1] == 120
    detail = json.loads(run_cli("status", run_id, "--json").stdout)
    assert [a["cluster"] for a in detail["attempts"]] == ["local", slurm_cluster]


def test_trl_sft_unchanged_resumed_by_hand_goes_on_from_its_checkpoint(tiny_sft: Path) -> None:
    """`hpcai resume` counts the job script's attempts afresh: the attempt it submits is the first of that
    count, and still hands the program its newest checkpoint (before, only attempts after the first did)."""
    from tests.conftest import run_cli

    store = Store()
    run_id = "sft-by-hand"
    _submit(store, "local", run_id, _sft(tiny_sft, steps=60))
    view = wait_for(store, run_id, {"RUNNING"}, timeout=180)
    run_dir = Path(view.run_dir)
    deadline = time.monotonic() + 240
    while not list((run_dir / "out").glob("checkpoint-*")) or len(_steps(run_dir)) < 25:
        assert time.monotonic() < deadline, (run_dir / "logs").iterdir()
        time.sleep(0.5)
    assert run_cli("cancel", run_id).returncode == 0
    assert wait_terminal(store, run_id, timeout=120).state == "CANCELLED"
    resumed = run_cli("resume", run_id, "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert wait_terminal(store, run_id, timeout=420).state == "COMPLETED"
    log = "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").iterdir()))
    assert "attempt 1: resuming with --resume_from_checkpoint" in log, log[-3000:]
    steps = _steps(run_dir)
    assert set(steps) == set(range(1, 61)) and steps.count(1) == 1
