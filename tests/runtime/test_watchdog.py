"""The hang watchdog: limits per phase, and a real hang on the test Slurm detected, dumped, recorded,
stopped and recovered from in a new attempt that resumes from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcai.runtime.watchdog import CHECKPOINT_LIMIT_S, SETUP_LIMIT_S, limit_for, watch
from tests.conftest import run_cli


def test_limits_follow_the_phase_and_the_run_s_own_step_time() -> None:
    assert limit_for("step", 0.5, k=10, floor=180) == 180  # fast steps: the floor
    assert limit_for("step", 60.0, k=10, floor=180) == 600  # slow steps: 10 x the median
    assert limit_for("checkpoint", 0.5, k=10, floor=180) == CHECKPOINT_LIMIT_S
    assert limit_for("setup", None, k=10, floor=180) == SETUP_LIMIT_S
    assert limit_for("loading", 600.0, k=10, floor=180) == 6000


def test_a_workload_without_heartbeats_is_never_declared_hung(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    started = time.monotonic()
    assert watch(tmp_path / "hb", tmp_path, launcher_pid=sleeper.pid, job="1", node_rank=0, k=10, floor=0.5,
                 poll_s=0.1) is None  # fmt: skip
    assert time.monotonic() - started >= 2.5 and sleeper.wait() == 0  # it waited for the launcher, touched nothing


@pytest.mark.slow
def test_a_launch_stuck_before_the_first_heartbeat_is_a_hang_on_the_hpcai_runtime(tmp_path: Path) -> None:
    # A launcher whose worker never reaches the runtime's first line (an import hanging on a dead mount).
    launcher = subprocess.Popen([sys.executable, "-c",
                                 "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                                 "'import time; time.sleep(600)'])"])  # fmt: skip
    started = time.monotonic()
    record = watch(tmp_path / "hb", tmp_path, launcher_pid=launcher.pid, job="5", node_rank=0, k=10, floor=180,
                   poll_s=0.1, expect_heartbeats=True, setup_limit_s=1.5)  # fmt: skip
    assert record is not None and record["phase"] == "startup" and record["ranks"] == []
    assert record["limit_s"] == 1.5 and 1.5 <= time.monotonic() - started < 30
    launcher.wait(timeout=30)  # its worker was stopped, so the launcher ended (else: TimeoutExpired)
    assert (tmp_path / "hangs" / "5-a0-node0.json").exists()


@pytest.mark.slow
def test_a_stalled_node_is_dumped_recorded_and_stopped(tmp_path: Path) -> None:
    folder, run_dir = tmp_path / "hb", tmp_path / "run"
    folder.mkdir()
    run_dir.mkdir()
    code = (
        "import faulthandler, signal, sys, time\n"
        f"faulthandler.register(signal.SIGUSR2, file=open({str(run_dir / 'dump.txt')!r}, 'w'), all_threads=True)\n"
        "def stuck_in_a_collective():\n    time.sleep(600)\n"
        "stuck_in_a_collective()\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.5)
    beat = {"pid": worker.pid, "rank": 3, "local_rank": 0, "phase": "step", "step": 41, "step_s": 0.01,
            "time": time.time()}  # fmt: skip
    (folder / "rank-3.json").write_text(json.dumps(beat))
    record = watch(folder, run_dir, launcher_pid=worker.pid, job="77", node_rank=1, k=10, floor=1.0, poll_s=0.1)
    assert record is not None and record["ranks"] == [3] and record["step"] == 41 and record["node_rank"] == 1
    assert record["stalled_s"] > 1.0 and record["limit_s"] == 1.0
    assert worker.wait(timeout=30) != 0  # stopped, not left running
    assert "stuck_in_a_collective" in (run_dir / "dump.txt").read_text()
    saved = json.loads((run_dir / "hangs" / "77-a0-node1.json").read_text())
    assert saved["scheduler_node"] and saved["job_id"] == "77"
    (line,) = (run_dir / "timeline.jsonl").read_text().splitlines()
    assert json.loads(line)["event"] == "hang"


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in records}  # a later attempt's value replaces an abandoned one


def _wait(run_id: str, timeout: float = 240) -> dict[str, object]:
    """Status once the run has ended and no next attempt is on its way."""
    deadline = time.monotonic() + timeout
    detail: dict[str, object] = {}
    while time.monotonic() < deadline:
        detail = json.loads(run_cli("status", run_id, "--json").stdout)
        ended = detail["state"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"} and len(detail["attempts"]) >= 1
        last = detail["attempts"][-1] if detail["attempts"] else {}  # type: ignore[index]
        going_on = ended and detail["state"] == "FAILED" and last["exit_code"] in {89, 90}  # type: ignore[index]
        if ended and not going_on:
            break
        time.sleep(2)
    return detail


@pytest.mark.usefixtures("slurm_cluster", "isolated_hpcai")
def test_an_injected_hang_is_detected_and_the_training_relaunched_in_the_same_job() -> None:
    common = ["--set", "max_steps=10", "--set", "checkpoint_every=4", "--set", "hang_timeout_s=5"]
    hung = run_cli("submit", "llava", "-c", "local-slurm", *common, "--set", "inject_hang_at=6", "--json")
    clean = run_cli("submit", "llava", "-c", "local-slurm", *common, "--json")
    assert hung.returncode == 0 and clean.returncode == 0, hung.stderr + clean.stderr
    hung_run, clean_run = json.loads(hung.stdout), json.loads(clean.stdout)
    detail = _wait(hung_run["run_id"])
    assert detail["state"] == "COMPLETED", detail
    first, second = detail["attempts"]  # type: ignore[misc]
    assert first["exit_code"] == 89 and first["reason"].startswith("hang on ")
    assert "relaunched in the same job" in first["reason"]
    # A first hang is relaunched in place: same allocation, no new submission, no queue wait.
    assert second["job_id"] == first["job_id"]
    assert second["state"] == "COMPLETED" and second["resumed_from"] == "step-00000004"
    run_dir = Path(hung_run["run_dir"])
    (record_file,) = (run_dir / "hangs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["step"] == 6 and record["ranks"] == [0] and 5 <= record["stalled_s"] < 15
    stacks = (run_dir / "stacks" / f"{first['job_id']}-rank-0.txt").read_text()
    assert "hang_forever" in stacks  # the stuck rank's Python stack, as faulthandler wrote it
    # The one node is the suspect, recorded; left out only if it hangs again (or a spare takes over).
    (suspect,) = [json.loads(x) for x in (run_dir / "node_failures.jsonl").read_text().splitlines()]
    assert suspect["node"] == record["scheduler_node"] and suspect["excluded"] is False
    assert not (run_dir / "exclude_nodes").exists()
    goodput = detail["goodput"]
    assert goodput["hang_s"] >= 5 and goodput["attempts"][0]["hang_s"] >= 5  # type: ignore[index]
    relaunch = goodput["attempts"][1]  # type: ignore[index]
    assert relaunch["relaunched"] is True and relaunch["queue_wait_s"] is None
    # Seconds from the hang's detection to the first step after the relaunch: no queue in the path.
    log = [json.loads(x) for x in (run_dir / "attempts.jsonl").read_text().splitlines()]
    relaunched_at = next(e["epoch"] for e in log if e["event"] == "relaunch")
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first_step_after = min(s["time"] for s in steps if s["time"] > relaunched_at)
    assert first_step_after - record["time"] < 120
    # The recovered run trains exactly as an uninterrupted one from the checkpoint it resumed from.
    assert _wait(clean_run["run_id"])["state"] == "COMPLETED"
    assert _losses(run_dir) == _losses(Path(clean_run["run_dir"]))
    # The node agents' heartbeat folders are gone, wherever the node put them (/dev/shm, else $TMPDIR or /tmp).
    for scratch in {Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp"))}:
        assert not any(scratch.glob(f"hpcai-{first['job_id']}-*")), scratch


@pytest.mark.slow
def test_a_wall_clock_step_does_not_make_a_healthy_rank_hung(tmp_path: Path) -> None:
    """The wall clock jumps 600 s ahead (NTP, an administrator) while a rank beats normally: its heartbeat's
    wall time looks 600 s old, its monotonic time is fresh. No hang; a beat old on the monotonic clock is."""
    folder = tmp_path / "hb"
    folder.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    beat = {"pid": worker.pid, "rank": 0, "phase": "step", "step": 5, "step_s": 0.1,
            "time": time.time() - 600, "mono": time.monotonic()}  # fmt: skip
    import threading

    def beating() -> None:  # a healthy rank: a beat every 0.2 s, its wall time 600 s behind the new clock
        while worker.poll() is None:
            (folder / "rank-0.json").write_text(
                json.dumps({**beat, "time": time.time() - 600, "mono": time.monotonic()})
            )
            time.sleep(0.2)

    (folder / "rank-0.json").write_text(json.dumps(beat))
    beater = threading.Thread(target=beating)
    beater.start()
    record = watch(folder, tmp_path, launcher_pid=worker.pid, job="9", node_rank=0, k=10, floor=2.0, poll_s=0.1)
    beater.join()
    assert record is None
    assert not (tmp_path / "hangs").exists()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (folder / "rank-0.json").write_text(json.dumps({**beat, "pid": worker.pid, "time": time.time(),
                                                    "mono": time.monotonic() - 100}))  # fmt: skip
    record = watch(folder, tmp_path, launcher_pid=worker.pid, job="9", node_rank=0, k=10, floor=2.0, poll_s=0.1)
    assert record is not None and record["stalled_s"] >= 100
    worker.wait(timeout=30)
