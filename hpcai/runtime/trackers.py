"""The experiment trackers a run logs to (TensorBoard, Weights & Biases offline), their folders in the run
folder, and the scalars and config they get."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from hpcai.rundir.contract import TRACKER_DIRS
from hpcai.runtime.train_config import TrainConfig


def trackers(config: TrainConfig) -> list[str]:
    """The accelerate trackers of this run; wandb is kept offline (compute nodes have no internet:
    `wandb sync` from the login node uploads the run later)."""
    import importlib.util

    if config.tracker == "none":
        return []
    if importlib.util.find_spec(config.tracker) is None:
        if config.tracker == "tensorboard":  # the default: metrics.jsonl has everything anyway
            print("hpcai: tensorboard is not installed in the job's environment: no event files", flush=True)
            return []
        raise SystemExit(f"--tracker {config.tracker}: the job's Python has no '{config.tracker}' package; "
                         f"install it in the job environment, or set tracker=tensorboard")  # fmt: skip
    if config.tracker == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(config.run_dir / TRACKER_DIRS["wandb"]))
        (config.run_dir / TRACKER_DIRS["wandb"]).mkdir(parents=True, exist_ok=True)
    return [config.tracker]


def tracked_config(config: TrainConfig) -> dict[str, Any]:
    """The run's settings as trackers take them (plain scalars)."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
    values["run_dir"] = str(config.run_dir)
    return values


def scalars(**values: float | None) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
