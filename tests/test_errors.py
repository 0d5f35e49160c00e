"""Exit codes by cause: 2 for the user's input, 3 for the environment (link, scheduler), 4 for the local
store; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcai.backends.schedulers.base import SchedulerUnavailable, failure
from hpcai.backends.transport.base import CommandResult, TransportError
from hpcai.errors import EnvironmentFailure
from tests.conftest import run_cli


def test_a_garbage_store_exits_4_with_its_fix(isolated_hpcai: Path) -> None:
    state = isolated_hpcai / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "hpcai.db").write_bytes(b"this is not a database" * 100)
    result = run_cli("list")
    assert result.returncode == 4 and "hpcai.db cannot be used" in result.stderr
    assert "move it aside" in result.stderr and "Traceback" not in result.stderr


def test_a_state_dir_that_cannot_exist_exits_4(isolated_hpcai: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("list", env={"HPCAI_HOME": str(blocker / "state")})
    assert result.returncode == 4 and "HPCAI_HOME" in result.stderr and "Traceback" not in result.stderr


def test_a_duplicate_run_id_is_the_users_input(probe_workload: str) -> None:
    first = run_cli("submit", probe_workload, "--cluster", "local", "--run-id", "twice", "--set", "lines=1")
    assert first.returncode == 0, first.stderr
    again = run_cli("submit", probe_workload, "--cluster", "local", "--run-id", "twice", "--set", "lines=1")
    assert again.returncode == 2 and "a run named 'twice' exists already" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_silent_controller_is_the_environment_a_refusal_is_not() -> None:
    down = failure("sbatch", CommandResult(("sbatch", "x"), 1, "", "sbatch: error: Unable to contact slurm controller"))
    assert isinstance(down, SchedulerUnavailable) and down.exit_code == 3 and "try again later" in str(down)
    refused = failure("sbatch", CommandResult(("sbatch", "x"), 1, "", "sbatch: error: Invalid account"))
    assert not isinstance(refused, EnvironmentFailure) and refused.exit_code == 2
    assert issubclass(TransportError, EnvironmentFailure) and TransportError("x").exit_code == 3


@pytest.mark.parametrize("command", [["list"], ["status"]])
def test_commands_on_an_empty_store_exit_0(command: list[str]) -> None:
    assert run_cli(*command).returncode == 0
