"""Moving a run to another cluster (issue 32, item 1): a CLIP run that stops on `local` (2 processes) goes on on
the test Slurm with 1 process and comes back to `local`, its losses equal to an uninterrupted run's at the same
global batch, one lineage in `status`, goodput and `plot`; and everything a move must refuse, refused before a
byte moves (exit 2) -- or, for a checkpoint damaged on the way, before anything is recorded."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from hpcai.backends.session import Backend, Session
from hpcai.errors import EnvironmentFailure
from hpcai.store.db import Run, Store
from tests.backends.staging.test_carry import FlipsAByteOnTheWay
from tests.conftest import run_cli
from tests.helpers import wait_terminal

# A CLIP run of 12 steps with a checkpoint every 4; the spike guard gives up at once on the injected NaN, so
# an attempt stops exactly after a known step (inject_nan_at), with the checkpoint before it complete.
COMMON = ["--set", "max_steps=12", "--set", "checkpoint_every=4", "--set", "samples=64", "--set", "warmup_steps=2",
          "--set", "per_device_batch_size=4", "--set", "max_rollbacks=0"]  # fmt: skip


def _losses(run_dir: str) -> dict[int, float]:
    """Each step's loss as the run kept it: the last record of each step (a re-run step's later one)."""
    kept: dict[int, float] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kept[record["step"]] = record["loss"]
    return kept


def test_a_run_moves_to_the_test_slurm_on_fewer_processes_and_back(slurm_cluster: str) -> None:
    pytest.importorskip("torch", reason="the training stack is the `train` extra")
    store = Store()
    whole = run_cli("submit", "clip", "--cluster", "local", "--run-id", "whole", *COMMON, "--json", timeout=120)
    assert whole.returncode == 0, whole.stderr
    assert wait_terminal(store, "whole", timeout=240).state == "COMPLETED"
    first = run_cli("submit", "clip", "--cluster", "local", "--run-id", "moved", *COMMON, "--set", "inject_nan_at=6",
                    "--json", timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert wait_terminal(store, "moved", timeout=240).state == "FAILED"  # gave up at step 6; step-4 complete

    there = run_cli("move", "moved", "--to", slurm_cluster, "-N", "1", "--set", "inject_nan_at=10", "--json",
                    timeout=180)  # fmt: skip
    assert there.returncode == 0, there.stderr
    result = json.loads(there.stdout)
    assert (result["cluster"], result["checkpoint"], result["attempt"]) == (slurm_cluster, "step-00000004", 2)
    moved = store.run("moved")
    assert moved.cluster == slurm_cluster and moved.run_dir == result["run_dir"] != store.attempts("moved")[0].run_dir
    assert moved.spec["nodes"] * moved.spec["processes_per_node"] == 1
    assert moved.spec["parameters"]["per_device_batch_size"] == 8  # 2 x 4 = 1 x 8: the global batch is kept
    assert wait_terminal(store, "moved", timeout=300).state == "FAILED"  # gave up at step 10; step-8 complete

    back = run_cli("move", "moved", "--to", "local", "--set", "inject_nan_at=0", "--json", timeout=180)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["checkpoint"] == "step-00000008"
    assert store.run("moved").spec["parameters"]["per_device_batch_size"] == 4
    final = wait_terminal(store, "moved", timeout=240)
    assert final.state == "COMPLETED", final

    # The losses of the moved run equal the uninterrupted run's at every step (2 -> 1 -> 2 processes).
    expected, got = _losses(store.run("whole").run_dir), _losses(store.run("moved").run_dir)
    assert sorted(got) == list(range(1, 13))
    for step, loss in expected.items():
        assert math.isclose(got[step], loss, rel_tol=1e-4), (step, got[step], loss)

    # One lineage: where each attempt ran, the goodput account over both clusters, one curve.
    detail = json.loads(run_cli("status", "moved", "--json").stdout)
    assert [a["cluster"] for a in detail["attempts"]] == ["local", slurm_cluster, "local"]
    assert [a["resumed_from"] for a in detail["attempts"]] == [None, "step-00000004", "step-00000008"]
    goodput = detail["goodput"]
    assert len(goodput["attempts"]) == 3 and goodput["steps_kept"] == 12
    assert [a["job_id"].split(":")[0] for a in goodput["attempts"][:2]] == ["local", slurm_cluster]
    assert all(a["queue_wait_s"] is not None for a in goodput["attempts"])  # each job's submission time found
    shown = run_cli("status", "moved")
    assert shown.returncode == 0 and slurm_cluster in shown.stdout
    curve = json.loads(run_cli("plot", "moved", "--json").stdout)
    assert sorted({s for a in curve["attempts"] for s in a["steps"]}) == list(range(1, 13))
    # Each attempt's log is read where it ran.
    log = run_cli("logs", "moved", "--attempt", "2")
    assert log.returncode == 0 and "resumed from" in log.stdout and "step-00000004" in log.stdout


# --- refused before anything moves ---------------------------------------------------------------------


def _recorded(run_id: str, workload: str, cluster: str, sets: list[str], *, nodes: int | None = None,
              marker: dict[str, object] | None = None) -> Run:  # fmt: skip
    """A run as `submit` records it (its plan, resolved here), ended FAILED, with a complete checkpoint at step
    4 whose marker is `marker` (default: this workload's), unless `marker` is {}: then none."""
    from hpcai.flows.plan import plan_submit
    from hpcai.spec.jobspec import Overrides

    job = plan_submit(workload, cluster, Overrides(set=tuple(sets), nodes=nodes, run_id=run_id)).rendered.job
    store = Store()
    run = Run(run_id, workload, cluster, job.stage, job.run_dir, job.model_dump(), time.time(), "SUBMITTING")
    store.create_run(run)
    store.update_attempt(run_id, 1, job_id="L0000ab", state="FAILED")
    chosen = {"step": 4, "world_size": 2, "workload": workload} if marker is None else marker
    if chosen:
        folder = Path(job.run_dir) / "checkpoints" / "step-00000004"
        (folder / "shards").mkdir(parents=True)
        (folder / "shards" / "__0_0.distcp").write_bytes(b"x" * 5000)
        (folder / "COMPLETE.json").write_text(json.dumps(chosen))
    return store.run(run_id)


def _refused(*args: str) -> str:
    result = run_cli("move", *args, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_the_same_cluster_no_checkpoint_or_an_unknown_one_is_refused(isolated_hpcai: Path) -> None:
    _recorded("r1", "clip", "local", ["max_steps=8"])
    assert "is on local already" in _refused("r1", "--to", "local")
    assert "not a complete checkpoint of run r1. Complete ones: step-00000004" in _refused(
        "r1", "--to", "local-slurm", "--checkpoint", "step-00000008"
    )
    _recorded("r2", "clip", "local", ["max_steps=8"], marker={})
    assert "has no complete checkpoint on local" in _refused("r2", "--to", "local-slurm")
    assert not (isolated_hpcai / "state" / "runs" / "r1.2").exists()


def test_a_checkpoint_another_workload_wrote_is_refused(isolated_hpcai: Path) -> None:
    _recorded("r3", "clip", "local", ["max_steps=8"], marker={"step": 4, "world_size": 2, "workload": "llava"})
    assert "written by workload 'llava', not by run r3's 'clip'" in _refused("r3", "--to", "local-slurm")
    _recorded("r4", "clip", "local", ["max_steps=8"], marker={"step": 5})  # a marker naming another step
    assert "not the marker of step 4" in _refused("r4", "--to", "local-slurm")


def test_a_global_batch_the_new_processes_cannot_share_is_refused(isolated_hpcai: Path) -> None:
    _recorded("r5", "clip", "local-slurm", ["per_device_batch_size=3"], nodes=1)  # 1 process x 3
    said = _refused("r5", "--to", "local")  # 2 processes
    assert "global batch is 3 samples per step, which 2 processes on local cannot share" in said
    assert "--set per_device_batch_size=N" in said


def test_a_job_the_new_gpus_cannot_hold_is_refused(isolated_hpcai: Path) -> None:
    _recorded("r6", "llava", "local", ["preset=clip-l336-vicuna-7b", "stage=finetune", "per_device_batch_size=2"])
    said = _refused("r6", "--to", "leonardo-booster", "--account", "x", "-N", "1", "--gpus-per-node", "1")
    assert "memory: the job needs about" in said and "Nothing was queued" in said


def test_a_dry_run_plans_the_same_global_batch_and_writes_nothing(isolated_hpcai: Path) -> None:
    _recorded("r7", "clip", "local", ["per_device_batch_size=4"])
    shown = run_cli("move", "r7", "--to", "local-slurm", "-N", "1", "--dry-run", "--json", timeout=120)
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert (plan["global_batch"], plan["per_device_batch_size"], plan["to"]["processes"]) == (8, 8, 1)
    assert plan["to"]["run_dir"].endswith("/runs/r7.2")  # runs/r7 is the run's folder on local: taken
    assert "HPCAI_WORKLOAD=clip" in plan["plan"]["script"]
    assert not Path(plan["to"]["run_dir"]).exists() and Store().run("r7").cluster == "local"


def test_a_checkpoint_damaged_on_the_way_is_refused_and_the_run_stays(isolated_hpcai: Path) -> None:
    from hpcai.flows.runs.move import MoveOptions, move_run, plan_move

    _recorded("r8", "clip", "local", ["per_device_batch_size=4"])
    store = Store()
    with Session() as session:
        real = session.get("local-slurm")
        session._backends["local-slurm"] = Backend(real.profile, FlipsAByteOnTheWay(), real.scheduler)
        plan = plan_move(store, "r8", MoveOptions(to="local-slurm", nodes=1))
        with pytest.raises(EnvironmentFailure, match="arrived on local-slurm different from the source"):
            move_run(store, plan, show_progress=False, preflight=False)
    run = store.run("r8")
    assert run.cluster == "local" and len(store.attempts("r8")) == 1  # nothing recorded
    assert not Path(plan.submit.rendered.job.run_dir).exists()  # nothing left at the target


def test_your_own_programs_checkpoint_folder_is_found_and_a_file_or_a_missing_folder_refused(
    isolated_hpcai: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of `submit ./train.py` records its program; `move` plans it again from there and picks the
    newest match of its --checkpoint-pattern (by the number in the name), a folder; a file checkpoint and a
    program folder no longer on this machine are refused (exit 2)."""
    from hpcai.flows.plan import plan_submit
    from hpcai.flows.runs.submission import record_run
    from hpcai.spec.jobspec import Overrides
    from hpcai.spec.userapp import program_workload

    program = tmp_path / "prog"
    program.mkdir()
    (program / "train.py").write_text("print('step 1 loss 1.0')\n")
    monkeypatch.chdir(program)
    workload = program_workload("./train.py", ["--out", "out"], module=None, launcher="python",
                                accelerate_config=None, resume_args="--resume {checkpoint}",
                                checkpoint_pattern="out/ckpt-*", metrics_pattern=None, stop_signal=None,
                                stop_grace_s=None, hang_timeout_s=None)  # fmt: skip
    assert workload is not None
    rendered = plan_submit(workload, "local", Overrides(run_id="mine")).rendered
    with Session() as session:
        run = record_run(rendered, Store(), session.get("local"))
    Store().update_attempt("mine", 1, job_id="L0000cd", state="FAILED")
    assert run.spec["program"]["directory"] == str(program)
    out = Path(run.run_dir) / "out"
    (out / "ckpt-9").mkdir(parents=True)
    (out / "ckpt-9" / "state.pt").write_bytes(b"x")
    (out / "ckpt-10").mkdir()
    (out / "ckpt-10" / "state.pt").write_bytes(b"y")
    shown = run_cli("move", "mine", "--to", "local-slurm", "--dry-run", "--json", timeout=120)
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["checkpoint"].endswith("/out/ckpt-10") and plan["step"] == 10  # 10 after 9, not by text
    (out / "ckpt-11").write_bytes(b"one file")
    assert "is a file (or a link), not a folder" in _refused("mine", "--to", "local-slurm")
    (out / "ckpt-11").unlink()
    assert "matches none of out/ckpt-*" in _refused("mine", "--to", "local-slurm", "--checkpoint", "ckpt-3")
    import shutil

    shutil.rmtree(program)
    assert "is not on this machine" in _refused("mine", "--to", "local-slurm")
