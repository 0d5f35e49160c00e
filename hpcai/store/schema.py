"""The store's tables (SQLite), and the changes that bring a store written by an older hpcai up to date."""

from __future__ import annotations

SCHEMA_VERSION = 6
# Changes to a store created by an older hpcai, applied in order (version: statements).
MIGRATIONS: dict[int, list[str]] = {
    # The last step and loss seen, so `list` shows them without reading any run directory.
    2: ["ALTER TABLE runs ADD COLUMN last_step INTEGER", "ALTER TABLE runs ADD COLUMN last_loss REAL"],
    # Nodes runs found failing, per cluster (hpcai.store.nodes): what later submissions leave out.
    3: [
        "CREATE TABLE IF NOT EXISTS bad_nodes (cluster TEXT NOT NULL, node TEXT NOT NULL, reason TEXT NOT NULL, "
        "run_id TEXT, source TEXT NOT NULL, hang INTEGER NOT NULL, since REAL NOT NULL, expires REAL NOT NULL, "
        "PRIMARY KEY (cluster, node, source))"
    ],
    # Why a job that has not ended waits (the scheduler's pending reason, a pipeline's earlier stage), kept
    # apart from why an attempt ended: a pending reason never outlives the wait.
    4: ["ALTER TABLE attempts ADD COLUMN waiting TEXT"],
    # What the site's budget command said, each time hpcai read it: the project's burn rate (hpcai budget).
    5: [
        "CREATE TABLE IF NOT EXISTS budget_readings (cluster TEXT NOT NULL, account TEXT NOT NULL, time REAL NOT "
        "NULL, used REAL NOT NULL, total REAL NOT NULL, unit TEXT NOT NULL, PRIMARY KEY (cluster, account, time))"
    ],
    # Where an attempt ran when that is no longer the run's home (`hpcai move`): NULL is the run's cluster and folder.
    6: ["ALTER TABLE attempts ADD COLUMN cluster TEXT", "ALTER TABLE attempts ADD COLUMN run_dir TEXT"],
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workload TEXT NOT NULL,
    cluster TEXT NOT NULL,
    stage TEXT,
    run_dir TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_cluster ON runs (cluster);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL REFERENCES runs (id),
    number INTEGER NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    submitted REAL NOT NULL,
    started TEXT,
    ended TEXT,
    exit_code INTEGER,
    reason TEXT,
    resumed_from TEXT,
    lr_scale REAL NOT NULL DEFAULT 1.0,
    skipped_batches TEXT,
    PRIMARY KEY (run_id, number)
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id);
"""
