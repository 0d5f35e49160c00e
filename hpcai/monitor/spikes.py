"""A streaming loss-spike and divergence detector with robust statistics.

For each logged point it compares the loss with the median of the last `window` normal points (the
trend) in relative terms, scaled by the median absolute deviation of those points (robust to the noise
level of the run). A point is a **spike** when it is both `rel_threshold` above the trend and
`z_threshold` robust deviations above it; a grad-norm far above its own trend is a second signal that
lowers both thresholds. A spike that comes back to the trend within `recovery_points` is **transient**
(most real spikes are); one that does not is **persistent** and reported as a **divergence**, as is a
slow rise of the short-term trend above the best trend seen. Non-finite loss or grad norm is
**nonfinite** at once. Spike points never enter the trend, and after a persistent change the trend
restarts from the new level. `state_dict()` makes the detector survive a resume.

What is *reported* as a spike also has a magnitude floor (`report_floor`, +20% over the trend by
default): on real runs, single-point outliers of +10-18% that return to trend at the next point are
common (the Megatron-LM release curves in tests/fixtures/loss-curves have them every few thousand steps,
and a per-rank micro-batch loss has a +12% 95th percentile of deviation), while the spikes worth a
user's attention there are +26% and more. A transient excursion that passes the statistical test but
peaks below the floor, without a grad-norm spike, is an **outlier**: counted (`outliers`, and its last
steps) but not an event. One that grows past the floor becomes a spike; one that does not come back is a
divergence whatever its size.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any


@dataclass(frozen=True)
class DetectorConfig:
    window: int = 50
    warmup: int = 20
    rel_threshold: float = 0.10
    z_threshold: float = 6.0
    min_sigma: float = 0.005
    recover_tol: float = 0.03
    recovery_points: int = 10
    grad_window: int = 50
    grad_confirm_z: float = 6.0
    grad_relief: float = 0.6
    # A grad-norm spike is grad_confirm_z robust deviations over the window's median *and* past
    # grad_tail_factor x the 95th percentile of the last tail_window grad norms: grad norms are heavy-tailed
    # (in the demo a loud batch every ~20 steps is 5-10x the median), and a robust z alone called the run's
    # own tail an explosion; real explosions are 10-100x.
    grad_tail_factor: float = 1.5
    short_window: int = 10
    divergence_tol: float = 0.15
    divergence_points: int = 30
    report_floor: float = 0.20
    # The floor rises with the run's own tail of noise: at least tail_factor x the 95th percentile of the
    # normal points' excess over the trend (the last tail_window of them).
    tail_window: int = 500
    tail_factor: float = 4.5


@dataclass
class Event:
    kind: str  # nonfinite | spike | divergence | outlier (below the report floor: counted, not reported)
    onset_step: int
    detected_step: int
    loss_before: float | None
    loss_peak: float | None
    status: str = "open"  # open | transient (recovered by itself) | persistent
    resolved_step: int | None = None
    loss_after: float | None = None
    grad_norm_spike: bool = False
    points: int = 1

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


OUTLIER_STEPS_KEPT = 100


def _push(points: deque[float], value: float, limit: int) -> None:
    """Append to a window of the last `limit` points (the limit comes from the config, which a resumed
    state may change: not a deque's maxlen)."""
    points.append(value)
    while len(points) > limit:
        points.popleft()


@dataclass
class SpikeDetector:
    config: DetectorConfig = field(default_factory=DetectorConfig)
    seen: int = 0
    trend_points: deque[float] = field(default_factory=deque)
    grad_points: deque[float] = field(default_factory=deque)
    short_points: deque[float] = field(default_factory=deque)
    best_trend: float | None = None
    rising_since: int | None = None
    rising_count: int = 0
    open_spike: Event | None = None
    events: list[Event] = field(default_factory=list)
    outliers: int = 0  # transient excursions below the report floor
    outlier_steps: list[int] = field(default_factory=list)  # the last OUTLIER_STEPS_KEPT of them
    excess_points: deque[float] = field(default_factory=deque)  # normal points' excess over the trend
    grad_tail: deque[float] = field(default_factory=deque)  # the last tail_window grad norms, every point's

    # -- streaming -----------------------------------------------------------------------------------

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> list[Event]:
        """Feed one logged point; returns the events that were opened or changed by it."""
        cfg = self.config
        self.seen += 1
        changed: list[Event] = []
        if not _finite(loss) or (grad_norm is not None and not _finite(grad_norm)):
            trend = median(self.trend_points) if self.trend_points else None
            event = Event("nonfinite", step, step, trend, loss if _finite(loss) else None, status="persistent")
            event.loss_after = None
            self.events.append(event)
            return [event]

        grad_spike = self._grad_spike(grad_norm)
        # Every point's grad norm joins its window, spikes' too: batches that alternate between two kinds of
        # data alternate in grad norm as well, and a window of the quiet kind alone made each loud batch a
        # "grad-norm spike" (the demo's healthy run reported 13 spikes in 400 steps). A real explosion is
        # rare enough for the window's median and MAD to stay where they were.
        if grad_norm is not None:
            _push(self.grad_points, grad_norm, cfg.grad_window)
            _push(self.grad_tail, grad_norm, cfg.tail_window)
        if self.open_spike is not None:
            changed += self._follow_spike(step, loss)
            if self.open_spike is not None:
                return changed

        trend = median(self.trend_points) if self.trend_points else None
        if trend is not None and trend > 0 and self.seen > cfg.warmup:
            excess = loss / trend - 1.0
            sigma = max(cfg.min_sigma, 1.4826 * self._relative_mad(trend))
            relief = cfg.grad_relief if grad_spike else 1.0
            if excess > cfg.rel_threshold * relief and excess / sigma > cfg.z_threshold * relief:
                # A grad-norm explosion with it is a second, independent signal: reported at any size.
                kind = "spike" if excess >= self.report_floor() or grad_spike else "outlier"
                event = Event(kind, step, step, trend, loss, grad_norm_spike=grad_spike)
                self.open_spike = event
                if kind == "outlier":
                    return changed  # reported only if it grows past the floor or does not come back
                self.events.append(event)
                return [*changed, event]

        if trend is not None and trend > 0:
            _push(self.excess_points, loss / trend - 1.0, cfg.tail_window)
        self._admit(loss)
        divergence = self._slow_divergence(step)
        if divergence is not None:
            changed.append(divergence)
        return changed

    def _follow_spike(self, step: int, loss: float) -> list[Event]:
        cfg = self.config
        spike = self.open_spike
        assert spike is not None and spike.loss_before is not None
        spike.points += 1
        spike.loss_peak = max(spike.loss_peak or loss, loss)
        grew = spike.kind == "outlier" and spike.loss_peak >= spike.loss_before * (1.0 + self.report_floor())
        if grew:
            spike.kind, spike.detected_step = "spike", step
            self.events.append(spike)
        if loss <= spike.loss_before * (1.0 + cfg.recover_tol):
            spike.status, spike.resolved_step, spike.loss_after = "transient", step, loss
            self.open_spike = None
            self._admit(loss)
            if spike.kind == "outlier":
                self.outliers += 1
                self.outlier_steps = [*self.outlier_steps, spike.onset_step][-OUTLIER_STEPS_KEPT:]
                return []
            return [spike]
        if spike.points > cfg.recovery_points:
            spike.status, spike.resolved_step, spike.loss_after = "persistent", step, loss
            self.open_spike = None
            divergence = Event(
                "divergence", spike.onset_step, step, spike.loss_before, spike.loss_peak, status="persistent",
                resolved_step=step, loss_after=loss, grad_norm_spike=spike.grad_norm_spike, points=spike.points,
            )  # fmt: skip
            self.events.append(divergence)
            # The run lives at a new level now: the trend restarts from the latest points.
            self.trend_points.clear()
            self.short_points.clear()
            self.best_trend = None
            self._admit(loss)
            return [divergence] if spike.kind == "outlier" else [spike, divergence]
        return [spike] if grew else []  # still open: changed only when it became a spike

    def report_floor(self) -> float:
        """What a spike must exceed to be reported: the configured floor, or more on a run whose normal
        points themselves swing far (a per-rank micro-batch loss: +12% at its 95th percentile)."""
        cfg = self.config
        if len(self.excess_points) < cfg.tail_window // 5:
            return cfg.report_floor
        ordered = sorted(self.excess_points)
        return max(cfg.report_floor, cfg.tail_factor * ordered[int(0.95 * (len(ordered) - 1))])

    def _admit(self, loss: float) -> None:
        _push(self.trend_points, loss, self.config.window)
        _push(self.short_points, loss, self.config.short_window)

    def _relative_mad(self, trend: float) -> float:
        residuals = [x / trend - 1.0 for x in self.trend_points]
        centre = median(residuals)
        return median(abs(r - centre) for r in residuals)

    def _grad_spike(self, grad_norm: float | None) -> bool:
        if grad_norm is None or len(self.grad_points) < self.config.warmup:
            return False
        centre = median(self.grad_points)
        mad = median(abs(g - centre) for g in self.grad_points)
        sigma = max(1.4826 * mad, 1e-12, abs(centre) * self.config.min_sigma)
        ordered = sorted(self.grad_tail if len(self.grad_tail) > len(self.grad_points) else self.grad_points)
        tail = ordered[int(0.95 * (len(ordered) - 1))]
        return (
            grad_norm - centre
        ) / sigma > self.config.grad_confirm_z and grad_norm > self.config.grad_tail_factor * tail

    def _slow_divergence(self, step: int) -> Event | None:
        """The short-term trend staying well above the best trend seen: a rise no single point shows."""
        cfg = self.config
        if self.seen <= cfg.warmup or len(self.trend_points) < cfg.window // 2:
            return None
        current = median(self.trend_points)
        self.best_trend = current if self.best_trend is None else min(self.best_trend, current)
        short = median(self.short_points)
        if short > self.best_trend * (1.0 + cfg.divergence_tol):
            self.rising_since = self.rising_since if self.rising_since is not None else step
            self.rising_count += 1
            if self.rising_count == cfg.divergence_points:
                event = Event(
                    "divergence", self.rising_since, step, self.best_trend, short, status="persistent",
                    resolved_step=step, loss_after=short, points=self.rising_count,
                )  # fmt: skip
                self.events.append(event)
                self.best_trend = None
                return event
        else:
            self.rising_since, self.rising_count = None, 0
        return None

    # -- persistence ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "seen": self.seen,
            "trend_points": list(self.trend_points),
            "grad_points": list(self.grad_points),
            "short_points": list(self.short_points),
            "best_trend": self.best_trend,
            "rising_since": self.rising_since,
            "rising_count": self.rising_count,
            "open_spike": asdict(self.open_spike) if self.open_spike else None,
            "events": [asdict(e) for e in self.events],
            "outliers": self.outliers,
            "outlier_steps": list(self.outlier_steps),
            "excess_points": list(self.excess_points),
            "grad_tail": list(self.grad_tail),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SpikeDetector:
        # A state saved before a config field existed gets that field's default.
        known = set(DetectorConfig.__dataclass_fields__)
        detector = cls(DetectorConfig(**{k: v for k, v in state["config"].items() if k in known}))
        detector.seen = state["seen"]
        detector.trend_points = deque(state["trend_points"])
        detector.grad_points = deque(state["grad_points"])
        detector.short_points = deque(state["short_points"])
        detector.best_trend = state["best_trend"]
        detector.rising_since = state["rising_since"]
        detector.rising_count = state["rising_count"]
        detector.events = [Event(**e) for e in state["events"]]
        detector.outliers = int(state.get("outliers", 0))
        detector.outlier_steps = list(state.get("outlier_steps", []))
        detector.excess_points = deque(state.get("excess_points", []))
        detector.grad_tail = deque(float(x) for x in state.get("grad_tail", []))
        if state["open_spike"] is not None:
            # An open spike is the same object as the last event in the list; an open outlier is in no list.
            opened = Event(**state["open_spike"])
            reported = detector.events and opened.kind == "spike" and asdict(detector.events[-1]) == asdict(opened)
            detector.open_spike = detector.events[-1] if reported else opened
        return detector
