"""The training loop shared by the workloads: AdamW on the trainable parameters only, warmup + cosine,
gradient clipping, metrics per step, atomic checkpoints, exact resume, and a clean stop (exit 85) when
the job is asked to checkpoint before walltime."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from hpcai.monitor.spikes import SpikeDetector
from hpcai.rundir.contract import (
    EXIT_GAVE_UP,
    EXIT_REQUEUE,
    EXIT_ROLLBACK,
    LATEST_FILE,
    REQUEUE_MARKER,
    ROLLBACK_FILE,
    TIMELINE_LOG,
    TRACKER_DIRS,
)
from hpcai.runtime.affinity import bind_to_gpu_cpus
from hpcai.runtime.checkpoint import Checkpoints, step_of
from hpcai.runtime.data_order import BatchOrder
from hpcai.runtime.distributed import assert_sharded, make_accelerator
from hpcai.runtime.failure import record_failure
from hpcai.runtime.faults import corrupt, crash_last_node, hang_forever, hung_before, nan_fires
from hpcai.runtime.flops import mfu, peak_flops
from hpcai.runtime.guard import SpikeGuard, rollbacks_so_far
from hpcai.runtime.heartbeat import Heartbeat
from hpcai.runtime.loader import LEFT_OUT, step_batches, to_device
from hpcai.runtime.metrics_log import MetricsLog, Timeline
from hpcai.runtime.stop import StopRequest
from hpcai.runtime.trackers import scalars, tracked_config, trackers
from hpcai.runtime.train_config import TrainConfig


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    z_loss: torch.Tensor | None = None


class Task(Protocol):
    """What a workload supplies: a model (built after seeding), its layer classes for FSDP, data, a loss."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def layer_classes(self) -> list[str]: ...

    @property
    def num_samples(self) -> int: ...

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The CPU tensors of one rank's batch (run in a DataLoader worker: no CUDA, no collectives)."""
        ...

    def work(self, batch: dict[str, torch.Tensor]) -> tuple[int, float]:
        """Every token this rank's step processes (padding excluded, image tokens included) and its model
        FLOPs (hpcai.runtime.flops), read from the CPU batch: tokens/s and MFU count what the model computed,
        and counting costs no device sync."""
        ...

    def step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], accelerator: Any) -> StepOutput: ...


@runtime_checkable
class Exports(Protocol):
    """A task that can leave its trained model as a Hugging Face folder when the run completes."""

    def export(self, state_dict: dict[str, Any], target: Path) -> None: ...


MODEL_DIR = "model"


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters in two groups: weight decay on matrices only, none on gains, biases and
    temperatures (open_clip's and LLaVA's exclusion; decaying a norm's gain or a logit scale hurts)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_scale_from_env() -> float:
    return float(os.environ.get("HPCAI_LR_SCALE", "1.0"))


def train(make_task: Callable[[], Task], config: TrainConfig) -> int:
    """Run (or resume) training; returns the process exit code (0 done, EXIT_REQUEUE stopped early). A rank
    that dies of an exception says why in the run directory (`hpcai status` shows it)."""
    try:
        return _train(make_task, config)
    except SystemExit as exc:  # a workload's own refusal (bad data, a model folder that does not fit)
        if exc.code not in (None, 0):
            record_failure(config.run_dir, exc)
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # not only Exception: torch's CheckpointException (a load that fails) is a
        record_failure(config.run_dir, exc)  # BaseException, and it left no account of why the job ended
        raise


def progress_every(max_steps: int) -> int:
    """How often the job's output gets a progress line: about 20 lines per run, at most every 100 steps."""
    return max(1, min(100, max_steps // 20))


def _train(make_task: Callable[[], Task], config: TrainConfig) -> int:
    from accelerate.utils import set_seed

    bound = bind_to_gpu_cpus()
    # Samples are tokenized in forked DataLoader workers: the Rust tokenizer's own threads must be off.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    heartbeat = Heartbeat(config.run_dir, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    heartbeat.beat("setup")
    set_seed(config.seed)
    task = make_task()
    log_with = trackers(config)
    accelerator = make_accelerator(task.layer_classes, log_with, config.run_dir / TRACKER_DIRS.get(config.tracker, ""))
    world, rank = accelerator.num_processes, accelerator.process_index
    accelerator.print(f"hpcai: runtime from {Path(__file__).resolve().parents[1]}, {world} process(es)")
    if bound is not None:
        print(f"hpcai: rank {rank} bound to CPUs {','.join(map(str, sorted(bound)))}", flush=True)
    model = task.model
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr * config.lr_scale, fused=torch.cuda.is_available()
    )
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
    start, lr_scale, skips, detector_state, rerun_step = 0, config.lr_scale, [], None, None
    decision = _pending_decision(config.run_dir)
    accelerator.wait_for_everyone()  # every rank has read the decision before rank 0 retires it
    source = checkpoints.latest()
    if decision is not None:
        source = checkpoints.root / f"step-{int(decision['checkpoint_step']):08d}"
    if source is not None:
        heartbeat.beat("loading")
        state = checkpoints.load(source, model, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
        lr_scale = float(state.get("lr_scale", 1.0))
        skips = [tuple(s) for s in state.get("skips", [])]
        detector_state = state.get("spike_detector")
        accelerator.print(f"hpcai: resumed from {source} at step {start}")
    if decision is not None:
        lr_scale = float(decision["lr_scale"])
        rerun_step = int(decision["rerun_step"]) if decision.get("rerun_step") is not None else None
        if decision.get("skip_from") is not None:
            skips.append((int(decision["skip_from"]), int(decision["skip_to"]) - int(decision["skip_from"])))
        if accelerator.is_main_process:
            _retire_decision(config.run_dir, checkpoints, start)
        accelerator.print(f"hpcai: rollback applied: step {start}, LR x{lr_scale:g}, skipping {skips or 'nothing'}")
        accelerator.wait_for_everyone()
    _set_lr_scale(optimizer, scheduler, config.lr * lr_scale)
    guard = None
    if config.policy is not None:
        detector = SpikeDetector.from_state_dict(detector_state) if detector_state else SpikeDetector()
        # A resume may change the floor; the statistics carry over.
        detector.config = dataclasses.replace(detector.config, report_floor=config.spike_floor)
        guard = SpikeGuard(config.run_dir, config.policy, detector, accelerator.is_main_process,
                           previous_rollbacks=rollbacks_so_far(config.run_dir), rerun_step=rerun_step)  # fmt: skip
    lengths = getattr(task, "lengths", None)
    order = BatchOrder(task.num_samples, config.per_device_batch_size * world, world, rank, config.seed, lengths)
    stop = StopRequest(config.run_dir)
    metrics = MetricsLog(config.run_dir / config.metrics_file, enabled=accelerator.is_main_process)
    timeline = Timeline(config.run_dir / TIMELINE_LOG, enabled=accelerator.is_main_process)
    device = accelerator.device
    exit_code = 0
    every = progress_every(config.max_steps)
    peak = peak_flops()
    since = time.perf_counter()
    if log_with:
        accelerator.init_trackers("hpcai", config=tracked_config(config))
    batches = step_batches(task.collate, order, skips, start, config.max_steps, config.data_workers)
    sync_every = config.sync_every or (10 if device.type == "cuda" else 1)
    window: list[_StepRecord] = []
    window_began = time.perf_counter()
    left_out_total = seen = 0  # samples left out and samples seen in this attempt, over all ranks
    try:
        for step in range(start, config.max_steps):
            began = time.perf_counter()
            model.train()
            cpu_batch = next(batches)
            left_out = cpu_batch.pop(LEFT_OUT, None)  # samples the workers could not make (counted, not trained)
            batch = to_device(cpu_batch, device)
            data_s = time.perf_counter() - began
            out = task.step(model, batch, accelerator)
            accelerator.backward(out.loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            after_step = getattr(task, "after_optimizer_step", None)
            if after_step is not None:
                after_step(model)
            if config.inject_spike_at == step + 1 and lr_scale == 1.0:
                corrupt(model, config.inject_spike_scale)
            lr = float(scheduler.get_last_lr()[0])
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens, flops = task.work(cpu_batch)  # host numbers: they join the device values at the sync
            z = out.z_loss.detach().float().reshape(1) if out.z_loss is not None else torch.zeros(1, device=device)
            values = torch.cat([out.loss.detach().float().reshape(1), _local(grad_norm).float().reshape(1), z])
            window.append(_StepRecord(done, values, out.z_loss is not None, lr, data_s, float(tokens), float(flops),
                                      float(left_out.sum()) if left_out is not None else 0.0))  # fmt: skip
            heartbeat.beat("step", done, time.perf_counter() - began)
            if config.inject_hang_at == done and not hung_before(config.run_dir):
                hang_forever(accelerator, done)
            if config.inject_crash_at == done:
                crash_last_node(config.run_dir, done)
            due_checkpoint = done % config.checkpoint_every == 0 or done == config.max_steps
            if len(window) < sync_every and not due_checkpoint:
                continue
            # The host sync: one collective for the window's values and every rank's stop flag.
            rows, stop_now = _reduce_window(accelerator, window, stop.requested())
            elapsed = (time.perf_counter() - window_began) / len(window)
            verdict = None
            for record, row in zip(window, rows, strict=True):
                loss, norm = row[0] / world, row[1] / world
                z_loss = row[2] / world if record.has_z_loss else None
                step_tokens, step_flops = int(row[3]), row[4]
                left_out_total += int(row[5])
                seen += config.per_device_batch_size * world
                if config.inject_nan_at == record.step and lr_scale == 1.0 and nan_fires(config):
                    loss = float("nan")
                metrics.write(
                    step=record.step,
                    loss=loss,
                    grad_norm=norm,
                    lr=record.lr,
                    samples_per_s=config.per_device_batch_size * world / elapsed,
                    tokens_per_s=step_tokens / elapsed,
                    z_loss=z_loss,
                    peak_memory_gb=_peak_memory_gb(),
                    attempt_step=record.step - start,
                    step_s=round(elapsed, 6),
                    data_s=round(record.data_s, 6),
                    mfu=mfu(step_flops, elapsed, world, peak),
                    left_out=left_out_total or None,
                )
                check_left_out(left_out_total, seen, config.max_left_out)
                if log_with:
                    accelerator.log(scalars(loss=loss, grad_norm=norm, lr=record.lr, z_loss=z_loss,
                                             tokens_per_s=step_tokens / elapsed, step_s=elapsed,
                                             data_s=record.data_s), step=record.step)  # fmt: skip
                if record.step % every == 0 or record.step == config.max_steps:
                    per_step = (time.perf_counter() - since) / every
                    accelerator.print(f"hpcai: step {record.step}/{config.max_steps} loss {loss:.4f}, "
                                      f"{step_tokens / elapsed:,.0f} tokens/s, {per_step:.2f} s/step")  # fmt: skip
                    since = time.perf_counter()
                if guard is not None:
                    steps_saved = [step_of(p) for p in checkpoints.complete()]
                    verdict = guard.observe(record.step, loss, norm, steps_saved, lr_scale)
                    if verdict is not None:
                        break
            window = []
            window_began = time.perf_counter()
            if verdict is not None:
                accelerator.print(f"hpcai: spike guard: {verdict.reason}")
                exit_code = EXIT_ROLLBACK if verdict.action == "rollback" else EXIT_GAVE_UP
                break
            if due_checkpoint or stop_now:
                trainer_state = {
                    "step": done,
                    "scheduler": scheduler.state_dict(),
                    "lr_scale": lr_scale,
                    "skips": skips,
                    "spike_detector": guard.detector.state_dict() if guard is not None else None,
                }
                saving = time.perf_counter()
                heartbeat.beat("checkpoint", done)
                path = checkpoints.save(done, model, optimizer, trainer_state)
                heartbeat.beat("step", done)
                timeline.record("checkpoint", step=done, seconds=round(time.perf_counter() - saving, 6))
                accelerator.print(f"hpcai: checkpoint {path.name}")
                window_began = time.perf_counter()
            if stop_now and done < config.max_steps:
                if accelerator.is_main_process:
                    (config.run_dir / REQUEUE_MARKER).write_text(f"{done}\n")
                accelerator.print(f"hpcai: stop requested; checkpointed at step {done}, exiting {EXIT_REQUEUE}")
                exit_code = EXIT_REQUEUE
                break
    finally:
        metrics.close()
        heartbeat.close()
    accelerator.wait_for_everyone()
    if exit_code == 0 and isinstance(task, Exports):
        heartbeat.beat("checkpoint", config.max_steps)
        _export(task, model, config.run_dir / MODEL_DIR, accelerator)
    accelerator.end_training()
    return exit_code


def _export(task: Exports, model: torch.nn.Module, target: Path, accelerator: Any) -> None:
    """The full (unsharded) weights gathered to rank 0, which writes the folder aside and renames it into
    place: `<run dir>/model` is complete or absent, never half-written."""
    import shutil

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if target.exists():
        return
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # a collective: every rank takes part
    if accelerator.is_main_process:
        aside = target.parent / f".{target.name}.partial"
        shutil.rmtree(aside, ignore_errors=True)
        task.export(state, aside)
        aside.rename(target)
        accelerator.print(f"hpcai: exported the trained model to {target}")
    accelerator.wait_for_everyone()


def _pending_decision(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / ROLLBACK_FILE
    if not path.is_file():
        return None
    decision: dict[str, Any] = json.loads(path.read_text())
    return decision


def _retire_decision(run_dir: Path, checkpoints: Checkpoints, target_step: int) -> None:
    """The rollback is applied: drop the checkpoints of the abandoned trajectory, point `latest` at the
    target, and keep the decision file under a new name for the record."""
    import shutil

    for path in checkpoints.complete():
        if step_of(path) > target_step:
            shutil.rmtree(path, ignore_errors=True)
    (checkpoints.root / LATEST_FILE).write_text(f"step-{target_step:08d}\n")
    applied = run_dir / f"rollback-applied-{int(time.time() * 1000)}.json"
    (run_dir / ROLLBACK_FILE).rename(applied)


def _set_lr_scale(optimizer: torch.optim.Optimizer, scheduler: Any, base_lr: float) -> None:
    """Base LR for this attempt; the schedule's position is kept (a loaded scheduler carries the old base)."""
    scheduler.base_lrs = [base_lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor


def _peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


@dataclass(frozen=True)
class _StepRecord:
    """A step trained but not yet read back: its values stay on the device until the window's sync."""

    step: int
    values: torch.Tensor  # loss, grad norm, z-loss (this rank's, on the device)
    has_z_loss: bool
    lr: float  # the learning rate this step's update used
    data_s: float
    tokens: float  # this rank's, counted on the host
    flops: float
    left_out: float = 0.0  # samples of this rank's batch that could not be made


def _local(value: torch.Tensor) -> torch.Tensor:
    """The grad norm as a plain tensor: a DTensor (FSDP2 over one mesh) gathered -- a collective on every rank,
    not a host sync -- else the tensor itself."""
    full_tensor = getattr(value, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else value


LEFT_OUT_MIN_SEEN = 256  # samples seen before a fraction left out fails the run (a few at the start are noise)


def check_left_out(left_out: int, seen: int, limit: float) -> None:
    """Fail the run (every rank at the same step: the counts are the reduced ones) when more than `limit`
    of the samples seen were left out."""
    if seen >= LEFT_OUT_MIN_SEEN and left_out > limit * seen:
        raise SystemExit(
            f"hpcai: {left_out} of the {seen} samples seen in this attempt ({left_out / seen:.1%}) were left out "
            f"(missing or unreadable images, malformed conversations): more than max_left_out={limit:g}. The job's "
            "output names the first ones; fix the data (or its image folder), or raise max_left_out to go on."
        )


def _reduce_window(accelerator: Any, window: list[_StepRecord], stop_requested: bool) -> tuple[list[list[float]], bool]:
    """The window's values summed over ranks, and whether any rank saw the stop request (so all ranks stop
    at the same step): one collective and one device-to-host copy for the whole window."""
    device = window[0].values.device
    # The host's numbers go to the device once per window (a copy from pageable memory waits for the
    # stream: once per step it would be the very sync this avoids).
    host = [x for r in window for x in (r.tokens, r.flops, r.left_out)] + [1.0 if stop_requested else 0.0]
    flat = torch.cat([torch.stack([r.values for r in window]).reshape(-1), torch.tensor(host, device=device)])
    totals = accelerator.reduce(flat, reduction="sum").tolist()
    width = window[0].values.numel()
    counts = totals[len(window) * width :]
    rows = [totals[i * width : (i + 1) * width] + counts[3 * i : 3 * i + 3] for i in range(len(window))]
    return rows, counts[-1] > 0
