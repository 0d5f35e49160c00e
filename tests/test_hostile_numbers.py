"""Numbers read from a run folder are bounded: a planted metrics line breaks neither `status` (the store
holds 64-bit integers) nor `plot`; a future-dated or infinite node-failure time excludes no node for
centuries and crashes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpcai.backends.session import Session
from hpcai.flows.runs.plot import load_plot_data
from hpcai.flows.runs.views import status
from hpcai.store.db import Store
from hpcai.store.nodes import NODE_EXCLUSION_S, excluded_nodes, record_from_node_log
from tests.conftest import run_cli
from tests.helpers import submit_probe, wait_terminal

PLANTED = [
    '{"step": 99999999999999999999, "loss": 1.0}',
    '{"step": 2.5e400, "loss": 1.0}',
    '{"step": "abc", "loss": 1.0}',
    '{"loss": 1.0}',
    '{"step": true, "loss": 1.0}',
    '{"step": -5, "loss": 1e400}',
    "[1, 2, 3]",
]


def test_planted_metrics_lines_break_neither_status_nor_plot(probe_workload: str) -> None:
    store = Store()
    run_id = submit_probe(store, "local", lines=3, interval=0.1)
    view = wait_terminal(store, run_id, timeout=60)
    metrics = Path(view.run_dir) / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 3, "loss": 0.5}) + "\n")
    for line in PLANTED:
        with open(metrics, "a") as handle:
            handle.write(line + "\n")
        (row,), _ = status(store, run_id)
        assert row.step == 3 and row.loss == 0.5, line
        with Session():
            data = load_plot_data(store, run_id)
        assert [s for seg in data.segments for s in seg.steps] == [3]
    shown = run_cli("plot", run_id)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr


def test_a_future_or_infinite_node_failure_time(tmp_path: Path) -> None:
    store = Store()
    now = time.time()
    records = [
        {"node": "nid001", "time": 1e12, "why": "NODE_FAIL"},
        {"node": "nid002", "time": float("inf"), "why": "NODE_FAIL"},
        {"node": "nid003", "time": float("nan"), "why": "NODE_FAIL"},
        {"node": "nid004", "time": -1, "why": "NODE_FAIL"},
    ]
    record_from_node_log(store, "local-slurm", "r", records)
    (entry,) = store.bad_nodes("local-slurm")
    assert entry.node == "nid001" and entry.expires <= now + NODE_EXCLUSION_S + 60
    assert excluded_nodes(store, "local-slurm") == ["nid001"]
    shown = run_cli("nodes", "--cluster", "local-slurm")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr
    shown = run_cli("nodes", "--cluster", "local-slurm", "--json")
    assert shown.returncode == 0 and "nid001" in shown.stdout
