"""The training loop shared by the workloads: AdamW on the trainable parameters only, warmup + cosine,
gradient clipping, metrics per step, atomic checkpoints, exact resume, and a clean stop (exit 85) when
the job is asked to checkpoint before walltime."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from hpcai.exitcodes import EXIT_REQUEUE, REQUEUE_MARKER
from hpcai.runtime.checkpoint import Checkpoints
from hpcai.runtime.data_order import BatchOrder
from hpcai.runtime.distributed import assert_sharded, make_accelerator
from hpcai.runtime.metrics_log import MetricsLog
from hpcai.runtime.stop import StopRequest


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
    # Set by a rollback (HPCAI_LR_SCALE): the learning rate of this attempt relative to the configured one.
    lr_scale: float = 1.0


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    z_loss: torch.Tensor | None = None
    tokens: int | None = None


class Task(Protocol):
    """What a workload supplies: a model (built after seeding), its layer classes for FSDP, data, a loss."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def layer_classes(self) -> list[str]: ...

    @property
    def num_samples(self) -> int: ...

    def batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]: ...

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput: ...


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def lr_scale_from_env() -> float:
    return float(os.environ.get("HPCAI_LR_SCALE", "1.0"))


def train(make_task: Callable[[], Task], config: TrainConfig) -> int:
    """Run (or resume) training; returns the process exit code (0 done, EXIT_REQUEUE stopped early)."""
    from accelerate.utils import set_seed

    set_seed(config.seed)
    task = make_task()
    accelerator = make_accelerator(task.layer_classes)
    world, rank = accelerator.num_processes, accelerator.process_index
    model = task.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr * config.lr_scale, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    assert_sharded(model, world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.max_steps))

    checkpoints = Checkpoints(
        config.run_dir / config.checkpoint_dir,
        keep=config.keep_checkpoints,
        rank=rank,
        world_size=world,
        barrier=accelerator.wait_for_everyone,
    )
    start = 0
    latest = checkpoints.latest()
    if latest is not None:
        state = checkpoints.load(latest, model, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        accelerator.print(f"hpcai: resumed from {latest} at step {start}")
    order = BatchOrder(task.num_samples, config.per_device_batch_size * world, world, rank, config.seed)
    stop = StopRequest(config.run_dir)
    metrics = MetricsLog(config.run_dir / config.metrics_file, enabled=accelerator.is_main_process)
    device = accelerator.device
    exit_code = 0
    try:
        for step in range(start, config.max_steps):
            began = time.perf_counter()
            model.train()
            batch = task.batch(order.indices(step), device)
            out = task.step(model, batch, accelerator)
            accelerator.backward(out.loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            loss = accelerator.reduce(out.loss.detach(), reduction="mean").item()
            z_loss = (
                accelerator.reduce(out.z_loss.detach(), reduction="mean").item() if out.z_loss is not None else None
            )
            elapsed = time.perf_counter() - began
            tokens = out.tokens * world if out.tokens is not None else None
            metrics.write(
                step=done,
                loss=loss,
                grad_norm=float(grad_norm),
                lr=scheduler.get_last_lr()[0],
                samples_per_s=config.per_device_batch_size * world / elapsed,
                tokens_per_s=tokens / elapsed if tokens is not None else None,
                z_loss=z_loss,
                peak_memory_gb=_peak_memory_gb(),
                attempt_step=done - start,
            )
            stop_now = _agree(accelerator, stop.requested())
            if done % config.checkpoint_every == 0 or done == config.max_steps or stop_now:
                trainer_state = {"step": done, "scheduler": scheduler.state_dict(), "lr_scale": config.lr_scale}
                path = checkpoints.save(done, model, optimizer, trainer_state)
                accelerator.print(f"hpcai: checkpoint {path.name}")
            if stop_now and done < config.max_steps:
                if accelerator.is_main_process:
                    (config.run_dir / REQUEUE_MARKER).write_text(f"{done}\n")
                accelerator.print(f"hpcai: stop requested; checkpointed at step {done}, exiting {EXIT_REQUEUE}")
                exit_code = EXIT_REQUEUE
                break
    finally:
        metrics.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return exit_code


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def _agree(accelerator: Any, flag: bool) -> bool:
    """True on every rank when any rank saw the stop request, so all ranks stop at the same step."""
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)
