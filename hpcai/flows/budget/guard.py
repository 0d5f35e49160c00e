"""Before `submit`: what the run can cost, and a refusal when the account cannot pay for it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from hpcai.backends.session import Session
from hpcai.backends.transport.base import Transport
from hpcai.errors import ValidationError
from hpcai.flows.budget.forecast import forecasts, outlives
from hpcai.flows.budget.query import BudgetUnavailable, find_allocation, job_cost, query_allocations
from hpcai.flows.resolve import RenderedJob
from hpcai.spec.userconfig import load_user_config


def check_submit_budget(
    rendered: RenderedJob, transport: Transport, *, force: bool, then: Sequence[RenderedJob] = ()
) -> dict[str, Any]:
    """Price the job in the site's unit; raise when it cannot fit what is left (unless forced). `then`: a
    pipeline's later stages, which its jobs submit without asking again: warned about when the whole
    pipeline cannot be paid, or outlives the allocation or its money.

    The price is the most the job can be charged: whole nodes for the whole walltime, which is what the
    sites bill when a job runs to its limit. A budget that cannot be read is reported, not fatal."""
    job, profile = rendered.job, rendered.profile
    later = [job_cost(r.profile, r.job.allocated_nodes, r.job.walltime_s).amount for r in then]
    walltime_s = job.walltime_s + sum(r.job.walltime_s for r in then)
    cost = job_cost(profile, job.allocated_nodes, job.walltime_s)
    report: dict[str, Any] = {
        "cost": cost.to_json(),
        "account": job.account,
        "remaining": None,
        "note": None,
        "forecast": None,
    }
    if profile.budget.query is None or job.account is None:
        report["note"] = "no budget command for this cluster" if profile.budget.query is None else "no account"
        return report
    user = load_user_config().for_cluster(job.cluster).user
    try:
        rows = query_allocations(transport, profile, account=job.account, user=user)
    except BudgetUnavailable as exc:
        report["note"] = f"budget not checked: {exc}"
        return report
    allocation = find_allocation(rows, job.account)
    if allocation is None:
        yours = ", ".join(sorted({r.account for r in rows}))
        raise ValidationError(
            f"--account: '{job.account}' is not one of your accounts on {job.cluster} (`{profile.budget.query}` "
            f"lists {yours}). Pass -A with one of those, or fix `account` in config.toml."
        )
    report["remaining"] = allocation.remaining
    outlook = forecasts(job.cluster, profile, rows, allocation)[allocation.account]
    report["forecast"] = outlook
    why = outlives(allocation, outlook, walltime_s, dt.datetime.now(), "pipeline" if then else "job")
    if why is not None:
        Session.current().warn(why)
    if then and cost.amount <= allocation.remaining < cost.amount + sum(later):
        report["pipeline_cost"] = round(cost.amount + sum(later), 2)
        Session.current().warn(
            f"the pipeline's {len(then) + 1} stages can cost {cost.amount + sum(later):,.0f} {cost.unit} together, "
            f"but account '{allocation.account}' has {allocation.remaining:,.0f} left: the later stages may not be "
            "paid for when the first one's job submits them."
        )
    if cost.amount > allocation.remaining and not force:
        others = [r for r in rows if r.remaining >= cost.amount and not r.expired() and r is not allocation]
        other = (
            f" Account {others[0].account} has {others[0].remaining:,.0f} left (-A {others[0].account})."
            if others
            else ""
        )
        raise ValidationError(
            f"this run can cost {cost.amount:,.0f} {cost.unit} ({job.allocated_nodes} node(s) x {cost.hours:g} h x "
            f"{profile.budget.per_node_hour:g} per node-hour), but account '{allocation.account}' has only "
            f"{allocation.remaining:,.0f} left. Lower --nodes or --time, or pass --force-budget to submit anyway "
            f"(the site may refuse or deprioritise it).{other}"
        )
    if cost.amount > allocation.remaining:
        report["note"] = "over budget, submitted because of --force-budget"
    return report
