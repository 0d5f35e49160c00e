"""The `latest` pointer steers which checkpoint a job loads: it may only name a folder inside checkpoints/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from hpcai.runtime.checkpoint import MARKER, Checkpoints


def _complete(path: Path, step: int) -> None:
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"step": step, "world_size": 1}))


@pytest.mark.parametrize("pointer", ["../../outside/step-00000099", "/abs/step-00000099", "step-00000099/..", "x"])
def test_latest_pointer_cannot_leave_the_checkpoint_folder(tmp_path: Path, pointer: str) -> None:
    root = tmp_path / "run" / "checkpoints"
    _complete(root / "step-00000005", 5)
    _complete(tmp_path / "outside" / "step-00000099", 99)
    (root / "latest").write_text(pointer + "\n")
    checkpoints = Checkpoints(root, keep=3, rank=0, world_size=1, barrier=lambda: None)
    assert checkpoints.latest() == root / "step-00000005"


def test_links_and_garbage_names_are_not_checkpoints(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _complete(root / "step-00000003", 3)
    _complete(tmp_path / "elsewhere", 50)
    (root / "step-00000050").symlink_to(tmp_path / "elsewhere")
    _complete(root / "step-x", 0)
    (root / "latest").write_text("step-00000050\n")
    checkpoints = Checkpoints(root, keep=3, rank=0, world_size=1, barrier=lambda: None)
    assert checkpoints.complete() == [root / "step-00000003"]
    assert checkpoints.latest() == root / "step-00000003"
