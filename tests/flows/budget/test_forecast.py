"""When the allocation runs out (issue 32, item 4): the burn rate from the budget command's readings (or this
store's runs), the day the allocation is spent at that rate, and the warning for a job that would outlive
the allocation or the money."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

from hpcai.backends.session import Session
from hpcai.backends.transport.base import CommandResult
from hpcai.backends.transport.local import LocalTransport
from hpcai.flows.budget.forecast import burn_from_readings, burn_from_runs, forecast, forecasts, outlives
from hpcai.flows.budget.guard import check_submit_budget
from hpcai.flows.budget.parsers import Allocation
from hpcai.flows.resolve import prepare_job
from hpcai.spec.jobspec import Overrides
from hpcai.spec.profiles import load_profile
from hpcai.store.db import BudgetReading, Run, Store
from tests.conftest import FIXTURES

NOW = 1_800_000_000.0
DAY = 86400.0
TODAY = dt.date(2027, 1, 15)


def _reading(days_ago: float, used: float, total: float = 50_000) -> BudgetReading:
    return BudgetReading("leonardo-booster", "EUHPC_D17_084", NOW - days_ago * DAY, used, total, "local core-hours")


def test_the_rate_is_what_was_spent_between_the_first_and_last_reading() -> None:
    burn = burn_from_readings([_reading(4, 20_000), _reading(2, 23_000), _reading(0, 25_000)], NOW)
    assert burn is not None and burn.per_day == 5_000 / 4 and burn.days == 4
    assert "3 readings over 4.0 days" in burn.source


def test_too_little_history_gives_no_rate() -> None:
    assert burn_from_readings([_reading(0, 25_000)], NOW) is None
    assert burn_from_readings([_reading(0.02, 24_000), _reading(0, 25_000)], NOW) is None  # 29 minutes apart
    assert burn_from_readings([_reading(30, 1_000), _reading(0, 25_000)], NOW) is None  # older than the window


def test_a_new_allocation_period_starts_the_history_again() -> None:
    readings = [_reading(6, 40_000), _reading(5, 48_000), _reading(3, 1_000), _reading(1, 3_000)]
    burn = burn_from_readings(readings, NOW)
    assert burn is not None and burn.per_day == 1_000  # from the drop on, not 48,000 -> 3,000


def test_the_day_it_is_spent_and_whether_before_the_allocation_ends() -> None:
    burn = burn_from_readings([_reading(2, 21_000), _reading(0, 25_000)], NOW)  # 2,000 a day
    allocation = Allocation("EUHPC_D17_084", 50_000, 25_000, "local core-hours", end=dt.date(2027, 3, 1))
    ahead = forecast(allocation, burn, TODAY)
    assert ahead["spent_on"] == "2027-01-27" and ahead["days_left"] == 12.5 and ahead["spent_before_end"] is True
    later = Allocation("EUHPC_D17_084", 50_000, 25_000, "local core-hours", end=dt.date(2027, 1, 20))
    assert forecast(later, burn, TODAY)["spent_before_end"] is False
    unknown = forecast(allocation, None, TODAY)
    assert unknown == {"burn": None, "spent_on": None, "days_left": None, "spent_before_end": False}


def test_a_job_that_outlives_the_allocation_or_its_money_is_told() -> None:
    now = dt.datetime(2027, 2, 28, 12, 0)
    allocation = Allocation("EUHPC_D17_084", 50_000, 25_000, "local core-hours", end=dt.date(2027, 2, 28))
    fits = {"days_left": None, "burn": None}
    assert outlives(allocation, fits, 6 * 3600, now) is None  # ends 18:00 on the allocation's last day
    ends = outlives(allocation, fits, 24 * 3600, now)
    assert ends is not None and "ends on 2027-02-28" in ends
    spent = {"days_left": 0.5, "burn": {"per_day": 50_000.0}}
    later = Allocation("EUHPC_D17_084", 50_000, 25_000, "local core-hours", end=dt.date(2027, 12, 31))
    money = outlives(later, spent, 24 * 3600, now)
    assert money is not None and "spent in 12.0 h" in money and "50,000 local core-hours a day" in money
    assert outlives(later, spent, 6 * 3600, now) is None


def test_without_readings_the_users_own_runs_give_the_rate() -> None:
    store = Store()
    profile = load_profile("leonardo-booster")
    run = Run(id="r1", workload="llava", cluster="leonardo-booster", stage=None, run_dir="/x", spec={"nodes": 2},
              created=NOW - 3 * DAY, state="COMPLETED")  # fmt: skip
    store.create_run(run)
    store.update_attempt("r1", 1, started="2027-01-12T10:00:00", ended="2027-01-12T13:00:00", state="COMPLETED")
    attempt = store.attempts("r1")[0]
    assert attempt.submitted > 0
    burn = burn_from_runs(store, "leonardo-booster", profile, attempt.submitted + DAY)
    assert burn is not None and burn.per_day == 2 * 3 * profile.budget.per_node_hour / 14
    assert "your runs from this machine" in burn.source
    assert burn_from_runs(store, "juwels-booster", load_profile("juwels-booster"), time.time()) is None


def test_each_reading_is_kept_and_the_next_call_has_a_rate() -> None:
    store = Store()
    profile = load_profile("leonardo-booster")
    first = [Allocation("EUHPC_D17_084", 50_000, 20_000, "local core-hours", end=dt.date(2027, 3, 1))]
    before = forecasts("leonardo-booster", profile, first, first[0], store, NOW - 2 * DAY)["EUHPC_D17_084"]
    assert before["burn"] is None
    second = [Allocation("EUHPC_D17_084", 50_000, 24_000, "local core-hours", end=dt.date(2027, 3, 1))]
    ahead = forecasts("leonardo-booster", profile, second, second[0], store, NOW)["EUHPC_D17_084"]
    assert ahead["burn"]["per_day"] == 2_000 and ahead["days_left"] == 13
    assert len(store.budget_readings("leonardo-booster", "euhpc_d17_084")) == 2


class _Saldo(LocalTransport):
    """The login node's `saldo -b`, from the recorded fixture (25,000 left on EUHPC_D17_084 until 2027-03-01)."""

    def run(self, argv: Sequence[str], *, timeout: float = 60, **_: object) -> CommandResult:
        assert list(argv) == ["saldo", "-b"], argv
        return CommandResult(tuple(argv), 0, (FIXTURES / "site-commands" / "saldo.txt").read_text(), "")


def test_a_pipeline_whose_later_stages_the_budget_cannot_pay_is_warned_about() -> None:
    """Each stage (20 nodes x 24 h x 32) costs 15,360: the first fits the 25,000 left, the two together do
    not, and the later stage is submitted by the first one's job without asking again."""
    day = dict(account="EUHPC_D17_084", nodes=20, time="24:00:00")
    stages = [prepare_job("llava", "leonardo-booster", Overrides(stage=s, **day)) for s in ("pretrain", "finetune")]  # type: ignore[arg-type]
    with Session() as session:
        report = check_submit_budget(stages[0], _Saldo(), force=False, then=stages[1:])
        assert report["cost"]["amount"] == 15_360 and report["pipeline_cost"] == 30_720
        (warning,) = [w for w in session.warnings if "pipeline" in w]
        assert "2 stages can cost 30,720 local core-hours together" in warning and "25,000 left" in warning
    with Session() as session:
        alone = check_submit_budget(stages[0], _Saldo(), force=False)
        assert "pipeline_cost" not in alone and not [w for w in session.warnings if "pipeline" in w]


def test_a_rate_near_zero_names_no_day() -> None:
    """A few seconds of one small run as the rate put the day past the calendar (OverflowError in submit)."""
    allocation = Allocation("EUHPC_D17_084", 50_000, 25_000, "local core-hours", end=dt.date(2027, 3, 1))
    crawl = burn_from_readings([_reading(2, 25_000 - 1e-6), _reading(0, 25_000)], NOW)
    ahead = forecast(allocation, crawl, TODAY)
    assert ahead["spent_on"] is None and ahead["spent_before_end"] is False and ahead["days_left"] > 1e6
