"""Nothing in a run folder is unpickled: a planted object in a checkpoint's torch files runs no code."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch", reason="the `train` extra")


class _Planted:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (Path(str(MARK)),))  # type: ignore[name-defined]


MARK = Path("/tmp/hpcai-test-unpickled")


def test_a_planted_object_in_a_checkpoint_file_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    from hpcai.runtime.checkpoint import read_tensors

    MARK.unlink(missing_ok=True)
    planted = tmp_path / "trainer.pt"
    with open(planted, "wb") as out:
        pickle.dump({"step": 3, "x": _Planted()}, out)
    torch.save({"step": 3, "extra": _Planted()}, tmp_path / "trainer2.pt")
    for path in (planted, tmp_path / "trainer2.pt"):
        with pytest.raises(RuntimeError, match="refused"):
            read_tensors(path)
    assert not MARK.exists()


def test_what_the_runtime_saves_loads_with_weights_only(tmp_path: Path) -> None:
    from hpcai.runtime.checkpoint import read_tensors, rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    torch.save({"step": 4, "scheduler": {"base_lrs": [0.1]}, "skips": [(1, 2)], "spike_detector": None},
               tmp_path / "trainer.pt")  # fmt: skip
    assert read_tensors(tmp_path / "rng.pt")["python"] == random.getstate()
    assert read_tensors(tmp_path / "trainer.pt")["step"] == 4


def test_nothing_in_the_package_unpickles() -> None:
    pattern = r"weights_only=False|pickle\.loads?\(|import dill|yaml\.load\(|[^.a-z_]eval\("
    found = subprocess.run(["grep", "-rnE", pattern, str(REPO / "hpcai")], capture_output=True, text=True)
    assert found.stdout == "", found.stdout
    assert sys.version_info >= (3, 11)
