"""A checkpoint damaged after it was written (a truncated shard): the resume fails, and `status` says why in
words -- the rank's own cause, recorded although torch raises it as a BaseException -- not "exit code 1"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")


def test_a_damaged_checkpoint_is_named_as_the_reason(isolated_hpcai: Path) -> None:
    submitted = run_cli("submit", "llava", "--run-id", "damaged-ckpt", "--set", "max_steps=20", "--set", "samples=64",
                        "--set", "checkpoint_every=10", "--json", timeout=180)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    store = Store()
    assert wait_terminal(store, "damaged-ckpt", timeout=300).state == "COMPLETED"
    run_dir = Path(json.loads(submitted.stdout)["run_dir"])
    for shard in (run_dir / "checkpoints" / "step-00000010" / "shards").glob("*.distcp"):
        with open(shard, "r+b") as handle:
            handle.truncate(100)
    resumed = run_cli("resume", "damaged-ckpt", "--checkpoint", "step-00000010", "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    final = wait_terminal(store, "damaged-ckpt", timeout=300)
    assert final.state == "FAILED" and final.attempt == 2, final
    assert list((run_dir / "errors").glob("rank-*.json")), "no rank left an account of the failure"
    assert final.reason and "zip archive" in final.reason and "rank" in final.reason, final.reason
