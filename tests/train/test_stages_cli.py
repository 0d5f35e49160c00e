"""LLaVA-1.5's two stages from the command line on the `local` cluster: stage 2 starts from stage 1's
exported model with `--from RUN`, and what cannot work is refused before anything is queued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal
from tests.train.launch import losses

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")

SHORT = ("--set", "max_steps=20", "--set", "samples=64", "--set", "checkpoint_every=20")


def test_finetune_from_the_pretrain_run(isolated_hpcai: Path) -> None:
    first = run_cli("submit", "llava", "--stage", "pretrain", *SHORT, "--set", "max_steps=40",
                    "--set", "checkpoint_every=40", "--json", timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    pretrain = json.loads(first.stdout)["run_id"]
    # before stage 1 has exported its model, stage 2 from it cannot start: refused here, not in the job
    early = run_cli("submit", "llava", "--stage", "finetune", "--from", pretrain, *SHORT, timeout=120)
    store = Store()
    view = wait_terminal(store, pretrain, timeout=300)
    assert view.state == "COMPLETED", view
    run_dir = Path(store.run(pretrain).run_dir)
    # (the first job needs seconds to build its parts and train: its model cannot be there yet)
    assert early.returncode == 2 and "model_path" in early.stderr and "Traceback" not in early.stderr, early

    second = run_cli("submit", "llava", "--stage", "finetune", "--from", pretrain, *SHORT, "--json", timeout=120)
    assert second.returncode == 0, second.stderr
    finetune = json.loads(second.stdout)["run_id"]
    assert wait_terminal(store, finetune, timeout=300).state == "COMPLETED"
    finetune_dir = Path(store.run(finetune).run_dir)
    assert f"--model_path {run_dir / 'model'}" in (finetune_dir / "job.sh").read_text()
    assert (finetune_dir / "model" / "config.json").is_file()
    # stage 2 begins with stage 1's projector: below a stage 2 that starts from an untrained one (stage 1
    # learns in LLaVA-1.5's plain format, stage 2 in the chat template: their losses are not comparable)
    third = run_cli("submit", "llava", "--stage", "finetune", *SHORT, "--json", timeout=120)
    scratch = Path(json.loads(third.stdout)["run_dir"])
    assert wait_terminal(store, json.loads(third.stdout)["run_id"], timeout=300).state == "COMPLETED"
    assert losses(finetune_dir)[0] < losses(scratch)[0] * 0.9, (losses(scratch)[:3], losses(finetune_dir)[:3])


def test_from_refuses_what_cannot_work(isolated_hpcai: Path) -> None:
    missing = run_cli("submit", "llava", "--stage", "finetune", "--from", "no-such-run", "--dry-run")
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr
    done = run_cli("submit", "clip", "--set", "max_steps=1", "--set", "samples=8", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    clip_run = json.loads(done.stdout)["run_id"]
    other = run_cli("render", "llava", "--stage", "finetune", "--from", clip_run)
    assert other.returncode == 2 and "trained 'clip', not 'llava'" in other.stderr
    both = run_cli("render", "clip", "--from", clip_run, "--set", "model_path=/x")
    assert both.returncode == 2 and "give one of them" in both.stderr
    wait_terminal(Store(), clip_run, timeout=300)


def test_stages_run_as_one_pipeline_submitted_by_the_first_stage(isolated_hpcai: Path) -> None:
    """`--stages pretrain,finetune`: stage 1 queued now, stage 2 WAITING; stage 1's job submits stage 2
    when it completes; stage 2 starts from stage 1's export; `status` follows both."""
    result = run_cli("submit", "llava", "--stages", "pretrain,finetune", *SHORT, "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["pipeline"]
    assert first["job_id"] and second["job_id"] is None and second["after"] == first["run_id"]
    store = Store()
    waiting = run_cli("status", second["run_id"], "--json")
    assert waiting.returncode == 0 and "WAITING" in waiting.stdout, waiting.stdout
    assert json.loads(waiting.stdout)["waiting"].startswith(f"waits for run {first['run_id']}")
    assert wait_terminal(store, first["run_id"], timeout=300).state == "COMPLETED"
    view = wait_terminal(store, second["run_id"], timeout=300)
    # Why it waited is gone once it ran: no stale "waits for run ..." on a completed run.
    assert view.state == "COMPLETED" and view.reason is None and view.waiting is None, view
    one, two = Path(first["run_dir"]), Path(second["run_dir"])
    assert (two / "model" / "config.json").is_file()
    assert f"--model_path {one / 'model'}" in (two / "job.sh").read_text()
    events = [json.loads(line) for line in (one / "attempts.jsonl").read_text().splitlines()]
    assert any(e["event"] == "next_stage" and e["run_dir"] == str(two) for e in events), events
    # (that stage 2 begins with stage 1's projector, by its loss: test_finetune_from_the_pretrain_run)


def test_a_pipeline_stops_where_a_stage_does_not_complete(isolated_hpcai: Path) -> None:
    result = run_cli("submit", "llava", "--stages", "pretrain,finetune", "--set", "max_steps=500",
                     "--set", "samples=64", "--json", timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["pipeline"]
    store = Store()
    cancelled = run_cli("cancel", first["run_id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_terminal(store, first["run_id"], timeout=120).state == "CANCELLED"
    view = wait_terminal(store, second["run_id"], timeout=60)
    assert view.state == "CANCELLED"
    detail = json.loads(run_cli("status", second["run_id"], "--json").stdout)
    assert f"run {first['run_id']}, ended CANCELLED" in json.dumps(detail)
    assert not (Path(second["run_dir"]) / "job_id").exists()  # never submitted


def test_cancelling_a_waiting_stage_takes_it_out_of_the_pipeline(isolated_hpcai: Path) -> None:
    result = run_cli("submit", "llava", "--stages", "pretrain,finetune", *SHORT, "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["pipeline"]
    assert (Path(first["run_dir"]) / "next_stage").read_text().strip() == second["run_dir"]
    cancelled = run_cli("cancel", second["run_id"], "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["cancelled"], cancelled.stderr
    assert not (Path(first["run_dir"]) / "next_stage").exists()
    store = Store()
    assert wait_terminal(store, first["run_id"], timeout=300).state == "COMPLETED"
    assert wait_terminal(store, second["run_id"], timeout=30).state == "CANCELLED"
    assert not (Path(second["run_dir"]) / "job_id").exists()


@pytest.mark.usefixtures("slurm_cluster", "isolated_hpcai")
def test_a_pipeline_on_slurm_the_first_job_sbatches_the_second() -> None:
    result = run_cli("submit", "llava", "-c", "local-slurm", "--stages", "pretrain,finetune", *SHORT, "--json",
                     timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)["pipeline"]
    store = Store()
    assert wait_terminal(store, first["run_id"], timeout=400).state == "COMPLETED"
    view = wait_terminal(store, second["run_id"], timeout=400)
    assert view.state == "COMPLETED", view
    two = Path(second["run_dir"])
    job = (two / "job_id").read_text().strip()
    assert job.isdigit() and list((two / "logs").glob(f"slurm-{job}.out"))  # its own job, its own logs
    assert (two / "model" / "config.json").is_file()
