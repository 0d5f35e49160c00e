"""Run a site's budget command on the login node, parse it, and price a job in the site's unit."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from hpcai.backends.transport.base import Transport
from hpcai.errors import HpcaiError
from hpcai.flows.budget.parsers import PARSERS, Allocation, BudgetParseError
from hpcai.spec.profiles import ClusterProfile


class BudgetUnavailable(HpcaiError):
    """The site's budget command could not be run or read; the message says why."""


@dataclass(frozen=True)
class Cost:
    nodes: int
    hours: float
    amount: float
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "hours": round(self.hours, 4), "amount": round(self.amount, 2), "unit": self.unit}


def job_cost(profile: ClusterProfile, nodes: int, walltime_s: int) -> Cost:
    """The most a job can be charged: whole nodes for the whole walltime (what the sites bill)."""
    hours = walltime_s / 3600
    return Cost(nodes, hours, nodes * hours * profile.budget.per_node_hour, profile.budget.unit)


def budget_command(profile: ClusterProfile, *, account: str | None, user: str | None) -> list[str] | None:
    query = profile.budget.query
    if query is None:
        return None
    words = shlex.split(query)
    values = {"account": account, "user": user}
    argv = []
    for word in words:
        for key, value in values.items():
            if f"{{{key}}}" in word:
                if value is None:
                    raise BudgetUnavailable(
                        f"budget.query '{query}' needs your {key}: set `{key}` for this cluster in config.toml "
                        "(or run `hpcai onboard`)."
                    )
                word = word.replace(f"{{{key}}}", value)
        argv.append(word)
    return argv


def query_allocations(
    transport: Transport, profile: ClusterProfile, *, account: str | None, user: str | None
) -> list[Allocation]:
    argv = budget_command(profile, account=account, user=user)
    if argv is None or profile.budget.format is None:
        raise BudgetUnavailable("this cluster's profile names no budget command (budget.query).")
    result = transport.run(argv, timeout=60)
    if not result.ok:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BudgetUnavailable(
            f"`{shlex.join(argv)}` failed with exit code {result.returncode}"
            + (f": {detail[-1]}" if detail else "")
            + ". Check that the command exists on the login node (budget.query in the profile)."
        )
    try:
        rows = PARSERS[profile.budget.format](result.stdout)
    except (BudgetParseError, ValueError, IndexError) as exc:
        raise BudgetUnavailable(f"`{shlex.join(argv)}` printed something hpcai cannot read ({exc}).") from None
    if not rows:
        raise BudgetUnavailable(f"`{shlex.join(argv)}` listed no allocation for you.")
    return rows


def find_allocation(rows: list[Allocation], account: str) -> Allocation | None:
    """The row for `account`; accounts compare case-insensitively (sites print them both ways)."""
    matches = [r for r in rows if r.account.lower() == account.lower()]
    if not matches:
        return None
    active = [r for r in matches if not r.expired()]
    return max(active or matches, key=lambda r: r.remaining)
