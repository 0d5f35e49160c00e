"""A job that would run into a maintenance reservation is flagged before it is queued, with the --time that
would let it run before (issue 32, item 3): the rule, then `hpcai submit` against a real reservation on the
test Slurm."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime

import pytest

from hpcai.backends.schedulers.base import Maintenance, Window
from hpcai.flows.runs.pending import maintenance_ahead
from tests.conftest import CliResult, run_cli

NOW = datetime(2026, 12, 7, 20, 0)
WINDOW = Window("maint_dec", datetime(2026, 12, 8, 6, 0), datetime(2026, 12, 8, 18, 0))


def _ahead(walltime_s: int, *windows: Window) -> dict[str, object] | None:
    return maintenance_ahead(Maintenance(NOW, windows or (WINDOW,)), walltime_s)


def test_a_job_that_ends_before_the_maintenance_is_not_flagged() -> None:
    assert _ahead(10 * 3600) is None  # ends 06:00, as the maintenance starts
    assert maintenance_ahead(None, 24 * 3600) is None  # nothing known


def test_a_job_that_runs_into_it_is_told_the_time_that_fits() -> None:
    found = _ahead(24 * 3600)
    assert found is not None and found["underway"] is False and found["time_before_s"] == 10 * 3600
    message = str(found["message"])
    assert "--time 1-00:00:00 runs into maintenance reservation maint_dec" in message
    assert "2026-12-08 06:00 to 2026-12-08 18:00" in message and "--time 10:00:00" in message


def test_a_maintenance_under_way_says_the_job_waits_for_its_end() -> None:
    started = Window("now", datetime(2026, 12, 7, 19, 0), datetime(2026, 12, 7, 23, 0))
    found = _ahead(600, started)
    assert found is not None and found["underway"] is True and "cannot start before it ends" in str(found["message"])


def test_the_first_of_several_is_named_and_one_already_over_is_not() -> None:
    over = Window("over", datetime(2026, 12, 7, 8, 0), datetime(2026, 12, 7, 12, 0))
    later = Window("later", datetime(2026, 12, 9, 6, 0), datetime(2026, 12, 9, 8, 0))
    found = _ahead(3 * 24 * 3600, later, over, WINDOW)
    assert found is not None and found["reservation"] == "maint_dec"


@pytest.fixture
def maintenance_in_30_minutes(slurm_cluster: str) -> Iterator[str]:
    """A real maintenance reservation on every node of the test Slurm, from 30 minutes from now for an hour."""
    name = "hpcai_test_maint"
    subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True)
    created = subprocess.run(
        ["scontrol", "create", "reservation", f"ReservationName={name}", "StartTime=now+30minutes",
         "Duration=60", "Nodes=ALL", "Users=root", "Flags=MAINT,IGNORE_JOBS"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    yield name
    subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True)


def _submit(cluster: str, time: str) -> CliResult:
    return run_cli("submit", "probe", "--cluster", cluster, "--time", time, "--set", "lines=1", "--json", timeout=120)


def test_submit_flags_a_job_that_would_run_into_a_real_maintenance(
    slurm_cluster: str, probe_workload: str, maintenance_in_30_minutes: str
) -> None:
    long = _submit(slurm_cluster, "01:00:00")
    assert long.returncode == 0, long.stderr
    flagged = json.loads(long.stdout)["maintenance"]
    assert flagged["reservation"] == maintenance_in_30_minutes and flagged["underway"] is False
    assert 28 * 60 <= flagged["time_before_s"] <= 30 * 60
    assert f"runs into maintenance reservation {maintenance_in_30_minutes}" in long.stderr
    assert "--time 00:2" in long.stderr  # the time left before it: 28 or 29 minutes

    short = _submit(slurm_cluster, "00:10:00")
    assert short.returncode == 0, short.stderr
    assert json.loads(short.stdout)["maintenance"] is None and "maintenance" not in short.stderr
