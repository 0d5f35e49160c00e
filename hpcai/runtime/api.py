"""hpcai's guard for your own training loop: two lines of code for spike rollback and a clean walltime stop.

    from hpcai.runtime.api import Guard
    guard = Guard()                                   # inert outside an hpcai job
    plan = guard.resume_plan()                        # after a rollback: which checkpoint, LR scale, skips
    ...
    if guard.report(step, loss, grad_norm, checkpoint_steps=[...]) is not None:
        break                                         # rollback (or give up) decided: end this attempt
    if guard.should_stop():                           # walltime is near (the job wrote STOP)
        save(); break

Every rank sees the same (all-reduced or logged) loss, so every rank reaches the same decision; rank 0
writes it (`ROLLBACK.json`, read by the job script, which relaunches the attempt inside the allocation or
submits the next one). The decision names the checkpoint step to load and the LR scale (relative to the LR
the program was started with, compounding over rollbacks); `hpcai submit ... --resume-args
'... {checkpoint}'` hands that checkpoint to the next attempt. Standard library only (torch optional).

Ready-made: `hpcai.integrations.transformers.HpcaiCallback` for HF Trainer and TRL.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.monitor.policy import Decision, RollbackPolicy
from hpcai.monitor.spikes import SpikeDetector
from hpcai.rundir.contract import DECISIONS_LOG, ROLLBACK_FILE, STOP_FILE
from hpcai.runtime.guard import SpikeGuard, rollbacks_so_far

GUARD_STATE_FILE = "hpcai_guard.json"  # in each checkpoint folder: the detector and LR scale at that step
_MAX_STATE_BYTES = 5_000_000


@dataclass(frozen=True)
class ResumePlan:
    """A rollback to apply at the start of this attempt."""

    checkpoint_step: int
    lr_scale: float
    skip_from: int | None = None
    skip_to: int | None = None


def _rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "PMI_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def read_pending_decision(run_dir: Path) -> ResumePlan | None:
    """The rollback decision waiting in the run directory, checked field by field (the file may have been
    written by someone else): None when there is none or it is not a well-formed rollback."""
    path = run_dir / ROLLBACK_FILE
    try:
        data = json.loads(path.read_text()[:_MAX_STATE_BYTES])
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("action") != "rollback":
        return None
    step, scale = data.get("checkpoint_step"), data.get("lr_scale")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 10**12:
        return None
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not 0 < float(scale) <= 1:
        return None
    skip_from, skip_to = data.get("skip_from"), data.get("skip_to")
    if not (isinstance(skip_from, int) and isinstance(skip_to, int) and 0 <= skip_from < skip_to < 10**12):
        skip_from = skip_to = None
    return ResumePlan(step, float(scale), skip_from, skip_to)


def load_guard_state(checkpoint: Path) -> tuple[SpikeDetector | None, float]:
    """The detector and LR scale saved with a checkpoint (GUARD_STATE_FILE); (None, 1.0) when absent or
    malformed."""
    try:
        data = json.loads((checkpoint / GUARD_STATE_FILE).read_text()[:_MAX_STATE_BYTES])
        scale = float(data.get("lr_scale", 1.0))
        detector = SpikeDetector.from_state_dict(data["detector"]) if data.get("detector") else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None, 1.0
    return detector, scale if 0 < scale <= 1 else 1.0


class Guard:
    """The spike guard and the stop request for a program that is not on hpcai's runtime."""

    def __init__(self, run_dir: str | Path | None = None, policy: RollbackPolicy | None = None) -> None:
        folder = run_dir if run_dir is not None else os.environ.get("HPCAI_RUN_DIR")
        self.run_dir = Path(folder) if folder else None
        self.rank = _rank()
        self.policy = policy or RollbackPolicy()
        self.lr_scale = 1.0
        self._spike_guard: SpikeGuard | None = None
        if self.run_dir is not None:
            self._spike_guard = SpikeGuard(
                self.run_dir, self.policy, SpikeDetector(), writer=self.rank == 0,
                previous_rollbacks=rollbacks_so_far(self.run_dir),
            )  # fmt: skip

    @property
    def active(self) -> bool:
        """Inside an hpcai job (HPCAI_RUN_DIR set): otherwise every call is a no-op."""
        return self.run_dir is not None

    def resume_plan(self) -> ResumePlan | None:
        return read_pending_decision(self.run_dir) if self.run_dir is not None else None

    def restore(self, checkpoint: Path, plan: ResumePlan | None = None) -> float:
        """This attempt resumed from `checkpoint`: take the detector and LR scale saved with it, and the
        plan's LR scale when it is that plan's checkpoint. Returns the LR scale to train with."""
        detector, self.lr_scale = load_guard_state(checkpoint)
        if self._spike_guard is not None and detector is not None:
            self._spike_guard.detector = detector
        if plan is not None:
            self.lr_scale = plan.lr_scale
        return self.lr_scale

    def retire(self, plan: ResumePlan) -> None:
        """The plan is applied (call once every rank has read it; rank 0 acts): the decision is kept under
        another name, so the job script does not read it as this attempt's."""
        if self.run_dir is None or self.rank != 0:
            return
        with contextlib.suppress(OSError):
            (self.run_dir / ROLLBACK_FILE).rename(self.run_dir / f"rollback-applied-{int(time.time() * 1000)}.json")
        with contextlib.suppress(OSError), open(self.run_dir / DECISIONS_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps({"action": "rollback_applied", "checkpoint_step": plan.checkpoint_step,
                                  "lr_scale": plan.lr_scale, "time": time.time(), "by": "guard"}) + "\n")  # fmt: skip

    def report(
        self,
        step: int,
        loss: float,
        grad_norm: float | None = None,
        *,
        checkpoint_steps: list[int] | tuple[int, ...] = (),
    ) -> Decision | None:
        """Feed one logged step. A Decision (rollback or give up, already written for the job script) means:
        end this attempt now, without saving a checkpoint; None: keep training."""
        if self._spike_guard is None:
            return None
        return self._spike_guard.observe(step, float(loss), grad_norm, sorted(checkpoint_steps), self.lr_scale)

    def should_stop(self) -> bool:
        """Walltime is near: the job asked for a checkpoint and a stop. Agree on it across ranks before
        acting (every rank must stop at the same step)."""
        return self.run_dir is not None and (self.run_dir / STOP_FILE).exists()

    def guard_state(self) -> dict[str, Any]:
        """What to save with a checkpoint (as GUARD_STATE_FILE) so a rollback to it restores the detector."""
        detector = self._spike_guard.detector.state_dict() if self._spike_guard is not None else None
        return {"lr_scale": self.lr_scale, "detector": detector}

    def save_state(self, checkpoint: Path) -> None:
        if self.run_dir is None or self.rank != 0:
            return
        with contextlib.suppress(OSError):
            tmp = checkpoint / f".{GUARD_STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.guard_state()))
            os.replace(tmp, checkpoint / GUARD_STATE_FILE)
