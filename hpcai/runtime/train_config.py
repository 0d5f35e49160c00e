"""What a training run is asked to do: steps, batch, optimiser, checkpointing, the spike guard, trackers and
the test hooks; read from the workload's arguments (hpcai.train.args)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcai.monitor.policy import RollbackPolicy


@dataclass(frozen=True)
class TrainConfig:
    run_dir: Path
    max_steps: int
    per_device_batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    checkpoint_every: int
    keep_checkpoints: int
    seed: int
    metrics_file: str = "metrics.jsonl"
    checkpoint_dir: str = "checkpoints"
    # The learning rate relative to the configured one for a fresh start (HPCAI_LR_SCALE); a resume takes
    # the scale from its checkpoint, a rollback from its decision.
    lr_scale: float = 1.0
    # The in-job spike guard's policy; None switches the guard off.
    policy: RollbackPolicy | None = None
    # The detector's report floor (DetectorConfig.report_floor): the workload's spike_floor parameter.
    spike_floor: float = 0.2
    # The run fails when more than this fraction of the samples seen were left out (missing or unreadable
    # images, malformed conversations): a data set that mostly does not load is a fault, not noise.
    max_left_out: float = 0.02
    # Test hook, a workload option: at this step, while the LR is unscaled, multiply the trainable weights
    # by `inject_spike_scale` -- an update gone wrong that a rollback with a lower LR gets past.
    inject_spike_at: int = 0
    inject_spike_scale: float = 1.0
    # Where the metrics also go (accelerate trackers): "tensorboard" (event files in <run dir>/tensorboard),
    # "wandb" (offline, in <run dir>/wandb), "none".
    tracker: str = "tensorboard"
    # DataLoader workers per rank that make batches ahead of the step (0: inline, on the critical path).
    data_workers: int = 0
    # Steps between host syncs: the loss, grad norm and stop flag are read back (one collective), metrics
    # written and the spike guard consulted every `sync_every` steps and before every checkpoint; the
    # GPU runs ahead in between. 0: automatic (10 on a GPU; 1 on a CPU, which has no queue to run ahead).
    sync_every: int = 0
    # Test hook, a workload option: after this step every rank stops progressing (once per run).
    inject_hang_at: int = 0
    # Test hook, a workload option: after this step the last node dies -- its node task (the node agent)
    # and every process of its launch killed, as when a node fails (once per run).
    inject_crash_at: int = 0
    # Test hook, a workload option: the loss at this step is NaN while the LR is unscaled -- every time
    # (a fault in the data: a rerun check reproduces it), or only the first time with `inject_nan_transient`
    # (a transient hardware fault: the rerun does not).
    inject_nan_at: int = 0
    inject_nan_transient: bool = False
