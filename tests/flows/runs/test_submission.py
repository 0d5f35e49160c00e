"""A run directory belongs to one run: submit never takes over another run's folder, nor a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import wait_terminal


def test_run_dir_of_an_existing_run_is_refused_and_left_untouched(probe_workload: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "first"
    first = run_cli("submit", probe_workload, "--cluster", "local", "--set", "lines=2", "--set", "checkpoint_every=1",
                    "--run-id", "first", "--run-dir", str(run_dir))  # fmt: skip
    assert first.returncode == 0, first.stderr
    wait_terminal(Store(), "first", timeout=120)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    second = run_cli("submit", probe_workload, "--cluster", "local", "--run-id", "second", "--run-dir", str(run_dir))
    assert second.returncode == 2 and "never shared" in second.stderr and "Traceback" not in second.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert [r.id for r in Store().runs()] == ["first"]


def test_a_folder_left_by_an_unknown_run_is_refused_too(probe_workload: str, tmp_path: Path) -> None:
    """The store may be gone (new laptop, deleted state): the files on the target still say it is taken."""
    run_dir = tmp_path / "orphan"
    (run_dir / "checkpoints").mkdir(parents=True)
    result = run_cli("submit", probe_workload, "--cluster", "local", "--run-id", "x", "--run-dir", str(run_dir))
    assert result.returncode == 2 and "checkpoints" in result.stderr
    assert Store().runs() == []


def test_run_dir_that_is_a_file_is_refused_before_anything_is_recorded(probe_workload: str, tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    result = run_cli("submit", probe_workload, "--cluster", "local", "--run-id", "f", "--run-dir", str(path))
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
    assert Store().runs() == [] and path.read_text() == "not a folder\n"


def test_an_empty_folder_is_accepted(probe_workload: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    result = run_cli("submit", probe_workload, "--cluster", "local", "--set", "lines=1", "--run-id", "e",
                     "--run-dir", str(run_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert wait_terminal(Store(), "e", timeout=120).state == "COMPLETED"


def test_an_input_path_missing_on_the_target_is_refused(probe_workload: str, tmp_path: Path) -> None:
    from hpcai.backends.transport import LocalTransport
    from hpcai.errors import ValidationError
    from hpcai.flows.runs.submission import check_target

    present = tmp_path / "present"
    present.mkdir()
    check_target(LocalTransport(), str(tmp_path / "new-run"), {"data": str(present)})
    with pytest.raises(ValidationError, match="model_path=/no/such/model"):
        inputs = {"data": str(present), "model_path": "/no/such/model"}
        check_target(LocalTransport(), str(tmp_path / "new-run"), inputs)
