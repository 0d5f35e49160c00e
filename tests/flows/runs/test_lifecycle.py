"""The same behaviour from every backend: the local one and the real Slurm on this machine (and the PBS
client side through Slurm's PBS wrappers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcai.errors import HpcaiError, NotFoundError
from hpcai.flows.runs.control import cancel_run, follow_logs
from hpcai.store.db import Store
from tests.conftest import REPO
from tests.helpers import submit_probe, wait_for, wait_terminal

BACKENDS = [
    "local",
    pytest.param("local-slurm", marks=pytest.mark.real_cluster),
    pytest.param("local-pbs", marks=pytest.mark.real_cluster),
]


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, probe_workload: str) -> str:
    if request.param != "local":
        request.getfixturevalue("slurm_cluster")
    return str(request.param)


def test_submit_runs_to_completed_with_logs_and_progress(cluster: str) -> None:
    store = Store()
    run_id = submit_probe(store, cluster, lines=4)
    view = wait_terminal(store, run_id)
    assert view.state == "COMPLETED" and view.exit_code == 0
    assert view.step == 4 and view.loss == pytest.approx(0.25)
    lines: list[str] = []
    follow_logs(store, run_id, write=lines.append)
    assert "probe rank 0 line 3" in "".join(lines)
    errors: list[str] = []
    follow_logs(store, run_id, stderr=True, write=errors.append)
    assert "probe rank 0 done" in "".join(errors)
    events = [json.loads(x) for x in (Path(view.run_dir) / "attempts.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "end"] and events[-1]["rc"] == 0
    assert (Path(view.run_dir) / "job_id").read_text().strip() == view.job_id


def test_failing_job_is_failed_with_its_exit_code(cluster: str) -> None:
    store = Store()
    run_id = submit_probe(store, cluster, exit_code=3)
    view = wait_terminal(store, run_id)
    assert view.state == "FAILED" and view.exit_code == 3


def test_cancel_gives_cancelled(cluster: str) -> None:
    store = Store()
    run_id = submit_probe(store, cluster, lines=600, interval=0.1)
    wait_for(store, run_id, {"RUNNING"})
    result = cancel_run(store, run_id)
    assert result["cancelled"]
    view = wait_terminal(store, run_id, timeout=60)
    assert view.state == "CANCELLED"
    again = cancel_run(store, run_id)
    assert not again["cancelled"] and again["state"] == "CANCELLED"


@pytest.mark.slow
def test_logs_follow_streams_while_the_job_runs_and_stops_at_the_end(cluster: str) -> None:
    store = Store()
    run_id = submit_probe(store, cluster, lines=12, interval=0.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpcai", "logs", run_id, "-f"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    first_line_at = None
    received = []
    for line in proc.stdout:
        received.append(line)
        if first_line_at is None:
            first_line_at = time.monotonic()
            state_when_first = store.latest_attempts([run_id])[run_id].state
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert [line for line in received if "line" in line] == [f"probe rank 0 line {i}\n" for i in range(12)]
    assert state_when_first in {"RUNNING", "PENDING"}, "lines arrived only after the job had ended"
    assert store.latest_attempts([run_id])[run_id].state == "COMPLETED"


def test_unknown_run_is_named_with_a_suggestion(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local")
    with pytest.raises(NotFoundError, match="no run"):
        cancel_run(store, "nonexistent-run")
    with pytest.raises(HpcaiError, match="attempts 1-1"):
        follow_logs(store, run_id[:12], attempt_number=5, write=print)
    wait_terminal(store, run_id)


@pytest.mark.slow
def test_local_walltime_gives_timeout(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", time_limit="00:00:03", lines=100, interval=0.2)
    view = wait_terminal(store, run_id, timeout=30)
    assert view.state == "TIMEOUT"


def test_status_over_ssh_reads_every_run_directory_in_one_round_trip(
    sshd: Path, slurm_cluster: str, isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 runs (20 finished, 20 whose jobs Slurm no longer knows): squeue, sacct and one bulk read."""
    import json
    import time

    from hpcai.backends.session import Session
    from hpcai.flows.runs.views import status
    from hpcai.store.db import Run, Store
    from tests.backends.transport.test_ssh import reach_over_ssh

    reach_over_ssh(monkeypatch, sshd, tmp_path, isolated_hpcai, slurm_cluster)
    store = Store()
    for i in range(40):
        run_dir = tmp_path / "runs" / f"r{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 10 - s}) + "\n" for s in range(i + 1))
        )
        (run_dir / "attempts.jsonl").write_text(json.dumps({"event": "start", "job_id": str(990000 + i)}) + "\n")
        store.create_run(Run(f"r{i}", "probe", slurm_cluster, None, str(run_dir), {}, time.time(), "SUBMITTING"))
        finished = i % 2 == 0
        store.update_attempt(f"r{i}", 1, job_id=str(990000 + i), state="COMPLETED" if finished else "RUNNING")
    with Session() as session:
        found, _ = status(store)
        transport = session.get(slurm_cluster).transport
        assert transport.operations <= 3, transport.operations  # type: ignore[attr-defined]
    by_id = {v.run_id: v for v in found}
    assert by_id["r7"].step == 7 and by_id["r7"].loss == 3 and by_id["r0"].step == 0


def test_status_degrades_when_accounting_or_a_cluster_is_down(
    slurm_cluster: str, probe_workload: str, isolated_hpcai: Path, tmp_path: Path
) -> None:
    """sacct failing (accounting disabled, slurmdbd down) and another cluster out of reach: status still
    shows what squeue and the store know, exits 0, and says once what it could not learn."""
    import json
    import os

    from tests.conftest import run_cli

    submitted = run_cli("submit", probe_workload, "--cluster", slurm_cluster, "--set", "lines=120",
                        "--set", "interval=1", "--run-id", "long", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    store = Store()
    wait_for(store, "long", {"RUNNING"})
    # A second cluster whose login node cannot be reached, with a run of its own.
    config = isolated_hpcai / "config"
    (config / "clusters").mkdir(parents=True, exist_ok=True)
    (config / "clusters" / "far-away.yaml").write_text((REPO / "clusters" / "local-slurm.yaml").read_text())
    (config / "config.toml").write_text('[clusters.far-away]\nssh_host = "nowhere"\n')
    (tmp_path / "ssh_config").write_text("Host nowhere\n  HostName 127.0.0.1\n  Port 9\n")
    from hpcai.store.db import Run

    store.create_run(Run("far", "probe", "far-away", None, "/nonexistent", {}, time.time(), "SUBMITTING"))
    store.update_attempt("far", 1, job_id="123", state="RUNNING")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    (bin_dir / "sacct").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HPCAI_SSH_CONFIG": str(tmp_path / "ssh_config")}
    shown = run_cli("status", "--json", env=env)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    states = {v["run_id"]: v["state"] for v in json.loads(shown.stdout)}
    assert states["long"] == "RUNNING" and states["far"] == "RUNNING"  # last known, nothing invented
    assert "far-away:" in shown.stderr and "shown as last known" in shown.stderr
    run_cli("cancel", "long")


def test_a_failed_job_says_why_in_words(cluster: str) -> None:
    """Not "exit code 1": the exception the worker died of, from the job's error log."""
    store = Store()
    run_id = submit_probe(store, cluster, lines=1, crash="the data loader found no images in /scratch/x")
    view = wait_terminal(store, run_id, timeout=60)
    assert view.state == "FAILED"
    assert view.reason and view.reason.startswith("RuntimeError: the data loader found no images in /scratch/x")
    assert "probe.py:" in view.reason  # where, from the traceback's innermost frame


def test_status_watch_shows_progress_against_max_and_a_closing_summary(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=2, crash="no images")
    wait_terminal(store, run_id, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "hpcai", "status", "--watch", "--interval", "1"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # a run that ended FAILED: not a success (issue 29, item 16)
    assert (
        "1 run(s) ended: 1 FAILED" in result.stdout and f"{run_id}: FAILED -- RuntimeError: no images" in result.stdout
    )


def test_step_rate_gives_an_eta() -> None:
    from hpcai.cli.present import StepRate
    from hpcai.flows.runs.views import RunView

    def view(step: int) -> RunView:
        return RunView("r", "llava", "local", "RUNNING", 1, "1", 10.0, step, 1.0, None, None, "/tmp/r")

    rates = StepRate()
    assert rates.describe(view(10), 100, now=0.0) == "10/100"
    assert rates.describe(view(20), 100, now=10.0) == "20/100, ETA 0:01:20"
