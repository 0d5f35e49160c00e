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
