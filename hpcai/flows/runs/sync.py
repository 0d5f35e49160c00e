"""`hpcai sync RUN`: upload a run's offline Weights & Biases runs from the login node.

Compute nodes have no internet, so the job logs to wandb in offline mode (`<run dir>/wandb/wandb/
offline-run-*`, one per attempt); the login node can reach wandb.ai. `wandb sync` itself does the upload
and marks what it uploaded (a `.synced` file beside each run's `.wandb` file), so a second sync sends only
new attempts.
"""

from __future__ import annotations

from typing import Any

from hpcai.backends.session import Session
from hpcai.errors import EnvironmentFailure, HpcaiError
from hpcai.rundir.contract import TRACKER_DIRS
from hpcai.rundir.layout import RunDir
from hpcai.store.db import Run, Store

WANDB_DIR = TRACKER_DIRS["wandb"]


def offline_runs(transport: Any, run: Run) -> list[tuple[str, bool]]:
    """The run's offline wandb runs: (folder, already synced), oldest first."""
    root = RunDir(run.run_dir).path(f"{WANDB_DIR}/wandb")
    found = []
    for name in sorted(transport.list_dir(root)):
        if name.startswith("offline-run-"):
            folder = f"{root}/{name}"
            files = transport.list_dir(folder)
            found.append((folder, any(f.endswith(".wandb.synced") for f in files)))
    return found


def sync_python(run: Run, python: str | None) -> str:
    """The interpreter whose wandb uploads: --python, else the job's own when it is a plain interpreter on
    the shared filesystem (the environment hpcai built, or the user's), else python3 of the login node."""
    if python:
        return python
    environment = run.spec.get("environment") or {}
    if environment.get("image"):  # inside a container: not runnable as a plain path on the login node
        return "python3"
    return str(run.spec.get("python") or "python3")


def sync_run(store: Store, run_id: str, *, python: str | None = None, timeout: float = 1800) -> dict[str, Any]:
    run = store.run(run_id)
    transport = Session.current().get(run.cluster).transport
    runs = offline_runs(transport, run)
    if not runs:
        raise HpcaiError(
            f"run {run.id}: no offline Weights & Biases run in {run.run_dir}/{WANDB_DIR}. Only runs submitted with "
            "--set tracker=wandb log there (and only once their job has started)."
        )
    pending = [folder for folder, synced in runs if not synced]
    interpreter = sync_python(run, python)
    result: dict[str, Any] = {
        "run_id": run.id,
        "python": interpreter,
        "offline_runs": [folder for folder, _ in runs],
        "synced": [],
        "already_synced": [folder for folder, synced in runs if synced],
    }
    if not pending:
        return result
    done = transport.run([interpreter, "-m", "wandb", "sync", "--include-offline", *pending], timeout=timeout)
    if not done.ok:
        said = (done.stderr.strip() or done.stdout.strip())[-800:]
        if "No module named wandb" in said or done.returncode == 127:
            last = said.splitlines()[-1] if said else "not found"
            raise EnvironmentFailure(
                f"run {run.id}: {interpreter} on the login node has no wandb ({last}). "
                "Install it there (pip install --user wandb), or name an interpreter that has it with --python."
            )
        raise EnvironmentFailure(
            f"run {run.id}: `wandb sync` failed (exit {done.returncode}): {said}\nCheck that the login node reaches "
            "wandb.ai and that you are logged in there (wandb login, or WANDB_API_KEY in your login environment); "
            "then run `hpcai sync` again: what was uploaded is not sent twice."
        )
    result["synced"] = pending
    store.add_event(run.id, "sync", f"uploaded {len(pending)} offline wandb run(s)")
    return result
