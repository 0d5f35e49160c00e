"""Run a workload exactly as the rendered `local` job script does: the same per-node command, 2 CPU
processes under `accelerate launch` with FSDP2 over gloo."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpcai.render.script import _node_command
from hpcai.shellquote import join
from hpcai.spec.jobspec import Overrides, resolve_jobspec
from hpcai.spec.profiles import load_profile
from hpcai.spec.userconfig import ClusterSettings
from hpcai.spec.workloads import load_workload

pytest.importorskip("accelerate", reason="the training stack is the `train` extra: pip install -e '.[train]'")


OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def launch(
    workload: str, run_dir: Path, *, params: dict[str, object], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    profile = load_profile("local")
    spec = load_workload(workload)
    job = resolve_jobspec(
        cluster="local",
        profile=profile,
        workload=spec,
        overrides=Overrides(set=tuple(f"{k}={v}" for k, v in params.items()), run_id="t", run_dir=str(run_dir)),
        settings=ClusterSettings(),
        state_dir=run_dir.parent,
    )
    command = join(_node_command(job, profile, spec))
    run_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "HPCAI_RUN_DIR": str(run_dir),
        "HPCAI_MACHINE_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(random.randint(20000, 31999)),  # below the ephemeral range: no outgoing connection has it
        "ACCELERATE_USE_CPU": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **(env or {}),
    }
    return subprocess.run(["bash", "-c", command], env=full_env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in metrics(run_dir)]
