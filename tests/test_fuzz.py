"""Every command on hostile input: a clear message and an exit code, never a traceback, never a command
run by accident. In-process (the real `hpcai.cli.app.main`), so hundreds of cases take seconds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hpcai.cli.app import main
from hpcai.store.db import Store
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


def test_planted_run_records_counters_ids_escapes_and_huge_numbers(
    probe_workload: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """What a project member with write access to the shared run folder can plant: forged job ids in the
    attempt log (options, shell), requeue and relaunch records, escape sequences in an error record and in
    events, shell in the job's counters, numbers past every range. Every command answers, shows no escape
    sequence, runs nothing, and a resume's job reads the counters as absent."""
    store = Store()
    run_id = submit_probe(store, "local", lines=2, checkpoint_every=1)
    run_dir = Path(wait_terminal(store, run_id, timeout=60).run_dir)
    mark = tmp_path / "pwned"
    with open(run_dir / "attempts.jsonl", "a") as log:
        for record in ({"event": "submitted", "job_id": "-uroot", "after": "x"},
                       {"event": "requeue", "job_id": "-uroot", "epoch": 1.0},
                       {"event": "relaunch", "job_id": f"$(touch {mark})", "why": "\x1b[2Jhang"},
                       {"event": "requeue", "job_id": "L00000000", "epoch": 1e300},
                       {"event": "start", "job_id": "L00000000", "epoch": -1e300}):  # fmt: skip
            log.write(json.dumps(record) + "\n")
        log.write('{"event": "end", "job_id": "L00000000", "epoch": 1e400}\n')
    (run_dir / "errors").mkdir(exist_ok=True)
    (run_dir / "errors" / "rank-9.json").write_text(json.dumps(
        {"rank": 9, "type": "\x1b[2J\x1b]8;;http://evil\x07Error", "message": "\x1b[31mreal cause\x07", "time": 1e400}
    ))  # fmt: skip
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (
        {"kind": "spike\x1b[2J", "onset_step": 1, "detected_step": 1, "status": "closed"},
        {"kind": "spike\x1b[2J", "onset_step": 1, "detected_step": 1, "status": "closed"},
        {"kind": "spike", "onset_step": 10**30, "detected_step": "x", "status": "closed", "loss_peak": 1e308},
    )))  # fmt: skip
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 99999999999999999999, "loss": 1e400, "left_out": 1e400}\n')
        metrics.write('{"step": 2, "loss": 0.5, "left_out": -5}\n{"step": "abc", "loss": "\\u001b[2J"}\n')
    for counter in ("attempt_count", "requeues"):
        (run_dir / counter).write_text(f"SECONDS[$(touch {mark})0]*0\n")
    (run_dir / "node_failures.jsonl").write_text('{"node": "n\\u001b[2J1", "time": 1e400, "why": "x"}\n')
    for args in (["status"], ["status", run_id], ["status", run_id, "--json"], ["list"], ["logs", run_id],
                 ["plot", run_id], ["spikes", "scan", run_id], ["nodes"], ["cancel", run_id]):  # fmt: skip
        code, output = run_main(args, capsys)
        assert code in ALLOWED_EXITS and "Traceback" not in output, (args, output[-3000:])
        if "--json" not in args:
            assert "\x1b" not in output and "\x07" not in output, (args, output[-2000:])
    code, output = run_main(["resume", run_id, "--from-step", "1", "--json"], capsys)
    assert code in ALLOWED_EXITS and "Traceback" not in output, output[-3000:]
    if code == 0:
        wait_terminal(store, run_id, timeout=60)
    assert not mark.exists(), "a planted value ran a command"
    assert all(a.job_id is None or a.job_id.startswith("L") for a in store.attempts(run_id))
