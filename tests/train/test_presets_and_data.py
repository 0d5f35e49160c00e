"""Model presets, local model folders, and the synthetic data formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcai.train.synth import synth_clip, synth_llava
from tests.conftest import REPO, run_cli
from tests.train.launch import launch, losses

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.parametrize("preset", ["tiny-siglip", "tiny-qwen3"])
def test_presets_train_single_process(preset: str, tmp_path: Path) -> None:
    script = REPO / "workloads" / "llava" / "train.py"
    result = subprocess.run(
        [sys.executable, str(script), "--run-dir", str(tmp_path), "--preset", preset, "--max_steps", "3",
         "--samples", "16", "--checkpoint_every", "3"],
        env=OFFLINE, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_clip_trains_from_a_model_folder_and_exports_one_transformers_loads(tmp_path: Path) -> None:
    """model_path: a SiglipModel folder (save_pretrained, with tokenizer and processor), as a user stages
    one; the run leaves `<run dir>/model` with the trained temperature and bias in their own places."""
    from transformers import SiglipModel

    from hpcai.train.parts import tiny_clip

    folder = tiny_clip(tmp_path, "siglip")
    run = tmp_path / "run"
    result = launch("clip", run, params={"model_path": str(folder), "max_steps": 6, "samples": 32, "stage": "siglip"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(losses(run)) == 6
    model = SiglipModel.from_pretrained(run / "model")
    assert model.logit_scale.shape == (1,) and model.logit_bias.shape == (1,)
    assert float(model.logit_bias.detach()) != pytest.approx(-10.0, abs=1e-7)  # trained, written back


def test_unsharded_run_is_refused(tmp_path: Path) -> None:
    """Without accelerate's CPU mode FSDP silently degrades to two single-process runs: the workload
    must notice and fail rather than train unsharded."""
    env = {"ACCELERATE_USE_CPU": "false"}
    result = launch("clip", tmp_path / "run", params={"max_steps": 2, "samples": 32}, env=env)
    assert result.returncode != 0
    assert "the launcher started 2" in result.stderr or "expected FSDP" in result.stderr


def test_synth_formats(tmp_path: Path) -> None:
    index = synth_llava(tmp_path / "llava", samples=5)
    records = json.loads(index.read_text())
    assert len(records) == 5 and set(records[0]) == {"id", "image", "conversations"}
    assert records[0]["conversations"][0]["from"] == "human" and "<image>" in records[0]["conversations"][0]["value"]
    assert all((tmp_path / "llava" / "images" / r["image"]).is_file() for r in records)
    pairs = [json.loads(x) for x in synth_clip(tmp_path / "clip", samples=3).read_text().splitlines()]
    assert len(pairs) == 3 and set(pairs[0]) == {"image", "caption"}
    again = synth_llava(tmp_path / "again", samples=5)
    assert again.read_text() == index.read_text()  # deterministic


def test_data_synth_command(tmp_path: Path) -> None:
    result = run_cli("data", "synth", "clip", str(tmp_path / "d"), "--samples", "4", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 4
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 4
    sharded = run_cli("data", "synth", "clip", str(tmp_path / "s"), "--samples", "5", "--shards", "2", "--json")
    assert sharded.returncode == 0, sharded.stderr
    assert sorted(p.name for p in (tmp_path / "s").glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]
    bad = run_cli("data", "synth", "video", str(tmp_path / "v"))
    assert bad.returncode == 2 and "llava or clip" in bad.stderr


def test_building_the_tiny_parts_leaves_the_callers_random_state_alone(tmp_path: Path) -> None:
    """A run that builds the cached parts must initialise the rest of its model as a run that found them
    (a first run on a machine gave other losses than every later one)."""
    import random

    import torch

    from hpcai.train.parts import tiny_llava_parts

    torch.manual_seed(7)
    random.seed(7)
    tiny_llava_parts(tmp_path / "cache", "clip", "qwen2")
    after_building = (torch.rand(3), random.random())
    torch.manual_seed(7)
    random.seed(7)
    tiny_llava_parts(tmp_path / "cache", "clip", "qwen2")  # found, not built
    assert (torch.rand(3), random.random())[1] == after_building[1]
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after_building[0])
