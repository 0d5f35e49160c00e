"""`hpcai plot`: a run's loss (and grad norm) across all its attempts, spikes and rollbacks marked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcai.backends.session import Session
from hpcai.errors import HpcaiError
from hpcai.rundir.jsonl import read_jsonl
from hpcai.rundir.layout import RunDir
from hpcai.rundir.metrics import valid_step
from hpcai.store.db import Store


@dataclass
class Segment:
    """The steps one attempt logged (a new segment starts where the step goes back: a rollback)."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float | None] = field(default_factory=list)


@dataclass
class PlotData:
    run_id: str
    segments: list[Segment]
    spikes: list[tuple[str, int]]  # (kind, onset step)
    rollbacks: list[tuple[int, int]]  # (onset step, checkpoint step rolled back to)


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def load_plot_data(store: Store, run_id: str) -> PlotData:
    run = store.run(run_id)
    transport = Session.current().get(run.cluster).transport
    rows = read_jsonl(transport, RunDir(run.run_dir).metrics)
    if not rows:
        raise HpcaiError(f"run {run.id}: no metrics yet ({run.run_dir}/metrics.jsonl is empty or missing).")
    segments: list[Segment] = [Segment()]
    rows = [r for r in rows if valid_step(r.get("step")) is not None]  # a damaged or planted line is left out
    if not rows:
        raise HpcaiError(f"run {run.id}: no readable metrics line ({run.run_dir}/metrics.jsonl).")
    for row in rows:
        step = int(row["step"])
        if segments[-1].steps and step <= segments[-1].steps[-1]:
            segments.append(Segment())
        segments[-1].steps.append(step)
        segments[-1].losses.append(_float(row.get("loss")))
        grad = row.get("grad_norm")
        segments[-1].grad_norms.append(_float(grad) if grad is not None else None)
    events = read_jsonl(transport, RunDir(run.run_dir).events)
    onsets = {(str(e.get("kind"))[:20], valid_step(e.get("onset_step"))) for e in events if e.get("status") != "open"}
    spikes = sorted((kind, onset) for kind, onset in onsets if onset is not None)
    rollbacks: list[tuple[int, int]] = []
    for d in read_jsonl(transport, RunDir(run.run_dir).decisions):
        event: dict[str, Any] = d["event"] if isinstance(d.get("event"), dict) else {}
        target = valid_step(d.get("checkpoint_step"))
        onset = valid_step(event.get("onset_step", d.get("checkpoint_step")))
        if d.get("action") == "rollback" and target is not None and onset is not None:
            rollbacks.append((onset, target))
    return PlotData(run.id, segments, spikes, rollbacks)


CLIPPED = "!"  # a point above the chart's top row


def terminal_chart(data: PlotData, width: int = 72, height: int = 16) -> str:
    """A text chart: one digit per attempt (1, 2, ...), `^` under spike onsets, `R` under rollbacks, `!` for a
    point above the top row (the scale leaves the highest 2 % out); `^` meant both before."""
    points = [
        (step, loss, n)
        for n, seg in enumerate(data.segments, 1)
        for step, loss in zip(seg.steps, seg.losses, strict=True)
        if math.isfinite(loss)
    ]
    if not points:
        return f"run {data.run_id}: no finite loss to plot"
    lo_step = min(p[0] for p in points)
    hi_step = max(p[0] for p in points)
    losses = sorted(p[1] for p in points)
    lo, hi = losses[0], losses[min(len(losses) - 1, int(len(losses) * 0.98))]  # clip the top 2 %: spikes
    hi = hi if hi > lo else lo + 1.0
    grid = [[" "] * width for _ in range(height)]

    def column(step: int) -> int:
        return min(width - 1, int((step - lo_step) / max(1, hi_step - lo_step) * (width - 1)))

    above = [loss for _, loss, _ in points if loss > hi]
    for step, loss, n in points:
        row = height - 1 - min(height - 1, int((min(loss, hi) - lo) / (hi - lo) * (height - 1)))
        grid[row][column(step)] = CLIPPED if loss > hi else str(n % 10)
    marks = [" "] * width
    for _, onset in data.spikes:
        marks[column(onset)] = "^"
    for onset, _ in data.rollbacks:
        marks[column(onset)] = "R"
    lines = [f"{data.run_id}: loss against step, {len(data.segments)} attempt(s)"]
    for i, cells in enumerate(grid):
        label = hi - (hi - lo) * i / (height - 1)
        lines.append(f"{label:>9.3f} |" + "".join(cells))
    lines.append(" " * 10 + "+" + "-" * width)
    lines.append(" " * 11 + "".join(marks))
    lines.append(f"{'':11}{lo_step:<{width // 2}}{hi_step:>{width - width // 2}}")
    lines.append("digits: attempt number; ^ loss event onset; R rollback")
    if above:  # the scale leaves out the highest 2 % (spikes) so the trend stays readable: say so
        lines.append(
            f"{len(above)} point(s) above {hi:.3f} (highest {max(above):.4g}) drawn as {CLIPPED} on the top row"
        )
    return "\n".join(lines)


def write_png(data: PlotData, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HpcaiError(
            "-o: writing a PNG needs matplotlib: pip install matplotlib (or leave -o out for a terminal chart)."
        ) from None
    has_grad = any(g is not None for seg in data.segments for g in seg.grad_norms)
    fig, axes = plt.subplots(2 if has_grad else 1, 1, figsize=(10, 6 if has_grad else 4), sharex=True, squeeze=False)
    loss_ax = axes[0][0]
    for n, seg in enumerate(data.segments, 1):
        loss_ax.plot(seg.steps, seg.losses, lw=1, label=f"attempt {n}")
        if has_grad:
            axes[1][0].plot(seg.steps, [g if g is not None else math.nan for g in seg.grad_norms], lw=1)
    for kind, onset in data.spikes:
        loss_ax.axvline(onset, color="orange" if kind == "spike" else "red", ls=":", lw=1)
    for onset, target in data.rollbacks:
        loss_ax.annotate("", xy=(target, loss_ax.get_ylim()[1]), xytext=(onset, loss_ax.get_ylim()[1]),
                         arrowprops={"arrowstyle": "->", "color": "red"})  # fmt: skip
    finite = [x for seg in data.segments for x in seg.losses if math.isfinite(x) and x > 0]
    if finite and max(finite) / min(finite) > 20:
        loss_ax.set_yscale("log")  # a spike tens of times the loss would flatten the rest of the curve
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(f"{data.run_id}: dotted = loss events, arrows = rollbacks")
    loss_ax.legend(loc="upper right")
    if has_grad:
        axes[1][0].set_ylabel("grad norm")
        axes[1][0].set_yscale("log")
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise HpcaiError(f"-o {path}: cannot write ({exc.strerror}).") from exc
    finally:
        plt.close(fig)
