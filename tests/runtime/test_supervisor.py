"""The supervisor of a user's program: resume arguments per attempt, the stop before walltime, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hpcai.runtime.supervisor import newest_checkpoint, resume_words

WORDS = ["--resume_from_checkpoint", "{checkpoint}", "--tag", "a{attempt}"]


def test_resume_arguments_only_after_the_first_attempt_with_the_newest_checkpoint(tmp_path: Path) -> None:
    assert resume_words(WORDS, run_dir=tmp_path, attempt=1, pattern="out/checkpoint-*") == []
    # No checkpoint yet: the option and its value are left out, the rest stays.
    assert resume_words(WORDS, run_dir=tmp_path, attempt=2, pattern="out/checkpoint-*") == ["--tag", "a2"]
    for step in (90, 500, 40):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
    assert newest_checkpoint(tmp_path, "out/checkpoint-*") == str(tmp_path / "out" / "checkpoint-500")
    assert resume_words(WORDS, run_dir=tmp_path, attempt=3, pattern="out/checkpoint-*") == [
        "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-500"), "--tag", "a3"]  # fmt: skip
    # A first attempt in a folder that holds a checkpoint already (a moved run, `hpcai resume`, which counts
    # attempts afresh): it resumes too.
    assert resume_words(WORDS, run_dir=tmp_path, attempt=1, pattern="out/checkpoint-*") == [
        "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-500"), "--tag", "a1"]  # fmt: skip


def test_a_checkpoint_link_out_of_the_run_directory_is_not_taken(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "checkpoint-999")
    run = tmp_path / "out"
    assert newest_checkpoint(run, "checkpoint-*") is None


def _supervise(run_dir: Path, program: str, *extra: str) -> subprocess.Popen[bytes]:
    script = run_dir / "prog.py"
    script.write_text(program)
    env = {**os.environ, "HPCAI_ATTEMPT": "1", "HPCAI_JOB_ID": "J1", "HPCAI_HEARTBEAT_DIR": str(run_dir / "beats")}
    return subprocess.Popen(
        [sys.executable, "-m", "hpcai.runtime.supervisor", "--run-dir", str(run_dir), "--launcher", "python",
         "--grace", "1", *extra, "--", sys.executable, str(script)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_stop_file_sends_the_signal_then_leaves_the_requeue_marker(tmp_path: Path) -> None:
    program = (
        "import signal, sys, time\n"
        "def bye(*_):\n    print('got USR1, saving', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGUSR1, bye)\n"
        "for i in range(1, 1000):\n    print(f'step {i} loss: {1/i}', flush=True); time.sleep(0.05)\n"
    )
    proc = _supervise(tmp_path, program)
    deadline = time.monotonic() + 30
    while not (tmp_path / "metrics.jsonl").exists() or len((tmp_path / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (tmp_path / "STOP").touch()
    out, _ = proc.communicate(timeout=30)
    assert b"got USR1, saving" in out
    assert (tmp_path / "REQUEUE").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))
    beat = json.loads((tmp_path / "beats" / "rank-0.json").read_text())
    assert beat["phase"] == "done" and beat["step"] == steps[-1]


def test_a_program_that_ignores_the_stop_signal_is_terminated_after_the_grace(tmp_path: Path) -> None:
    program = (
        "import signal, time\nsignal.signal(signal.SIGUSR1, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    proc = _supervise(tmp_path, program)
    while b"up" not in (proc.stdout.readline() if proc.stdout else b"up"):
        pass
    (tmp_path / "STOP").touch()
    started = time.monotonic()
    assert proc.wait(timeout=30) == 128 + 15  # SIGTERM after the 1 s grace
    assert time.monotonic() - started < 15
    assert (tmp_path / "REQUEUE").exists()


def test_a_failure_is_recorded_with_the_programs_exception(tmp_path: Path) -> None:
    proc = _supervise(tmp_path, "def f():\n    raise KeyError('labels')\nf()\n")
    assert proc.wait(timeout=30) == 1
    record = json.loads((tmp_path / "errors" / "rank-0.json").read_text())
    assert record["type"] == "KeyError" and record["message"] == "'labels'" and record["where"] == "prog.py:2"
    assert not (tmp_path / "REQUEUE").exists()
