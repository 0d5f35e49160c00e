"""A scheduler time-out on a submission is never retried blindly: an sbatch that queued the job and then
reported "Socket timed out" was retried by the scheduler layer (five jobs for one submit, none tracked).
Now: sbatch runs once, the job it queued is found by its run directory and recorded; when none was
queued the run stays SUBMITTING and nothing is submitted again."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcai.backends.transport.base import OutcomeUnknown
from hpcai.flows.resolve import prepare_job
from hpcai.flows.runs.submission import submit_run
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Store
from tests.helpers import wait_terminal

TIMEOUT = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"


def _fake_sbatch(folder: Path, *, queue_it: bool) -> Path:
    """`sbatch` that counts its calls, (optionally) queues the job with the real sbatch, then times out."""
    real = shutil.which("sbatch")
    assert real is not None
    calls = folder / "calls"
    script = folder / "sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"echo call >> {calls}\n"
        + (f'"{real}" "$@" > /dev/null\n' if queue_it else "")
        + f"echo '{TIMEOUT}' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    return calls


def _jobs_in(run_dir: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    return [line.split("|")[0] for line in out.splitlines() if line.endswith(f"|{run_dir}")]


@pytest.mark.parametrize("queue_it", [True, False])
def test_a_timed_out_sbatch_runs_once_and_its_job_is_found(
    slurm_cluster: str, probe_workload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue_it: bool
) -> None:
    calls = _fake_sbatch(tmp_path, queue_it=queue_it)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    store = Store()
    run_id = f"unclear-{queue_it}"
    rendered = prepare_job("probe", slurm_cluster, Overrides(set=("lines=4", "interval=0.2"), run_id=run_id))
    if queue_it:
        result = submit_run(rendered, store)
        assert calls.read_text().count("call") == 1  # never repeated
        assert _jobs_in(rendered.job.run_dir) == [result["job_id"]]
        assert any(e.kind == "submit-unclear" for e in store.events(run_id))
        monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
        assert wait_terminal(store, run_id, timeout=180).state == "COMPLETED"
    else:
        with pytest.raises(OutcomeUnknown, match="nothing is submitted again"):
            submit_run(rendered, store)
        assert calls.read_text().count("call") == 1
        assert _jobs_in(rendered.job.run_dir) == []
        (attempt,) = store.attempts(run_id)
        assert attempt.state == "SUBMITTING" and attempt.job_id is None


def test_the_job_finds_a_next_attempt_that_a_failed_sbatch_queued(slurm_cluster: str, probe_workload: str) -> None:
    """The job's own resubmission: when its sbatch reports failure, `hpcai_queued_next` (in the job script)
    looks for a job of the user in the run directory other than itself before saying it submitted none."""
    import re

    store = Store()
    rendered = prepare_job("probe", slurm_cluster, Overrides(set=("lines=60", "interval=0.25"), run_id="queued-next"))
    job_id = submit_run(rendered, store)["job_id"]
    function = re.search(r"^hpcai_queued_next\(\) \{\n.*?^\}\n", rendered.script, re.S | re.M)
    assert function is not None
    env = {**os.environ, "HPCAI_RUN_DIR": rendered.job.run_dir}
    other = subprocess.run(["bash", "-c", function.group(0) + "hpcai_queued_next"], capture_output=True, text=True,
                           env={**env, "HPCAI_JOB_ID": "999999"}, timeout=60)  # fmt: skip
    assert other.stdout.strip() == job_id, other.stderr
    itself = subprocess.run(["bash", "-c", function.group(0) + "hpcai_queued_next"], capture_output=True, text=True,
                            env={**env, "HPCAI_JOB_ID": job_id}, timeout=60)  # fmt: skip
    assert itself.stdout.strip() == ""
    subprocess.run(["scancel", job_id], check=False)
