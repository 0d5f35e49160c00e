"""What the job script reads from its run directory is untrusted: counters are digits or nothing, and a
planted next-stage file does not make the job submit another folder's script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hpcai.flows.resolve import prepare_job
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Store
from tests.conftest import REPO
from tests.helpers import submit_probe, wait_for, wait_terminal

MARK = Path("/tmp/hpcai-test-planted-ran")


def _function(script: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", script, re.S | re.M)
    assert match is not None, name
    return match.group(0)


def test_counters_are_read_as_digits_and_a_planted_subscript_runs_nothing(tmp_path: Path) -> None:
    script = prepare_job("llava", "local", Overrides(run_id="r")).script
    count = _function(script, "hpcai_count")
    MARK.unlink(missing_ok=True)
    cases = {
        f"SECONDS[$(touch {MARK})0]*0": "0",
        f"a[$(touch {MARK})]": "0",
        "7": "7",
        "0009": "9",
        "12\n$(id)": "12",
        "99999999999999999999": "0",
        "": "0",
        "-3": "0",
    }
    for content, expected in cases.items():
        counter = tmp_path / "attempt_count"
        counter.write_text(content)
        shown = subprocess.run(["bash", "-c", count + f'echo "$(( $(hpcai_count "{counter}") + 1 ))"'],
                               capture_output=True, text=True)  # fmt: skip
        assert shown.stdout.strip() == str(int(expected) + 1), (content, shown.stderr)
    assert not MARK.exists()
    shown = subprocess.run(["bash", "-c", count + "hpcai_count /nonexistent"], capture_output=True, text=True)
    assert shown.stdout == "0"


def test_no_template_does_arithmetic_on_file_contents() -> None:
    for template in (REPO / "templates").glob("*.j2"):
        assert not re.search(r"\$\(\(.*\$\((cat|head|<)", template.read_text()), template


@pytest.mark.slow
def test_a_planted_next_stage_file_submits_nothing(probe_workload: str, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "job.sh").write_text(f"#!/bin/bash\ntouch {MARK}\n")
    MARK.unlink(missing_ok=True)
    store = Store()
    run_id = submit_probe(store, "local", lines=12, interval=0.25)
    view = wait_for(store, run_id, {"RUNNING"})
    (Path(view.run_dir) / "next_stage").write_text(f"{evil}\n")
    final = wait_terminal(store, run_id, timeout=120)
    assert final.state == "COMPLETED"
    err = "".join(p.read_text() for p in (Path(view.run_dir) / "logs").glob("*.err"))
    assert "does not name a run directory beside this one" in err
    assert not MARK.exists()
