from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

CURVES = Path(__file__).resolve().parents[1] / "fixtures" / "loss-curves"


def test_scan_csv_json_lists_events() -> None:
    result = run_cli("spikes", "scan", str(CURVES / "megatron_mixtral8x7b_a100.csv"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    big = [e for e in data["events"] if e["onset_step"] == 4050]
    assert big and big[0]["kind"] == "spike" and big[0]["detected_step"] == 4050 and not big[0]["rollback"]
    assert all({"kind", "onset_step", "detected_step"} <= set(e) for e in data["events"])


def test_scan_metrics_jsonl_with_nan(tmp_path: Path) -> None:
    lines = [json.dumps({"step": s, "loss": 3.0 - s * 0.01, "grad_norm": 1.0}) for s in range(1, 40)]
    lines.append(json.dumps({"step": 40, "loss": "nan", "grad_norm": 1.0}))
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = json.loads(run_cli("spikes", "scan", str(path), "--json").stdout)
    assert data["events"][-1]["kind"] == "nonfinite" and data["events"][-1]["onset_step"] == 40
    assert data["events"][-1]["rollback"]


def test_scan_log_with_regex_and_bad_regex(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("".join(f" iteration {s} | lm loss: {3 - s * 0.001:.4f} |\n" for s in range(1, 200))
                   + " iteration 200 | lm loss: 9.0 |\n")  # fmt: skip
    regex = r"iteration (?P<step>\d+) \| lm loss: (?P<loss>[0-9.]+)"
    data = json.loads(run_cli("spikes", "scan", str(log), "--regex", regex, "--json").stdout)
    assert data["points"] == 200 and data["events"][-1]["onset_step"] == 200
    bad = run_cli("spikes", "scan", str(log), "--regex", "iteration (\\d+)")
    assert bad.returncode == 2 and "named groups" not in bad.stdout and "name the groups" in bad.stderr
    human = run_cli("spikes", "scan", str(log), "--regex", regex)
    assert "spike" in human.stdout


def _resumed_run_metrics(path: Path) -> None:
    """Steps 1-60 with a spike at 35, then a resume from step 30 that runs 31-60 again, spike and all."""

    def line(step: int) -> str:
        return json.dumps({"step": step, "loss": 9.0 if step == 35 else 3.0 - step * 0.01, "grad_norm": 1.0})

    path.write_text("".join(line(s) + "\n" for s in [*range(1, 61), *range(31, 61)]))


def test_steps_run_again_after_a_resume_count_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _resumed_run_metrics(path)
    data = json.loads(run_cli("spikes", "scan", str(path), "--json").stdout)
    assert [e["onset_step"] for e in data["events"]] == [35] and data["points"] == 60


def test_scan_takes_a_run(isolated_hpcai: Path, tmp_path: Path) -> None:
    import time

    from hpcai.store.db import Run, Store

    _resumed_run_metrics(tmp_path / "metrics.jsonl")
    Store().create_run(Run("scanned-run-1", "probe", "local", None, str(tmp_path), {}, time.time(), "COMPLETED"))
    data = json.loads(run_cli("spikes", "scan", "scanned", "--json").stdout)
    assert data["file"] == "run scanned-run-1" and [e["onset_step"] for e in data["events"]] == [35]
    missing = run_cli("spikes", "scan", "no-such-run")
    assert missing.returncode == 2 and "no-such-run" in missing.stderr and "Traceback" not in missing.stderr
