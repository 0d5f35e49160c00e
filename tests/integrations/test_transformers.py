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

from hpcai.jobspec import Overrides
from hpcai.runs.submission import submit_run
from hpcai.runs.views import status
from hpcai.schedulers.local import read_job
from hpcai.service import prepare_job
from hpcai.store import Store
from hpcai.userapp import program_workload
from tests.conftest import REPO
from tests.helpers import wait_for, wait_terminal

pytest.importorskip("transformers", reason="the `train` extra")
pytest.importorskip("datasets", reason="the `programs` extra")

SCRIPT = REPO / "tests" / "fixtures" / "programs" / "hf_trainer_spike.py"
OPTIONS: dict[str, object] = dict(module=None, launcher="torchrun", accelerate_config=None, metrics_pattern=None,
                                  stop_signal=None, stop_grace_s=60, hang_timeout_s=None,
                                  resume_args="--resume_from_checkpoint {checkpoint}",
                                  checkpoint_pattern="out/checkpoint-*")  # fmt: skip


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpcai.train.parts import build_lm, corpus

    root = tmp_path_factory.mktemp("hf")
    build_lm(root / "model", "qwen2", corpus(0, 400), 0, pretrain_steps=0)
    (root / "data").mkdir()
    with open(root / "data" / "train.jsonl", "w") as out:
        for text in corpus(1, 400):
            out.write(json.dumps({"text": text}) + "\n")
    return root


def _submit(store: Store, run_id: str, tiny_lm: Path, *args: str) -> Path:
    program_args = ["--model", str(tiny_lm / "model"), "--data", str(tiny_lm / "data"), *args]
    workload = program_workload(str(SCRIPT), program_args, **OPTIONS)  # type: ignore[arg-type]
    assert workload is not None
    submit_run(prepare_job(workload, "local", Overrides(run_id=run_id)), store)
    return Path(wait_for(store, run_id, {"RUNNING", "COMPLETED", "FAILED"}, timeout=120).run_dir)


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_injected_spike_is_rolled_back_with_the_lr_cut_and_the_run_completes(tiny_lm: Path) -> None:
    store = Store()
    run_dir = _submit(store, "hf-spike", tiny_lm, "--max_steps", "80", "--save_steps", "10", "--spike_at", "45")
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


def test_a_walltime_stop_saves_where_every_rank_agrees_and_resumes_from_there(tiny_lm: Path) -> None:
    store = Store()
    run_dir = _submit(store, "hf-stop", tiny_lm, "--max_steps", "400", "--save_steps", "1000")
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
