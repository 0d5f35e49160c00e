"""`HpcaiCallback`: hpcai's spike rollback and walltime stop for HF Trainer and TRL, in two lines:

    from hpcai.integrations.transformers import HpcaiCallback
    trainer = Trainer(..., callbacks=[HpcaiCallback()])      # or trainer.add_callback(HpcaiCallback())

Submit with `--resume-args '--resume_from_checkpoint {checkpoint}' --checkpoint-pattern
'OUTPUT_DIR/checkpoint-*'` (or call `trainer.train(resume_from_checkpoint=...)` with the folder hpcai
names). What it does, on every rank alike (all ranks see the same logged loss):

- each logged loss feeds hpcai's spike detector; on a divergence or a non-finite loss it decides a
  rollback to the newest complete `checkpoint-N` before the onset with the LR scaled down, stops training
  without saving, and the job relaunches the run from that checkpoint;
- on the attempt that applies a rollback, it scales the LR (the scheduler's base LRs and the optimizer's
  groups, relative to the checkpoint's scale), drops the checkpoints of the abandoned trajectory, and
  records the rollback as applied;
- on SIGUSR1 (hpcai's stop before walltime) or the job's STOP file it saves a checkpoint and stops at a
  step every rank agrees on (one all-reduce every `check_every` steps), so nothing since the last
  `save_steps` is lost;
- it saves the detector's state into each checkpoint (`hpcai_guard.json`), so a rollback restores it.

Outside an hpcai job it does nothing. Skipping batches after a rollback (`skip_batches`) is not applied to
HF's data loader: the default policy skips none.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from hpcai.monitor.policy import RollbackPolicy
from hpcai.runtime.api import Guard, load_guard_state
from hpcai.runtime.outputparse import exact_line

_CHECKPOINT_PREFIX = "checkpoint-"


def complete_checkpoints(output_dir: str | Path) -> list[int]:
    """Steps of the HF checkpoints in `output_dir` that were written to the end (trainer_state.json is
    saved after the model and optimizer)."""
    steps = []
    for path in Path(output_dir).glob(f"{_CHECKPOINT_PREFIX}*"):
        number = path.name.removeprefix(_CHECKPOINT_PREFIX)
        if number.isdigit() and (path / "trainer_state.json").is_file():
            steps.append(int(number))
    return sorted(steps)


def _agree(flag: bool) -> bool:
    """Whether any rank has the flag (one all-reduce); the flag itself without torch.distributed."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return flag
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class HpcaiCallback(TrainerCallback):
    def __init__(self, policy: RollbackPolicy | None = None, check_every: int = 10) -> None:
        self.guard = Guard(policy=policy)
        self.check_every = max(1, check_every)
        self._applied = False
        self._signalled = False
        self._ending = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.guard.active:
            signal.signal(signal.SIGUSR1, self._on_signal)  # the stop before walltime: save first, then stop

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The first step of this attempt: checkpoint, optimizer and scheduler are loaded by now."""
        if self._applied or not self.guard.active:
            return
        self._applied = True
        plan = self.guard.resume_plan()
        step = int(state.global_step)
        checkpoint = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}{step}"
        old_scale = load_guard_state(checkpoint)[1] if step > 0 else 1.0
        applies = plan is not None and plan.checkpoint_step == step
        new_scale = self.guard.restore(checkpoint, plan if applies else None) if step > 0 or applies else 1.0
        if new_scale != old_scale:
            self._scale_lr(new_scale / old_scale, kwargs.get("optimizer"), kwargs.get("lr_scheduler"))
        _barrier()  # every rank has read the plan before rank 0 retires it
        if plan is not None and applies:
            if self.guard.rank == 0:
                for later in complete_checkpoints(args.output_dir):
                    if later > step:  # the abandoned trajectory
                        shutil.rmtree(Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}{later}", ignore_errors=True)
            self.guard.retire(plan)
            print(f"hpcai: rollback applied: step {step}, LR x{new_scale:g}", file=sys.stderr, flush=True)
        elif plan is not None:
            print(
                f"hpcai: a rollback to step {plan.checkpoint_step} is pending, but this attempt started at step "
                f"{step}: "
                "submit with --resume-args '--resume_from_checkpoint {checkpoint}' so hpcai can hand it over",
                file=sys.stderr,
                flush=True,
            )

    @staticmethod
    def _scale_lr(ratio: float, optimizer: Any, scheduler: Any) -> None:
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * ratio
                if "initial_lr" in group:
                    group["initial_lr"] = group["initial_lr"] * ratio

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or self._ending:
            return
        try:
            loss = float(logs["loss"])
            norm = float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None
        except (TypeError, ValueError):
            return
        if self.guard.active and self.guard.rank == 0:  # the exact step for hpcai's metrics (the supervisor)
            lr = logs.get("learning_rate")
            print(exact_line(int(state.global_step), loss, norm, float(lr) if lr is not None else None),
                  file=sys.stderr, flush=True)  # fmt: skip
        decision = self.guard.report(
            int(state.global_step), loss, norm, checkpoint_steps=complete_checkpoints(args.output_dir)
        )
        if decision is not None:
            self._ending = True
            control.should_training_stop = True
            control.should_save = False  # never a checkpoint of the diverged state
            print(f"hpcai: spike guard: {decision.reason}", file=sys.stderr, flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._ending:
            control.should_save = False
            return
        if not self.guard.active or state.global_step % self.check_every:
            return
        if _agree(self._signalled or self.guard.should_stop()):
            control.should_save = True
            control.should_training_stop = True
            self._ignore_stop_signal()
            print(
                f"hpcai: stop requested: saving at step {state.global_step} and stopping", file=sys.stderr, flush=True
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ignore_stop_signal()

    def _ignore_stop_signal(self) -> None:
        """Nothing is left to save: a stop signal from now on is ignored, also while the interpreter shuts
        down (which would reset a Python handler to the default, and SIGUSR1's default kills)."""
        if self.guard.active:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.guard.save_state(Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}{state.global_step}")
