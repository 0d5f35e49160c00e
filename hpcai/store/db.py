"""The run store: SQLite in WAL mode under the state directory.

Runs, their attempts (lineage: job id, state, exit code, reason, checkpoint resumed from, LR scale,
skipped batches) and events. Every write is one short `BEGIN IMMEDIATE` transaction, so a killed CLI
leaves the store consistent, and several hpcai processes (a `status --watch` and a `submit`) share it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.errors import NotFoundError, StoreError, ValidationError, closest
from hpcai.paths import state_dir
from hpcai.rundir.visible import visible_line
from hpcai.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION


@dataclass(frozen=True)
class Attempt:
    run_id: str
    number: int
    job_id: str | None
    state: str
    submitted: float
    started: str | None
    ended: str | None
    exit_code: int | None
    reason: str | None
    resumed_from: str | None
    lr_scale: float
    skipped_batches: str | None
    waiting: str | None = None
    # Set once the run moved on (`hpcai move`): the cluster and folder this attempt ran in. None: the run's own.
    cluster: str | None = None
    run_dir: str | None = None

    def home(self, run: Run) -> tuple[str, str]:
        """The cluster and run folder this attempt ran in."""
        return self.cluster or run.cluster, self.run_dir or run.run_dir

    def job_key(self) -> str | None:
        """The job id as the run's carried files name it: qualified by its cluster once the run moved away."""
        if self.job_id is None:
            return None
        return f"{self.cluster}:{self.job_id}" if self.cluster else self.job_id


LAST = "last"  # what any command taking a run accepts for the newest run (besides a unique prefix of an id)


@dataclass(frozen=True)
class Run:
    id: str
    workload: str
    cluster: str
    stage: str | None
    run_dir: str
    spec: dict[str, Any]
    created: float
    state: str
    last_step: int | None = None
    last_loss: float | None = None


@dataclass(frozen=True)
class BudgetReading:
    """What a site's budget command said of one account at one time (`used` and `total` in `unit`)."""

    cluster: str
    account: str
    time: float
    used: float
    total: float
    unit: str


@dataclass(frozen=True)
class BadNode:
    """One failure a run saw on a node: `source` names it (run/job/attempt/node rank), so re-reading the
    run's node log records it once."""

    cluster: str
    node: str
    reason: str
    run_id: str | None
    source: str
    hang: bool
    since: float
    expires: float


@dataclass(frozen=True)
class Event:
    run_id: str
    time: float
    kind: str
    message: str


def store_path() -> Path:
    return state_dir() / "hpcai.db"


def store_failure(path: Path, exc: BaseException) -> StoreError:
    """The one-paragraph account of a store that cannot be used (exit 4)."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return StoreError(
        f"the run store {path} cannot be used ({reason}). If the disk is full or the folder read-only, free "
        "space or set HPCAI_HOME to a writable folder; if the file is damaged, move it aside (your runs' "
        "files on the clusters are untouched) and run hpcai again."
    )


def _duplicate_id(run_id: str) -> ValidationError:
    return ValidationError(
        f"--run-id: a run named '{run_id}' exists already (`hpcai status {run_id}`). Choose another id, or leave "
        "--run-id out for a fresh one."
    )


def _typed(text: str) -> str:
    """What a user typed, as SQLite can take it: bytes that were not UTF-8 (surrogate-escaped by Python's
    argv decoding) become U+FFFD, which no stored id contains."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                with self.transaction() as db:
                    if version < 1:
                        for statement in filter(str.strip, SCHEMA.split(";")):
                            db.execute(statement)
                    for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                        for statement in MIGRATIONS[step]:
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise store_failure(self.path, exc) from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # runs ---------------------------------------------------------------------------------------------

    def create_run(self, run: Run, first_attempt_lr_scale: float = 1.0) -> None:
        """Record the intent to submit: the run and attempt 1 in state SUBMITTING, in one transaction."""
        with self.transaction() as db:
            other = db.execute(
                "SELECT id FROM runs WHERE run_dir = ? AND cluster = ? AND id != ?", (run.run_dir, run.cluster, run.id)
            ).fetchone()
            if other is not None:
                raise ValidationError(
                    f"--run-dir: {run.run_dir} is the run directory of run {other[0]} on {run.cluster}: a run "
                    f"directory is never shared. Give another folder, or `hpcai resume {other[0]}` to go on with it."
                )
            db.execute(
                "INSERT INTO runs (id, workload, cluster, stage, run_dir, spec, created, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    run.workload,
                    run.cluster,
                    run.stage,
                    run.run_dir,
                    json.dumps(run.spec),
                    run.created,
                    run.state,
                ),
            )
            db.execute(
                "INSERT INTO attempts (run_id, number, state, submitted, lr_scale) VALUES (?, 1, ?, ?, ?)",
                (run.id, run.state, run.created, first_attempt_lr_scale),
            )
            self._event(db, run.id, "submit", "submission recorded before calling the scheduler")

    def check_run_id_free(self, run_id: str) -> None:
        if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (_typed(run_id),)).fetchone() is not None:
            raise _duplicate_id(run_id)

    def create_run_checked(self, run: Run, first_attempt_lr_scale: float = 1.0) -> None:
        """`create_run`, with a run id that exists already reported as the user's input (exit 2)."""
        try:
            self.create_run(run, first_attempt_lr_scale)
        except sqlite3.IntegrityError:
            raise _duplicate_id(run.id) from None

    def record_progress(self, run_id: str, step: int, loss: float | None) -> None:
        self._db.execute("UPDATE runs SET last_step = ?, last_loss = ? WHERE id = ?", (step, loss, run_id))

    def run(self, run_id: str) -> Run:
        run_id = _typed(run_id)
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None and run_id == LAST:
            row = self._db.execute("SELECT * FROM runs ORDER BY created DESC, rowid DESC LIMIT 1").fetchone()
            if row is None:
                raise NotFoundError(f"no runs yet in {self.path}: `last` names the newest one once there is one.")
        if row is None:
            matches = [r[0] for r in self._db.execute("SELECT id FROM runs WHERE id LIKE ?", (run_id + "%",))]
            if len(matches) == 1:
                return self.run(matches[0])
            known = [r[0] for r in self._db.execute("SELECT id FROM runs ORDER BY created DESC LIMIT 200")]
            hint = closest(run_id, known) if len(matches) == 0 else f" It matches {len(matches)} runs; give more of it."
            raise NotFoundError(f"no run '{run_id}' in {self.path}.{hint} `hpcai list` shows the runs.")
        return _run(row)

    def runs(self, *, cluster: str | None = None, active_only: bool = False, limit: int | None = None) -> list[Run]:
        query = "SELECT * FROM runs"
        clauses, params = [], []
        if cluster:
            clauses.append("cluster = ?")
            params.append(_typed(cluster))
        if active_only:
            clauses.append("state NOT IN (" + ",".join("?" * len(_TERMINAL)) + ")")
            params.extend(_TERMINAL)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY created DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        return [_run(row) for row in self._db.execute(query, params)]

    # nodes --------------------------------------------------------------------------------------------

    def record_bad_nodes(self, entries: list[BadNode]) -> int:
        """Record node failures, each once (by its source), in one transaction; how many were new."""
        if not entries:
            return 0
        with self.transaction() as db:
            added = 0
            for entry in entries:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO bad_nodes (cluster, node, reason, run_id, source, hang, since, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.cluster, entry.node, entry.reason, entry.run_id, entry.source, int(entry.hang),
                     entry.since, entry.expires),
                )  # fmt: skip
                added += cursor.rowcount
            return added

    def bad_nodes(self, cluster: str | None = None, *, now: float | None = None) -> list[BadNode]:
        """Failures not expired at `now` (default: now; `now=0` gives every one recorded)."""
        when = time.time() if now is None else now
        query = "SELECT * FROM bad_nodes WHERE expires > ?"
        params: list[Any] = [when]
        if cluster is not None:
            query += " AND cluster = ?"
            params.append(_typed(cluster))
        rows = self._db.execute(query + " ORDER BY cluster, node, since", params)
        return [BadNode(**{**dict(row), "hang": bool(row["hang"])}) for row in rows]

    def clear_bad_nodes(self, cluster: str, node: str | None = None) -> int:
        """Forget a cluster's failures (of one node, or all); returns how many records went."""
        with self.transaction() as db:
            if node is None:
                cursor = db.execute("DELETE FROM bad_nodes WHERE cluster = ?", (_typed(cluster),))
            else:
                cursor = db.execute(
                    "DELETE FROM bad_nodes WHERE cluster = ? AND node = ?", (_typed(cluster), _typed(node))
                )
            return cursor.rowcount

    # budget -------------------------------------------------------------------------------------------

    def record_budget_reading(self, reading: BudgetReading, *, keep_days: float = 90) -> None:
        """Keep what the site's budget command said (readings older than `keep_days` go)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO budget_readings (cluster, account, time, used, total, unit) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_typed(reading.cluster), _typed(reading.account), reading.time, reading.used, reading.total,
                 _typed(reading.unit)),
            )  # fmt: skip
            db.execute("DELETE FROM budget_readings WHERE time < ?", (reading.time - keep_days * 86400,))

    def budget_readings(self, cluster: str, account: str, *, since: float = 0) -> list[BudgetReading]:
        """One account's readings from `since` on, oldest first (accounts compare case-insensitively)."""
        rows = self._db.execute(
            "SELECT * FROM budget_readings WHERE cluster = ? AND lower(account) = lower(?) AND time >= ? ORDER BY time",
            (_typed(cluster), _typed(account), since),
        )
        return [BudgetReading(**dict(row)) for row in rows]

    # attempts -----------------------------------------------------------------------------------------

    def attempts(self, run_id: str) -> list[Attempt]:
        rows = self._db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY number", (run_id,))
        return [Attempt(**dict(row)) for row in rows]

    def latest_attempts(self, run_ids: list[str]) -> dict[str, Attempt]:
        if not run_ids:
            return {}
        found: dict[str, Attempt] = {}
        for chunk in _chunks(run_ids, 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT a.* FROM attempts a JOIN (SELECT run_id, MAX(number) AS n FROM attempts "
                f"WHERE run_id IN ({marks}) GROUP BY run_id) m ON a.run_id = m.run_id AND a.number = m.n",
                chunk,
            )
            found.update({row["run_id"]: Attempt(**dict(row)) for row in rows})
        return found

    def add_attempt(
        self,
        run_id: str,
        *,
        resumed_from: str | None = None,
        lr_scale: float = 1.0,
        skipped_batches: str | None = None,
        reason: str | None = None,
        after: int | None = None,
    ) -> int:
        """Record the next attempt (SUBMITTING). With `after`, only if attempt `after` is still the latest:
        two `hpcai resume` at once cannot both start one (the check and the insert are one transaction)."""
        resumed_from, skipped_batches, reason = (
            visible_line(x) if isinstance(x, str) else x for x in (resumed_from, skipped_batches, reason)
        )
        with self.transaction() as db:
            number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE run_id = ?", (run_id,))
            n = int(number.fetchone()[0])
            if after is not None and n != after + 1:
                raise ValidationError(
                    f"run {run_id}: attempt {n - 1} was started meanwhile (another hpcai resume?); nothing was "
                    f"submitted. See `hpcai status {run_id}`."
                )
            db.execute(
                "INSERT INTO attempts (run_id, number, state, submitted, resumed_from, lr_scale, skipped_batches, "
                "reason) VALUES (?, ?, 'SUBMITTING', ?, ?, ?, ?, ?)",
                (run_id, n, time.time(), resumed_from, lr_scale, skipped_batches, reason),
            )
            db.execute("UPDATE runs SET state = 'SUBMITTING' WHERE id = ?", (run_id,))
            self._event(db, run_id, "attempt", f"attempt {n} recorded before calling the scheduler")
        return n

    def update_attempt(self, run_id: str, number: int, **fields: Any) -> None:
        """Set fields of one attempt; the run's state follows its latest attempt."""
        allowed = {"job_id", "state", "started", "ended", "exit_code", "reason", "waiting"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {unknown}")
        if not fields:
            return
        for key in ("reason", "waiting"):  # often read from a cluster: shown in terminals later
            if isinstance(fields.get(key), str):
                fields[key] = visible_line(fields[key])
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self.transaction() as db:
            db.execute(
                f"UPDATE attempts SET {assignments} WHERE run_id = ? AND number = ?", (*fields.values(), run_id, number)
            )
            if "state" in fields:
                latest = db.execute("SELECT MAX(number) FROM attempts WHERE run_id = ?", (run_id,)).fetchone()[0]
                if latest == number:
                    db.execute("UPDATE runs SET state = ? WHERE id = ?", (fields["state"], run_id))

    def move_run(self, run_id: str, *, cluster: str, run_dir: str, spec: dict[str, Any], resumed_from: str,
                 after: int) -> int:  # fmt: skip
        """The run's new home (`hpcai move`), in one transaction: its attempts so far keep where they ran, the run
        takes the new cluster, folder and spec, and its next attempt is recorded (SUBMITTING) -- only if attempt
        `after` is still the latest, so two moves (or a move and a resume) cannot both go on."""
        with self.transaction() as db:
            latest = db.execute("SELECT COALESCE(MAX(number), 0) FROM attempts WHERE run_id = ?", (run_id,))
            n = int(latest.fetchone()[0]) + 1
            if n != after + 1:
                raise ValidationError(
                    f"run {run_id}: attempt {n - 1} was started meanwhile (another hpcai resume or move?); nothing "
                    f"was moved. See `hpcai status {run_id}`."
                )
            db.execute(
                "UPDATE attempts SET cluster = COALESCE(cluster, (SELECT cluster FROM runs WHERE id = ?)), "
                "run_dir = COALESCE(run_dir, (SELECT run_dir FROM runs WHERE id = ?)) WHERE run_id = ?",
                (run_id, run_id, run_id),
            )
            db.execute(
                "UPDATE runs SET cluster = ?, run_dir = ?, spec = ?, state = 'SUBMITTING' WHERE id = ?",
                (cluster, run_dir, json.dumps(spec), run_id),
            )
            db.execute(
                "INSERT INTO attempts (run_id, number, state, submitted, resumed_from, lr_scale) "
                "VALUES (?, ?, 'SUBMITTING', ?, ?, 1.0)",
                (run_id, n, time.time(), visible_line(resumed_from)),
            )
            self._event(db, run_id, "move", f"moved to {cluster} ({run_dir}); attempt {n} recorded before calling "
                                            "the scheduler")  # fmt: skip
        return n

    # events -------------------------------------------------------------------------------------------

    def add_event(self, run_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        message = visible_line(message)
        with self.transaction() as db:
            self._event(db, run_id, kind, message, data)

    def events(self, run_id: str) -> list[Event]:
        rows = self._db.execute(
            "SELECT run_id, time, kind, message FROM events WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [Event(**dict(row)) for row in rows]

    @staticmethod
    def _event(
        db: sqlite3.Connection, run_id: str, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        db.execute(
            "INSERT INTO events (run_id, time, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            (run_id, time.time(), kind, message, json.dumps(data) if data else None),
        )


_TERMINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
)


def _run(row: sqlite3.Row) -> Run:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    return Run(**data)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
