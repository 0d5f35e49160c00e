"""Every command on hostile input: a clear message and an exit code, never a traceback, never a command
run by accident. In-process (the real `hpcai.cli.main`), so hundreds of cases take seconds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hpcai.cli import main
from hpcai.store import Store
from tests.helpers import submit_probe, wait_terminal

ALLOWED_EXITS = {0, 1, 2, 3, 4}


def hostile_values(tmp: Path) -> list[str]:
    mark = tmp / "pwned"
    binary = tmp / "binary.jsonl"
    binary.write_bytes(os.urandom(2048))
    utf16 = tmp / "utf16.csv"
    utf16.write_text("step,loss\n1,2\n", encoding="utf-16")
    fifo = tmp / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    return [
        "", "-", "[/x]", "[bold]x", "x\ny", "x\r\n#SBATCH --wrap=id", f"'; touch {mark}; '", f"$(touch {mark})",
        f"`touch {mark}`", "{0}", "{", "%s%n", "../../../../etc/passwd", "A" * 3000, "nan", "-1", "0", "1e999",
        "99999999999999999999999", "\udcff\udcfe", "ü🚀", str(binary), str(utf16), str(fifo), str(tmp),
    ]  # fmt: skip


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    saved = sys.argv
    sys.argv = ["hpcai", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out + out.err


TEMPLATES = [
    ["clusters", "show", "{H}"],
    ["workloads", "show", "{H}"],
    ["render", "{H}"],
    ["render", "llava", "--cluster", "{H}"],
    ["render", "llava", "--set", "{H}"],
    ["render", "llava", "--set", "lr={H}"],
    ["render", "llava", "--set", "data={H}"],
    ["render", "llava", "--set", "preset={H}"],
    ["render", "llava", "--env", "{H}"],
    ["render", "llava", "--env", "X={H}"],
    ["render", "llava", "--time", "{H}"],
    ["render", "llava", "--nodes", "{H}"],
    ["render", "llava", "--run-dir", "{H}"],
    ["render", "llava", "--run-id", "{H}"],
    ["render", "llava", "--name", "{H}"],
    ["render", "llava", "--stage", "{H}"],
    ["render", "llava", "--cluster", "juwels-booster", "--account", "{H}"],
    ["render", "llava", "--cluster", "juwels-booster", "--account", "a", "--qos", "{H}"],
    ["render", "llava", "--cluster", "juwels-booster", "--account", "a", "--partition", "{H}"],
    ["render", "llava", "--cluster", "juwels-booster", "--account", "a", "--container", "{H}"],
    ["submit", "llava", "--dry-run", "--set", "model_path={H}"],
    ["submit", "{H}", "--dry-run"],
    ["status", "{H}"],
    ["logs", "{H}"],
    ["cancel", "{H}"],
    ["resume", "{H}"],
    ["watch", "{H}"],
    ["plot", "{H}"],
    ["spikes", "scan", "{H}"],
    ["spikes", "scan", "{H}", "--regex", "{H}"],
    ["budget", "--cluster", "{H}"],
    ["budget", "-N", "{H}", "-t", "01:00:00"],
    ["budget", "-N", "2", "-t", "{H}"],
    ["doctor", "--cluster", "{H}"],
    ["list", "--cluster", "{H}"],
    ["data", "synth", "{H}", "{T}/synth"],
    ["data", "synth", "llava", "{T}/synth-{H}", "--samples", "1"],
    ["stage", "{H}"],
    ["onboard", "--cluster", "{H}", "--yes"],
    ["onboard", "--cluster", "local", "--user", "{H}", "--account", "{H}", "--yes"],
]


@pytest.mark.parametrize("template", TEMPLATES, ids=[" ".join(t) for t in TEMPLATES])
def test_no_command_prints_a_traceback_on_hostile_input(
    template: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # onboard writes ~/.ssh/config
    monkeypatch.chdir(tmp_path)
    for value in hostile_values(tmp_path):
        if "{T}" in " ".join(template) and ("\n" in value or "/" in value[1:]):
            continue  # a folder name, not a path: nested paths are the user's to create
        args = [a.replace("{H}", value).replace("{T}", str(tmp_path)) for a in template]
        code, output = run_main(args, capsys)
        assert code in ALLOWED_EXITS, (args, code, output[-2000:])
        assert "Traceback" not in output, (args, output[-3000:])
        assert not list(tmp_path.glob("pwned*")), args


def test_commands_survive_a_run_directory_with_hostile_files(
    probe_workload: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job (or a user) can leave anything in a run directory: status, list, logs, plot and resume still
    answer for it and for every other run."""
    store = Store()
    run_id = submit_probe(store, "local", lines=2, checkpoint_every=1)
    run_dir = Path(wait_terminal(store, run_id, timeout=60).run_dir)
    with open(run_dir / "attempts.jsonl", "a") as log:
        log.write(
            '{"event": "submitted"}\n{"event": "submitted", "job_id": 7, "after": null}\n[1, 2]\n\x00\x01garbage\n'
        )
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "metrics.jsonl").mkdir()
    (run_dir / "events.jsonl").write_bytes(os.urandom(512))
    (run_dir / "decisions.jsonl").write_text('{"action": "rollback", "lr_scale": "x", "checkpoint_step": "y"}\n')
    (run_dir / "GAVE_UP.json").write_text("[/x] not json")
    (run_dir / "checkpoints" / "step-abc").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("../../../etc\n")
    for args in (["status"], ["status", run_id], ["status", run_id, "--json"], ["list"], ["logs", run_id],
                 ["plot", run_id], ["resume", run_id, "--from-step", "1"]):  # fmt: skip
        code, output = run_main(args, capsys)
        assert code in ALLOWED_EXITS and "Traceback" not in output, (args, output[-3000:])
    code, output = run_main(["status", "--json"], capsys)
    assert code == 0, output
    assert run_id in [r["run_id"] for r in json.loads(output)]
