"""Issue 28, defect 1: a rank whose batch has no image must still run the vision tower's collectives.
32 image + 32 text-only samples, batch 1 per rank on 2 ranks (FSDP2 over gloo): with the tower skipped
on text-only batches, the ranks' all-gathers stop matching within the first steps (gloo aborts with a
collective mismatch; NCCL would hang)."""

from __future__ import annotations

import json
from pathlib import Path

from hpcai.train.synth import synth_llava
from tests.train.launch import launch


def _mixed_data(folder: Path) -> Path:
    path = synth_llava(folder, samples=32, seed=3)
    records = json.loads(path.read_text())
    for i in range(32):  # answers of many lengths: under length grouping they meet image samples in a step
        records.append({"id": f"text-{i}", "conversations": [
            {"from": "human", "value": f"Say the number {i} in words, please."},
            {"from": "gpt", "value": " ".join(["It is a number, written out in words for you."] * (1 + i % 8))},
        ]})  # fmt: skip
    path.write_text(json.dumps(records))
    return folder


def test_mixed_text_only_and_image_batches_train_on_two_ranks(tmp_path: Path) -> None:
    data = _mixed_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    params = {"data": data, "max_steps": 64, "per_device_batch_size": 1, "checkpoint_every": 1000,
              "data_workers": 0, "stage": "finetune"}  # fmt: skip
    done = launch("llava", run_dir, params=params, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 65))
