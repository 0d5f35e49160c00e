"""Faults the tests inject through a workload's `inject_*` parameters (a NaN, a corrupted model, a hang, a
crashed node), each firing once per run where it must, so recovery can be tested end to end."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from hpcai.runtime.train_config import TrainConfig
from hpcai.runtime.watchdog import HANGS_DIR


def hung_before(run_dir: Path) -> bool:
    """The inject_hang_at test hook fires once per run: not again after the recovery it caused."""
    folder = run_dir / HANGS_DIR
    return folder.is_dir() and any(folder.glob("*.json"))


def nan_fires(config: TrainConfig) -> bool:
    """inject_nan_at: every time, or (transient) only the first time in the run."""
    if not config.inject_nan_transient:
        return True
    marker = config.run_dir / ".injected-nan"
    if marker.exists():
        return False
    # Every rank decides before any rank writes: they must agree on the (all-reduced) loss.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if int(os.environ.get("RANK", "0")) == 0:
        marker.write_text("1\n")
    return True


def crash_last_node(run_dir: Path, step: int) -> None:
    """Test hook (inject_crash_at): on the last node, its first rank kills the node agent (the srun task)
    and the node's whole launch, once per run, as a node failure would."""
    import signal

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    node = int(os.environ.get("RANK", "0")) // max(1, local_world)
    last = int(os.environ.get("WORLD_SIZE", "1")) // max(1, local_world) - 1
    marker = run_dir / ".injected-crash"
    if node != last or int(os.environ.get("LOCAL_RANK", "0")) != 0 or marker.exists():
        return
    marker.write_text(f"{step}\n")
    print(f"hpcai: inject_crash_at: node {node} dies after step {step}", flush=True)
    agent = os.environ.get("HPCAI_NODE_AGENT_PID")
    if agent:
        os.kill(int(agent), signal.SIGKILL)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def hang_forever(accelerator: Any, step: int) -> None:
    """Test hook (inject_hang_at): every rank stops making progress, as in a stuck collective."""
    accelerator.print(f"hpcai: inject_hang_at: every rank stops progressing after step {step}")
    while True:
        time.sleep(3600)


@torch.no_grad()
def corrupt(model: torch.nn.Module, scale: float) -> None:
    for param in model.parameters():
        if param.requires_grad:
            param.mul_(scale)
