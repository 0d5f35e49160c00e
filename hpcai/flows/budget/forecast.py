"""When an allocation runs out: the project's burn rate and the day the allocation is spent at that rate.

The rate comes, in this order, from
1. the site's own budget command as hpcai read it over the last two weeks (every `hpcai budget` and every
   submit's budget check keeps a reading in the store): what the whole project spent, every member's jobs
   included -- the figure that decides when the allocation is gone;
2. else this store's own runs on the cluster over the same weeks (their attempts' node-hours at the
   profile's billing rate): only what was run from here, said as such.
A rate needs readings at least an hour apart; a reading that went down (a new allocation period, a
refund) starts the history again.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from hpcai.flows.budget.parsers import Allocation
from hpcai.spec.profiles import ClusterProfile
from hpcai.store.db import Attempt, BudgetReading, Run, Store

WINDOW_DAYS = 14
_MIN_SPAN_S = 3600


@dataclass(frozen=True)
class Burn:
    per_day: float
    unit: str
    days: float  # the span the rate was measured over
    source: str  # where it comes from, for people

    def to_json(self) -> dict[str, Any]:
        return {"per_day": round(self.per_day, 2), "unit": self.unit, "days": round(self.days, 2),
                "source": self.source}  # fmt: skip


def keep_readings(store: Store, cluster: str, rows: list[Allocation], *, now: float | None = None) -> None:
    """Record what the budget command just said, for the burn rate of later calls."""
    when = time.time() if now is None else now
    for row in rows:
        store.record_budget_reading(BudgetReading(cluster, row.account, when, row.used, row.total, row.unit))


def burn_from_readings(readings: list[BudgetReading], now: float) -> Burn | None:
    """The rate between the first and the last reading of the window (after the last drop in `used`)."""
    recent = [r for r in readings if r.time >= now - WINDOW_DAYS * 86400]
    for i in range(len(recent) - 1, 0, -1):
        if recent[i].used < recent[i - 1].used or recent[i].total != recent[i - 1].total:
            recent = recent[i:]
            break
    if len(recent) < 2 or recent[-1].time - recent[0].time < _MIN_SPAN_S:
        return None
    first, last = recent[0], recent[-1]
    days = (last.time - first.time) / 86400
    return Burn((last.used - first.used) / days, last.unit, days,
                f"the site's budget command, {len(recent)} readings over {days:.1f} days")  # fmt: skip


def burn_from_runs(store: Store, cluster: str, profile: ClusterProfile, now: float) -> Burn | None:
    """Node-hours of this store's attempts on the cluster that ended within the window, at the billing rate."""
    since = now - WINDOW_DAYS * 86400
    runs = [r for r in store.runs(cluster=cluster) if r.created >= since - 7 * 86400]
    node_hours = sum(_node_hours(run, a) for run in runs for a in store.attempts(run.id) if a.submitted >= since)
    if node_hours <= 0:
        return None
    return Burn(node_hours * profile.budget.per_node_hour / WINDOW_DAYS, profile.budget.unit, WINDOW_DAYS,
                f"your runs from this machine over {WINDOW_DAYS} days (other members' jobs not counted)")  # fmt: skip


def _node_hours(run: Run, attempt: Attempt) -> float:
    if not attempt.started or not attempt.ended:
        return 0.0
    try:
        seconds = (
            dt.datetime.fromisoformat(attempt.ended) - dt.datetime.fromisoformat(attempt.started)
        ).total_seconds()
    except (ValueError, TypeError):  # not a time, or one with a zone and one without
        return 0.0
    nodes = int(run.spec.get("nodes") or 1) + int(run.spec.get("spare_nodes") or 0)
    return max(0.0, seconds) / 3600 * nodes


def forecast(allocation: Allocation, burn: Burn | None, today: dt.date) -> dict[str, Any]:
    """The day the allocation is spent at the burn rate, and whether that comes before the allocation ends."""
    days_left = None
    if burn is not None and burn.per_day > 0 and burn.unit == allocation.unit:
        days_left = max(0.0, allocation.remaining) / burn.per_day
    # A rate near zero puts the day past any calendar: then there is no day to name (the allocation ends first).
    spent_on = today + dt.timedelta(days=days_left) if days_left is not None and days_left < 36500 else None
    before_end = spent_on is not None and allocation.end is not None and spent_on < allocation.end
    return {"burn": burn.to_json() if burn else None, "spent_on": spent_on.isoformat() if spent_on else None,
            "days_left": round(days_left, 3) if days_left is not None else None,
            "spent_before_end": before_end}  # fmt: skip


def outlives(
    allocation: Allocation, outlook: dict[str, Any], walltime_s: int, now: dt.datetime, what: str = "job"
) -> str | None:
    """Why a job (or a pipeline: `what`) submitted `now` might not be paid for to its end: the allocation ends
    first, or at the project's burn rate it is spent first. None when neither."""
    job_end = now + dt.timedelta(seconds=walltime_s)
    if allocation.end is not None and dt.datetime.combine(allocation.end, dt.time.max) < job_end:
        return (f"allocation {allocation.account} ends on {allocation.end}, before this {what}'s --time could run out: "
                "the site may stop or refuse it; ask for a shorter --time or renew the allocation.")  # fmt: skip
    days_left = outlook.get("days_left")
    if days_left is not None and days_left * 86400 < walltime_s:
        return (f"at the project's burn rate ({outlook['burn']['per_day']:,.0f} {allocation.unit} a day), allocation "
                f"{allocation.account} is spent in {days_left * 24:.1f} h, before this {what}'s --time could run out: "
                "other jobs of the project may use what is left first (`hpcai budget` shows the rate).")  # fmt: skip
    return None


def forecasts(cluster: str, profile: ClusterProfile, rows: list[Allocation], mine: Allocation | None,
              store: Store | None = None, now: float | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Keep the budget command's reading, then each allocation's forecast by account (the runs' fallback
    only for the user's own account: runs do not say which account paid)."""
    store = store or Store()
    when = time.time() if now is None else now
    keep_readings(store, cluster, rows, now=when)
    today = dt.datetime.fromtimestamp(when).date()
    result = {}
    for row in rows:
        readings = store.budget_readings(cluster, row.account, since=when - WINDOW_DAYS * 86400)
        burn = burn_from_readings(readings, when)
        if burn is None and row is mine:
            burn = burn_from_runs(store, cluster, profile, when)
        result[row.account] = forecast(row, burn, today)
    return result
