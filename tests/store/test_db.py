"""The run store under concurrency and interruption."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from hpcai.errors import NotFoundError, ValidationError
from hpcai.store.db import Run, Store


def make_run(store: Store, run_id: str) -> None:
    store.create_run(Run(run_id, "probe", "local", None, f"/tmp/{run_id}", {"k": 1}, time.time(), "SUBMITTING"))


def writer(path: str, prefix: str, count: int) -> None:
    store = Store(Path(path))
    for i in range(count):
        make_run(store, f"{prefix}-{i}")
        store.update_attempt(f"{prefix}-{i}", 1, job_id=str(i), state="RUNNING")
        store.add_event(f"{prefix}-{i}", "note", "x")


def reader(path: str, count: int) -> None:
    store = Store(Path(path))
    for _ in range(count):
        runs = store.runs()
        store.latest_attempts([r.id for r in runs])


def test_concurrent_writers_and_readers_neither_corrupt_nor_lock_up(tmp_path: Path) -> None:
    path = str(tmp_path / "hpcai.db")
    Store(Path(path)).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=writer, args=(path, f"w{n}", 150)) for n in range(3)]
    procs += [ctx.Process(target=reader, args=(path, 150)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    store = Store(Path(path))
    assert len(store.runs()) == 450
    assert all(a.state == "RUNNING" for a in store.latest_attempts([r.id for r in store.runs()]).values())
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_state_follows_the_latest_attempt(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    make_run(store, "r")
    store.update_attempt("r", 1, job_id="1", state="FAILED", exit_code=3)
    n = store.add_attempt("r", resumed_from="checkpoints/step-100", lr_scale=0.5, skipped_batches="100-300")
    assert n == 2 and store.run("r").state == "SUBMITTING"
    store.update_attempt("r", 2, job_id="2", state="RUNNING")
    store.update_attempt("r", 1, state="FAILED")  # an older attempt never moves the run's state
    assert store.run("r").state == "RUNNING"
    second = store.attempts("r")[1]
    assert (second.resumed_from, second.lr_scale, second.skipped_batches) == ("checkpoints/step-100", 0.5, "100-300")


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    make_run(store, "r")
    with pytest.raises(sqlite3.IntegrityError):
        make_run(store, "r")  # same id: the whole create (run + attempt + event) rolls back
    assert len(store.attempts("r")) == 1 and len(store.events("r")) == 1


def test_unknown_run_suggests_close_ids_and_prefixes_resolve(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    make_run(store, "llava-20261123-abcd")
    assert store.run("llava-2026").id == "llava-20261123-abcd"
    with pytest.raises(NotFoundError, match="Did you mean 'llava-20261123-abcd'"):
        store.run("llava-20261123-abce")


def test_two_resumes_at_once_cannot_both_start_an_attempt(tmp_path: Path) -> None:
    """The check (latest attempt) and the insert happen in one transaction: of two processes resuming
    after attempt 1, exactly one gets attempt 2."""

    store = Store(tmp_path / "db")
    make_run(store, "r")
    store.update_attempt("r", 1, job_id="1", state="FAILED")
    other = Store(tmp_path / "db")
    assert store.add_attempt("r", after=1) == 2
    with pytest.raises(ValidationError, match="attempt 2 was started meanwhile"):
        other.add_attempt("r", after=1)
    assert [a.number for a in store.attempts("r")] == [1, 2]


def test_two_runs_cannot_share_a_run_directory(tmp_path: Path) -> None:
    from hpcai.errors import ValidationError

    store = Store(tmp_path / "hpcai.db")
    store.create_run(Run("a", "probe", "local", None, "/tmp/shared", {}, time.time(), "SUBMITTING"))
    with pytest.raises(ValidationError, match="run directory of run a"):
        store.create_run(Run("b", "probe", "local", None, "/tmp/shared", {}, time.time(), "SUBMITTING"))
    store.create_run(Run("c", "probe", "other", None, "/tmp/shared", {}, time.time(), "SUBMITTING"))  # another host
    assert {r.id for r in store.runs()} == {"a", "c"}


def test_a_store_from_the_previous_version_is_migrated_in_place(tmp_path: Path) -> None:
    from hpcai.store import schema as store_module

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(store_module.SCHEMA)
    db.execute("INSERT INTO runs VALUES ('old', 'llava', 'local', NULL, '/tmp/old', '{}', 1.0, 'COMPLETED')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    migrated = Store(path)
    assert migrated.run("old").last_step is None
    migrated.record_progress("old", 60, 1.25)
    assert (migrated.run("old").last_step, migrated.run("old").last_loss) == (60, 1.25)
    assert migrated.budget_readings("leonardo-booster", "x") == []  # the budget history's table came with it


def test_list_shows_the_last_step_and_loss_that_status_saw(probe_workload: str) -> None:
    import json

    from tests.conftest import run_cli
    from tests.helpers import submit_probe, wait_terminal

    store = Store()
    run_id = submit_probe(store, "local", lines=3)
    view = wait_terminal(store, run_id, timeout=60)
    assert view.step == 3
    listed = json.loads(run_cli("list", "--json").stdout)
    assert [(r["step"], r["loss"]) for r in listed] == [(3, view.loss)]


def test_last_names_the_newest_run_and_reasons_are_stored_visible(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(NotFoundError, match="no runs yet"):
        store.run("last")
    make_run(store, "older-1")
    time.sleep(0.01)
    make_run(store, "newer-2")
    assert store.run("last").id == "newer-2"
    store.update_attempt("newer-2", 1, reason="\x1b[2Jplanted\x07")
    assert store.attempts("newer-2")[0].reason == "\\x1b[2Jplanted\\x07"


def test_a_move_keeps_where_each_attempt_ran_and_only_one_move_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.create_run(Run("m", "clip", "leonardo-booster", None, "/scratch/m", {}, time.time(), "SUBMITTING"))
    store.update_attempt("m", 1, job_id="17", state="FAILED")
    number = store.move_run("m", cluster="jupiter", run_dir="/p/m", spec={"nodes": 2}, resumed_from="step-00000004",
                            after=1)  # fmt: skip
    run = store.run("m")
    assert number == 2 and (run.cluster, run.run_dir, run.spec, run.state) == ("jupiter", "/p/m", {"nodes": 2},
                                                                                "SUBMITTING")  # fmt: skip
    first, second = store.attempts("m")
    assert first.home(run) == ("leonardo-booster", "/scratch/m") and first.job_key() == "leonardo-booster:17"
    assert second.home(run) == ("jupiter", "/p/m") and second.resumed_from == "step-00000004"
    with pytest.raises(ValidationError, match="started meanwhile"):  # a second move planned from attempt 1
        store.move_run("m", cluster="local", run_dir="/x", spec={}, resumed_from="step-00000004", after=1)
    assert store.run("m").cluster == "jupiter" and len(store.attempts("m")) == 2
