"""Text from a cluster or a run folder reaches no terminal as control sequences: a planted
errors/rank-9.json cleared the screen, printed an OSC 8 link and replaced the real "why it ended"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcai.rundir.visible import visible_line, visible_log
from hpcai.store.db import Store
from tests.conftest import run_cli
from tests.helpers import submit_probe, wait_for, wait_terminal

CLEAR = "\x1b[2J\x1b[H"
LINK = "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"


def test_visible_keeps_text_and_escapes_controls() -> None:
    assert visible_line("plain text: ok") == "plain text: ok"
    assert visible_line(f"a{CLEAR}b") == "a\\x1b[2J\\x1b[Hb"
    assert "\x1b" not in visible_line(LINK) and "\x9b" not in visible_line("\x9b31m")
    assert visible_line("two\nlines") == "two lines" and visible_line("rtl\u202eevil") == "rtl\\u202eevil"
    assert visible_log("10%|#  |\r20%|## |\n\tnext\x07") == "10%|#  |\r20%|## |\n\tnext\\x07"


@pytest.mark.slow
def test_a_planted_error_record_and_log_lines_show_no_escape_sequences(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=30, interval=0.1, exit_code=1)
    view = wait_for(store, run_id, {"RUNNING"})
    run_dir = Path(view.run_dir)
    (run_dir / "errors").mkdir(exist_ok=True)
    planted = {"rank": 9, "host": f"node{CLEAR}", "job_id": view.job_id, "time": 1.0,
               "type": f"{CLEAR}All good{LINK}", "message": "\x1b]0;title\x07done", "where": "x.py:1"}  # fmt: skip
    (run_dir / "errors" / "rank-9.json").write_text(json.dumps(planted))
    final = wait_terminal(store, run_id, timeout=120)
    assert final.state == "FAILED"
    shown = run_cli("status", run_id)
    assert shown.returncode == 0 and "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b" in shown.stdout  # shown, as text
    listed = run_cli("list")
    assert "\x1b" not in listed.stdout
    with open(next((run_dir / "logs").glob("*.out")), "a") as log:
        log.write(f"{CLEAR}fake prompt$ {LINK}\n")
    logs = run_cli("logs", run_id)
    assert "\x1b" not in logs.stdout and "\\x1b[2J" in logs.stdout
    raw = run_cli("logs", run_id, "--raw")
    assert CLEAR in raw.stdout


def test_status_watch_says_progress_off_a_terminal_and_fails_with_the_run(probe_workload: str) -> None:
    store = Store()
    failing = submit_probe(store, "local", lines=4, interval=0.2, exit_code=3)
    shown = run_cli("status", failing, "--watch", "--interval", "0.3")
    assert shown.returncode == 1, shown.stderr  # `status --watch RUN && next` stops here
    assert f"{failing}: FAILED" in shown.stdout and shown.stdout.count(f"{failing}: ") >= 2
    done = submit_probe(store, "local", lines=2, interval=0.1)
    as_json = run_cli("status", done, "--watch", "--interval", "0.3", "--json")
    assert as_json.returncode == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)
    assert row["state"] == "COMPLETED" and f"{done}: " in as_json.stderr
