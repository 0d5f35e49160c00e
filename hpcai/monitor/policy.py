"""The rollback policy: what to do about a detected event.

A transient spike (recovered by itself within the detector's recovery window) is only recorded, unless
the policy says otherwise. A persistent spike, a divergence or a non-finite loss rolls back: to the newest
complete checkpoint at least `margin_steps` before the onset, with the learning rate scaled by
`lr_factor` (compounding over rollbacks), optionally skipping the batches around the spike (PaLM), at
most `max_rollbacks` times -- then the run stops and says why.

With `rerun_check`, a non-finite loss is first re-run as it was (Megatron-LM's rerun state machine, the
cheap version): back to the checkpoint with the same LR and the same batches; if the loss is non-finite
again at the same step the fault is in the data or the model (the LR cut and skips follow), if not it was
a transient fault of the hardware (a silent data corruption, a flaky GPU) and training goes on as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from hpcai.monitor.spikes import Event


@dataclass(frozen=True)
class RollbackPolicy:
    lr_factor: float = 0.5
    margin_steps: int = 0
    skip_batches: int = 0
    max_rollbacks: int = 3
    rollback_transient: bool = False
    rerun_check: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: Literal["continue", "record", "rollback", "give_up"]
    reason: str
    event: dict[str, Any] | None = None
    checkpoint_step: int | None = None
    lr_scale: float | None = None
    skip_from: int | None = None
    skip_to: int | None = None
    # A rerun-check rollback: re-run up to this step as it was, then tell data from a transient fault.
    rerun_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def needs_rollback(event: Event, policy: RollbackPolicy) -> bool:
    if event.kind in {"nonfinite", "divergence"}:
        return True
    if event.kind == "spike" and event.status == "persistent":
        return False  # its divergence event carries the decision
    return event.kind == "spike" and event.status == "transient" and policy.rollback_transient


def decide(
    event: Event,
    policy: RollbackPolicy,
    *,
    checkpoint_steps: list[int],
    rollbacks_so_far: int,
    lr_scale: float,
    rerun: bool = True,
) -> Decision:
    """The decision for one event, given the complete checkpoints available and the run's history
    (`rerun=False`: this event's step was re-run already, so no rerun check again)."""
    if not needs_rollback(event, policy):
        if event.kind == "spike" and event.status == "transient":
            return Decision("record", f"spike at step {event.onset_step} recovered by itself", event.to_json())
        return Decision("continue", "nothing to do", event.to_json())
    limit = event.onset_step - policy.margin_steps
    candidates = [s for s in checkpoint_steps if s < limit]
    what = f"{event.kind} at step {event.onset_step}"
    if rollbacks_so_far >= policy.max_rollbacks:
        return Decision(
            "give_up",
            f"{what}, and the run has rolled back {rollbacks_so_far} times already (max_rollbacks="
            f"{policy.max_rollbacks}): stopping for a human to look (lower the LR, change data or the model's "
            "stability options, then `hpcai resume`)",
            event.to_json(),
        )
    if not candidates:
        return Decision(
            "give_up",
            f"{what}, and no complete checkpoint exists before step {limit}: nothing to roll back to. Keep "
            "checkpoints more often (--set checkpoint_every=N) or resume by hand from an earlier run.",
            event.to_json(),
        )
    target = max(candidates)
    if policy.rerun_check and rerun and event.kind == "nonfinite":
        return Decision(
            "rollback",
            f"{what}: re-running steps {target + 1}-{event.onset_step} from step {target} as they were (rerun "
            "check: data or a transient fault?)",
            event.to_json(),
            checkpoint_step=target,
            lr_scale=lr_scale,
            rerun_step=event.onset_step,
        )
    skip_from = skip_to = None
    if policy.skip_batches > 0:
        # Skip the batches that led into the spike: from the onset's neighbourhood onwards (PaLM skipped
        # 200-500 batches around each spike).
        skip_from = max(target, event.onset_step - policy.skip_batches // 2)
        skip_to = skip_from + policy.skip_batches
    return Decision(
        "rollback",
        f"{what}: rolling back to step {target} with the LR x{lr_scale * policy.lr_factor:g}",
        event.to_json(),
        checkpoint_step=target,
        lr_scale=lr_scale * policy.lr_factor,
        skip_from=skip_from,
        skip_to=skip_to,
    )
