"""Sweeps (issue 32, item 2): a grid of a workload's parameters as one Slurm job array with a throttle, each
point a run of its own; bad grids refused before anything is written; then a real sweep on the test Slurm:
4 points, 2 at a time, each completed under its own run with its own logs, the best point named, and a
whole sweep cancelled."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from hpcai.errors import ValidationError
from hpcai.flows.runs.sweep import parse_grid
from tests.conftest import run_cli
from tests.helpers import wait_terminal

PARAMETERS = {"lr": 1e-3, "warmup_steps": 5, "seed": 0}


def test_the_points_are_every_combination_in_order() -> None:
    points = parse_grid(["lr=1e-4,2e-4", "warmup_steps=50,100"], PARAMETERS)
    assert points == [{"lr": "1e-4", "warmup_steps": "50"}, {"lr": "1e-4", "warmup_steps": "100"},
                      {"lr": "2e-4", "warmup_steps": "50"}, {"lr": "2e-4", "warmup_steps": "100"}]  # fmt: skip


@pytest.mark.parametrize(
    ("grid", "says"),
    [
        ([], "at least one axis"),
        (["lr"], "write NAME=V1,V2"),
        (["lr=1,1"], "each value once"),
        (["lr=1,"], "none empty"),
        (["lr=1", "lr=2"], "given twice"),
        (["lrr=1,2"], "no parameter 'lrr'. Did you mean 'lr'?"),
    ],
)
def test_a_bad_grid_is_refused(grid: list[str], says: str) -> None:
    with pytest.raises(ValidationError, match=says.replace("?", r"\?").replace(".", r"\.")):
        parse_grid(grid, PARAMETERS)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--grid", "lr=-1,1"], "lr must be >= 0"),  # a value the workload refuses
        (["--set", "lr=1", "--grid", "lr=2,3"], "both --set and --grid"),
        (["--grid", "lr=1,2", "--max-parallel", "0"], "--max-parallel: give at least 1"),
        (["--grid", "lr=1,2", "--cluster", "local"], "Slurm job arrays; cluster 'local' uses local"),
        (["--grid", "lr=" + ",".join(str(i) for i in range(1001))], "more than a job array may hold here (1000)"),
    ],
)
def test_the_cli_refuses_before_anything_is_written(args: list[str], says: str, isolated_hpcai: Path) -> None:
    cluster = [] if "--cluster" in args else ["--cluster", "local-slurm"]
    refused = run_cli("sweep", "llava", *cluster, *args, "--dry-run", timeout=120)
    assert refused.returncode == 2, refused.stdout
    assert says in " ".join(refused.stderr.split()) and "Traceback" not in refused.stderr
    assert not (isolated_hpcai / "state" / "runs").exists()


def test_the_array_runs_each_points_own_script_with_a_throttle() -> None:
    shown = run_cli("sweep", "llava", "--cluster", "local-slurm", "--grid", "lr=1e-4,2e-4", "--grid",
                    "warmup_steps=1,2", "--max-parallel", "2", "--dry-run", "--json")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    script = plan["script"]
    assert "#SBATCH --array=0-3%2" in script and plan["parallel"] == 2 and len(plan["runs"]) == 4
    for index, run_id in enumerate(plan["runs"]):
        assert run_id == f"{plan['sweep']}-p{index}" and f"  {index}) hpcai_point=" in script
    assert "#SBATCH --time=" in script and script.count("#SBATCH --job-name=") == 1
    checked = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def _overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


def test_a_sweep_on_slurm_runs_every_point_two_at_a_time(slurm_cluster: str, probe_workload: str) -> None:
    from hpcai.store.db import Store

    submitted = run_cli("sweep", "probe", "--cluster", slurm_cluster, "--grid", "lines=2,3", "--grid",
                        "interval=0.5,0.6", "--max-parallel", "2", "--json", timeout=180)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    result = json.loads(submitted.stdout)
    array = result["job_id"]
    assert len(result["runs"]) == 4 and result["parallel"] == 2
    store = Store()
    finals = [wait_terminal(store, run_id, timeout=240) for run_id in result["runs"]]
    assert [f.state for f in finals] == ["COMPLETED"] * 4, finals
    assert [f.job_id for f in finals] == [f"{array}_{i}" for i in range(4)]
    for final in finals:  # each point's output in its own run folder, under its task's id
        log = (Path(final.run_dir) / "logs" / f"slurm-{final.job_id}.out").read_text()
        assert "probe rank 0 line 0" in log
    rows = subprocess.run(["sacct", "-j", array, "-X", "-P", "-n", "-o", "JobID,Start,End"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    spans = [(datetime.fromisoformat(r.split("|")[1]), datetime.fromisoformat(r.split("|")[2])) for r in rows]
    assert len(spans) == 4 and _overlap(spans) <= 2  # the throttle held

    shown = json.loads(run_cli("sweep", "status", result["sweep"][:20], "--json").stdout)
    grid = [{"lines": lines, "interval": interval} for lines in ("2", "3") for interval in ("0.5", "0.6")]
    assert [p["point"] for p in shown["points"]] == grid
    best = next(p for p in shown["points"] if p["run_id"] == shown["best"])
    assert best["point"]["lines"] == "3" and shown["best_final"] is True  # the lowest last loss (1/3)
    table = run_cli("sweep", "status", result["sweep"])
    assert table.returncode == 0 and "best (loss" in table.stdout


def test_a_whole_sweep_is_cancelled(slurm_cluster: str, probe_workload: str) -> None:
    from hpcai.store.db import Store

    submitted = run_cli("sweep", "probe", "--cluster", slurm_cluster, "--grid", "lines=400,401", "--grid",
                        "interval=0.5", "--max-parallel", "1", "--json", timeout=180)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    result = json.loads(submitted.stdout)
    time.sleep(2)
    cancelled = run_cli("sweep", "cancel", result["sweep"], "--json", timeout=120)
    assert cancelled.returncode == 0, cancelled.stderr
    store = Store()
    finals = [wait_terminal(store, run_id, timeout=120) for run_id in result["runs"]]
    assert {f.state for f in finals} == {"CANCELLED"}, finals
