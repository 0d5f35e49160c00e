"""Samples the workers cannot make (a missing image) are counted over all ranks, shown by `status`, and fail
the run past max_left_out; a data file that is not a list of samples is refused before queueing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.store.db import Store
from hpcai.train.synth import synth_llava
from tests.conftest import run_cli
from tests.helpers import wait_terminal

pytest.importorskip("accelerate", reason="the training stack is the `train` extra")


def test_a_data_set_with_many_missing_images_fails_with_the_count(isolated_hpcai: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    synth_llava(data, samples=320)
    records = json.loads((data / "conversations.json").read_text())
    for record in records[8::5]:  # one in five past the first 8 (those are checked at start): 20 %
        (data / "images" / record["image"]).unlink()
    submitted = run_cli("submit", "llava", "--run-id", "left-out", "--set", f"data={data}", "--set", "max_steps=60",
                        "--set", "checkpoint_every=60", "--json", timeout=180)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    final = wait_terminal(Store(), "left-out", timeout=400)
    assert final.state == "FAILED", final
    assert final.reason and "left out" in final.reason and "max_left_out=0.02" in final.reason, final.reason
    assert final.step is not None and final.step < 60
    detail = json.loads(run_cli("status", "left-out", "--json").stdout)
    assert detail["left_out"] and detail["left_out"] > 0.02 * 256, detail["left_out"]
    shown = run_cli("status", "left-out")
    assert "samples left out in the latest attempt" in shown.stdout


def test_a_data_file_that_is_not_a_list_is_refused_before_queueing(isolated_hpcai: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"conversations": []}')
    refused = run_cli("submit", "llava", "--set", f"data={data}", "--dry-run")
    assert refused.returncode == 2 and "not a list of samples" in refused.stderr and str(data) in refused.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.json").write_text("[]")
    (folder / "b.json").write_text("")
    empty = run_cli("submit", "llava", "--set", f"data={folder}", "--dry-run")
    assert empty.returncode == 2 and "b.json is empty" in empty.stderr, empty.stderr
    assert Store().runs() == []
