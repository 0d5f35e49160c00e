"""The in-job spike guard: feeds the detector every step and turns its events into decisions.

Every rank sees the same all-reduced loss and the same checkpoints, so every rank reaches the same
decision without talking to the others; rank 0 writes it down.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcai.monitor.policy import Decision, RollbackPolicy, decide
from hpcai.monitor.spikes import SpikeDetector
from hpcai.rundir.contract import DECISIONS_LOG, EVENTS_LOG, GAVE_UP_FILE, ROLLBACK_FILE


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def rollbacks_so_far(run_dir: Path) -> int:
    path = run_dir / DECISIONS_LOG
    if not path.is_file():
        return 0
    decisions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(1 for d in decisions if d.get("action") == "rollback")


@dataclass
class SpikeGuard:
    run_dir: Path
    policy: RollbackPolicy
    detector: SpikeDetector
    writer: bool  # rank 0 writes the logs and the decision
    # Counted once when the attempt starts: read later, rank 0's own write could make ranks disagree.
    previous_rollbacks: int
    # The step this attempt re-runs for a rerun check (the decision it started from), if any.
    rerun_step: int | None = None

    def observe(
        self, step: int, loss: float, grad_norm: float | None, checkpoint_steps: list[int], lr_scale: float
    ) -> Decision | None:
        """A decision that ends this attempt (rollback or give up), or None to keep training."""
        final: Decision | None = None
        if step == self.rerun_step:
            self._rerun_verdict(step, loss)
        for event in self.detector.update(step, loss, grad_norm):
            decision = decide(
                event,
                self.policy,
                checkpoint_steps=checkpoint_steps,
                rollbacks_so_far=self.previous_rollbacks,
                lr_scale=lr_scale,
                rerun=event.onset_step != self.rerun_step,
            )
            if self.writer:
                _append(
                    self.run_dir / EVENTS_LOG, {**event.to_json(), "decision": decision.action, "time": time.time()}
                )
            if decision.action in {"rollback", "give_up"} and final is None:
                final = decision
        if final is not None and self.writer:
            record = {**final.to_json(), "step": step, "time": time.time(), "by": "spike guard"}
            _append(self.run_dir / DECISIONS_LOG, record)
            target = self.run_dir / (ROLLBACK_FILE if final.action == "rollback" else GAVE_UP_FILE)
            tmp = target.with_name(f".{target.name}.tmp")  # the job script reads it: whole or not at all
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, target)
        return final

    def _rerun_verdict(self, step: int, loss: float) -> None:
        """The rerun check's answer at the step that was non-finite: again (data or model: the LR cut and
        skips follow from the detector's next event) or not (a transient fault: training goes on)."""
        import math

        again = not math.isfinite(loss)
        verdict = "data" if again else "transient"
        reason = (
            f"rerun check: the loss at step {step} is non-finite again from the same checkpoint, LR and batches: "
            "the data or the model, not the hardware"
            if again
            else f"rerun check: step {step} gave a finite loss ({loss:.4g}) when re-run from the same checkpoint, "
            "LR and batches: a transient fault (hardware, silent data corruption); training goes on as it was"
        )
        if self.writer:
            record = {"action": "rerun_check", "verdict": verdict, "step": step, "reason": reason,
                      "time": time.time(), "by": "spike guard"}  # fmt: skip
            _append(self.run_dir / DECISIONS_LOG, record)
        print(f"hpcai: {reason}", flush=True)
