"""`hpcai sync RUN`: a run trained with tracker=wandb left offline wandb runs in its run directory (the job
had no internet); sync hands them to the real `wandb sync` on the login node and says plainly when the
upload cannot happen. (No wandb server can be reached from here: the upload itself is not exercised.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")
pytest.importorskip("wandb", reason="wandb is in the dev extra")

SHORT = ("--set", "max_steps=4", "--set", "samples=16", "--set", "checkpoint_every=4", "--set", "data_workers=0")
NO_SERVER = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_HTTP_TIMEOUT": "5"}


def test_offline_wandb_runs_are_found_and_handed_to_wandb_sync(isolated_hpcai: Path) -> None:
    submitted = run_cli("submit", "clip", *SHORT, "--set", "tracker=wandb", "--json", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    run_id = json.loads(submitted.stdout)["run_id"]
    store = Store()
    assert wait_terminal(store, run_id, timeout=300).state == "COMPLETED"
    offline = sorted((Path(store.run(run_id).run_dir) / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), offline  # the job logged, offline

    failed = run_cli("sync", run_id, "--python", sys.executable, env=NO_SERVER, timeout=300)
    assert failed.returncode == 3, failed
    assert "`wandb sync` failed" in failed.stderr and "wandb login" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list(offline[0].glob("*.wandb.synced"))  # nothing claims an upload that did not happen

    nowhere = run_cli("sync", run_id, "--python", "/nonexistent/python3", timeout=60)
    assert nowhere.returncode == 2 and "not installed" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_a_run_without_wandb_has_nothing_to_sync(isolated_hpcai: Path) -> None:
    submitted = run_cli("submit", "clip", *SHORT, "--set", "tracker=none", "--json", timeout=120)
    run_id = json.loads(submitted.stdout)["run_id"]
    wait_terminal(Store(), run_id, timeout=300)
    result = run_cli("sync", run_id)
    assert result.returncode == 2 and "tracker=wandb" in result.stderr and "Traceback" not in result.stderr
