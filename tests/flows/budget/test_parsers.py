"""The four sites' budget outputs (in their documented formats) parse into the same allocations."""

from __future__ import annotations

import datetime as dt

import pytest

from hpcai.flows.budget.parsers import PARSERS, BudgetParseError, parse_jutil
from hpcai.flows.budget.query import budget_command, find_allocation, job_cost
from hpcai.spec.profiles import load_profile
from tests.conftest import FIXTURES
from tests.site import BUDGETS, FIXTURE_FILE

EXPECTED = {
    "saldo": {"EUHPC_D17_084": (50000, 25000), "EUHPC_D17_001": (10000, 10002)},
    "jutil": {"jureap1": (480000, 120000), "jureap2": (48000, 48020)},
    "lumi-allocations": {"project_465000123": (1500000, 172200), "project_465000999": (5000, 5001)},
    "sbank": {"MyProj": (10500, 9449.2), "EmptyProj": (2000, 2000)},
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_each_site_format_parses_totals_and_use(fmt: str) -> None:
    rows = PARSERS[fmt]((FIXTURES / "site-commands" / FIXTURE_FILE[fmt]).read_text())
    got = {r.account: (round(r.total, 1), round(r.used, 1)) for r in rows}
    assert got == EXPECTED[fmt]
    good = find_allocation(rows, BUDGETS[fmt]["good"])
    empty = find_allocation(rows, BUDGETS[fmt]["empty"])
    assert good is not None and good.remaining > 0
    assert empty is not None and empty.remaining <= 0
    assert find_allocation(rows, "nobody") is None


def test_saldo_reads_the_grant_period() -> None:
    rows = PARSERS["saldo"]((FIXTURES / "site-commands" / "saldo.txt").read_text())
    assert rows[0].end == dt.date(2027, 3, 1) and not rows[0].expired(dt.date(2026, 11, 23))
    assert rows[0].expired(dt.date(2027, 3, 2))


def test_jutil_without_the_needed_columns_is_reported() -> None:
    with pytest.raises(BudgetParseError):
        parse_jutil("project|system\njureap1|juwels\n")


def test_garbage_gives_no_rows() -> None:
    for parser in PARSERS.values():
        assert parser("Permission denied\nno such command\n") == []


def test_cost_follows_each_sites_billing_rule() -> None:
    assert job_cost(load_profile("lumi-g"), 16, 12 * 3600).amount == 16 * 12 * 4  # GPU-hours: 4 per node-hour
    assert job_cost(load_profile("juwels-booster"), 2, 1800).amount == 2 * 0.5 * 48  # 48 core-hours/node-hour
    assert job_cost(load_profile("polaris"), 10, 3600).amount == 10


def test_budget_command_fills_in_placeholders_as_single_words() -> None:
    profile = load_profile("polaris").model_copy(deep=True)
    budget = profile.budget.model_copy(update={"query": "sbank-list-allocations -p {account}"})
    profile = profile.model_copy(update={"budget": budget})
    assert budget_command(profile, account="My Proj;rm -rf ~", user=None) == [
        "sbank-list-allocations", "-p", "My Proj;rm -rf ~",
    ]  # fmt: skip
