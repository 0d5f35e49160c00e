"""`hpcai budget -N/-t` prices a job from the profile's billing rule when the allocations cannot be read (no
login from here: a laptop without the site's tools, a dropped link), and says so; without a job to price
it still fails with the reason."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_a_job_is_priced_offline_and_the_json_says_so() -> None:
    human = run_cli("budget", "--cluster", "leonardo", "-N", "4", "-t", "12:00:00")
    assert human.returncode == 0, human.stderr
    assert "allocations not read" in human.stdout and "costs at most 1,536 local core-hours" in human.stdout
    machine = run_cli("budget", "--cluster", "leonardo", "-N", "4", "-t", "12:00:00", "--json")
    assert machine.returncode == 0, machine.stderr
    report = json.loads(machine.stdout)
    assert report["offline"] is True and report["allocations"] == [] and report["cost"]["amount"] == 1536
    assert "saldo" in report["note"]
    # Nothing to price: the failure to read the allocations is the answer, exit 2 as before.
    bare = run_cli("budget", "--cluster", "leonardo")
    assert bare.returncode == 2 and "saldo" in bare.stderr and "Traceback" not in bare.stderr
