"""A run folder is the user's alone, whatever the umask of the shell that submitted: under `umask 002`
the run folder, its logs and what the job wrote were group-writable, so anyone in the project group
could plant the files the job and hpcai read back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hpcai.store.db import Store
from tests.helpers import submit_probe, wait_terminal


@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.real_cluster)])
def test_the_run_folder_and_what_the_job_writes_are_private_under_umask_002(
    probe_workload: str, cluster: str, request: pytest.FixtureRequest
) -> None:
    name = "local" if cluster == "local" else request.getfixturevalue("slurm_cluster")
    old = os.umask(0o002)
    try:
        store = Store()
        run_id = submit_probe(store, name, lines=3, interval=0.1)
        final = wait_terminal(store, run_id, timeout=120)
    finally:
        os.umask(old)
    assert final.state == "COMPLETED"
    run_dir = Path(final.run_dir)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    everything = [run_dir, *run_dir.rglob("*")]
    assert len(everything) > 5
    loose = [f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in everything if p.stat().st_mode & 0o077]
    assert loose == []
