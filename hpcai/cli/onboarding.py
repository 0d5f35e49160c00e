"""`hpcai onboard`, `hpcai doctor`, `hpcai budget`: the commands a newcomer meets first."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from hpcai.cli.options import ClusterOpt, JsonOpt
from hpcai.cli.output import console, print_json
from hpcai.cli.root import app
from hpcai.errors import HpcaiError

_MARK = {"pass": ("✔ pass", "green"), "warn": ("! warn", "yellow"), "fail": ("✘ fail", "red"),
         "skip": ("- skip", "dim")}  # fmt: skip


def _print_check(check: Any) -> None:
    from rich.text import Text

    console.print(Text.assemble(_MARK[check.status], "  ", (f"{check.name:<11}", "bold"), f" {check.summary}"))
    if check.fix:
        console.print(Text.assemble(f"{'':19}", ("fix:", "cyan"), f" {check.fix}"))


def _print_summary(checks: list[Any]) -> None:
    from rich.text import Text

    failed = [c.name for c in checks if c.status == "fail"]
    if not failed:
        console.print("all checks passed.")
    else:
        console.print(Text.assemble((f"{len(failed)} check(s) failed:", "red"), " " + ", ".join(failed)))


def doctor(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Check what a first run needs; each problem comes with its exact fix.

    Config, SSH key and certificate, host key, login, scheduler, account, budget, quota and inodes, purge,
    container runtime, Python, offline settings. Exits 1 when any check fails."""
    from hpcai.flows.onboarding.doctor import exit_code, run_doctor
    from hpcai.flows.resolve import default_cluster

    name = cluster or default_cluster()
    checks = run_doctor(name) if json_out else _doctor_in_words(name)
    code = exit_code(checks)
    if json_out:
        print_json({"cluster": name, "ok": code == 0, "checks": [c.to_json() for c in checks]})
    raise typer.Exit(code)


def _doctor_in_words(cluster: str) -> list[Any]:
    """Run the doctor, printing each check as it finishes, then the summary line."""
    from rich.text import Text

    from hpcai.flows.onboarding.doctor import run_doctor

    console.print(Text.assemble(("hpcai doctor", "bold"), f" for {cluster}"))
    checks = run_doctor(cluster, progress=_print_check)
    _print_summary(checks)
    return checks


def budget(
    workload: Annotated[
        str | None, typer.Argument(help="Price this workload's job (its default nodes and time, or -N/-t).")
    ] = None,
    cluster: ClusterOpt = None,
    nodes: Annotated[int | None, typer.Option("--nodes", "-N", help="Price a job of this many nodes...")] = None,
    time: Annotated[str | None, typer.Option("--time", "-t", help="...running this long (HH:MM:SS).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """What is left of your allocations, and what a job would cost.

    Runs the site's own accounting command (saldo, jutil, lumi-allocations, sbank) on the login node."""
    from rich.table import Table
    from rich.text import Text

    from hpcai.flows.budget.forecast import forecasts
    from hpcai.flows.budget.query import find_allocation, job_cost, query_allocations
    from hpcai.flows.resolve import default_cluster
    from hpcai.spec.profiles import load_profile, resolve_alias
    from hpcai.spec.userconfig import load_user_config
    from hpcai.spec.walltime import parse_walltime

    name = resolve_alias(cluster or default_cluster())
    profile = load_profile(name)
    settings = load_user_config().for_cluster(name)
    cost = None
    if nodes is not None and nodes < 1:
        raise HpcaiError("--nodes: give at least 1.")
    if workload is not None:
        from hpcai.flows.resolve import prepare_job
        from hpcai.spec.jobspec import Overrides

        job = prepare_job(workload, name, Overrides(nodes=nodes, time=time)).job
        cost = job_cost(profile, job.allocated_nodes, job.walltime_s)
    elif nodes is not None or time is not None:
        cost = job_cost(profile, nodes or 1, parse_walltime(time or "01:00:00", source="--time"))
    rows = []
    note = None
    offline = False
    if profile.budget.query is None:
        note = f"the {name} profile names no budget command (budget.query): allocations not shown"
        if cost is None:
            raise HpcaiError(f"budget: {note}. Price a job with -N/-t, or see `hpcai clusters show {name}`.")
    else:
        from hpcai.backends.session import Session

        try:
            transport = Session.current().get(name).transport
            rows = query_allocations(transport, profile, account=settings.account, user=settings.user)
        except HpcaiError as exc:
            if cost is None:
                raise
            # No login (a laptop, a link down, an expired certificate): the price needs only the profile.
            offline = True
            note = (f"allocations not read ({str(exc).rstrip('.')}); the price comes from the profile's billing "
                    "rule alone")  # fmt: skip
    mine = find_allocation(rows, settings.account) if settings.account and rows else None
    outlook = forecasts(name, profile, rows, mine) if rows else {}
    if json_out:
        print_json({
            "cluster": name, "account": settings.account, "unit": profile.budget.unit,
            "billing": profile.budget.billing,
            "allocations": [{**r.to_json(), "forecast": outlook.get(r.account)} for r in rows],
            "cost": cost.to_json() if cost else None,
            "remaining_after": (mine.remaining - cost.amount) if (mine and cost) else None, "note": note,
            "offline": offline,
        })  # fmt: skip
        return
    if note is not None:
        console.print(note + ".")
    if profile.budget.query is not None and not offline:
        table = Table(title=f"{name}: `{profile.budget.query}`")
        for column in ("account", "used", "total", "left", "unit", "ends", "per day", "spent by"):
            table.add_column(column, justify="right" if column in ("used", "total", "left", "per day") else "left")
        for row in rows:
            style = "bold" if mine is row else ("red" if row.remaining <= 0 else None)
            ahead = outlook[row.account]
            spent = (ahead["spent_on"] or "-") + (" (before it ends)" if ahead["spent_before_end"] else "")
            table.add_row(row.account + (" *" if mine is row else ""), f"{row.used:,.0f}", f"{row.total:,.0f}",
                          f"{row.remaining:,.0f}", row.unit, str(row.end or "-"),
                          f"{ahead['burn']['per_day']:,.0f}" if ahead["burn"] else "-", spent, style=style)  # fmt: skip
        console.print(table)
        sources = {a["burn"]["source"] for a in outlook.values() if a["burn"]}
        console.print("per day: " + ("; ".join(sorted(sources)) if sources else "not known yet (hpcai keeps each "
                      "reading of the budget command; a rate needs two at least an hour apart)"))  # fmt: skip
    if profile.budget.billing:
        console.print(f"billing: {profile.budget.billing}")
    if cost is not None:
        line = (f"a job of {cost.nodes} node(s) for {cost.hours:g} h costs at most {cost.amount:,.0f} {cost.unit} "
                f"({profile.budget.per_node_hour:g} per node-hour)")  # fmt: skip
        if mine is not None:
            line += f": {mine.remaining - cost.amount:,.0f} would be left on {mine.account}"
        fits = mine is None or cost.amount <= mine.remaining
        console.print(Text.assemble(line, ("" if fits else " (does not fit)", "red")))


def onboard(
    cluster: ClusterOpt = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your login name on the cluster.")] = None,
    account: Annotated[str | None, typer.Option("--account", "-A", help="Account/project for jobs.")] = None,
    host_alias: Annotated[
        str | None, typer.Option("--host-alias", help="Name of the ~/.ssh/config Host entry.")
    ] = None,
    identity: Annotated[str | None, typer.Option("--identity", "-i", help="SSH private key file.")] = None,
    data_on: Annotated[
        str | None, typer.Option("--data-on", help="Filesystem for staged data (a key of the profile's filesystems).")
    ] = None,
    make_default: Annotated[
        bool | None, typer.Option("--make-default/--not-default", help="Make this cluster the default one.")
    ] = None,
    here: Annotated[
        bool, typer.Option("--here", help="hpcai runs on this cluster's login node: no SSH entry.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Ask nothing: flags and defaults only.")] = False,
    run_doctor: Annotated[bool, typer.Option("--doctor/--no-doctor", help="Run `hpcai doctor` at the end.")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Set up a cluster for you: access steps, SSH entry, config.toml, then `hpcai doctor`.

    Writes the ~/.ssh/config entry as a marked block (with a backup; your own lines are never touched) and
    config.toml (comments kept). In a terminal it asks for what the flags do not give; with --yes or --json
    it asks nothing."""
    from rich.prompt import Confirm, Prompt
    from rich.text import Text

    from hpcai.flows.onboarding.onboard import OnboardRequest
    from hpcai.flows.onboarding.onboard import onboard as do_onboard
    from hpcai.spec.profiles import load_profile

    interactive = sys.stdin.isatty() and not yes and not json_out
    request = OnboardRequest(cluster, user, account, host_alias, identity, data_on, make_default, here)

    def ask(question: str, default: str | None, choices: list[str] | None) -> str:
        if choices and cluster is None and question == "Cluster":
            for name in choices:
                console.print(f"  {name:<18} {load_profile(name).description}")
        return Prompt.ask(question, default=default, choices=choices, console=console.real) or ""

    def confirm(question: str, default: bool) -> bool:
        return Confirm.ask(question, default=default, console=console.real)

    result = do_onboard(
        request,
        ask=ask if interactive else None,
        confirm=confirm if interactive else None,
        explain=_print_steps if interactive else None,
        create_key=_run_keygen if interactive else None,
    )
    checks: list[Any] | None = None
    if json_out:
        if run_doctor:
            from hpcai.flows.onboarding.doctor import run_doctor as doctor_checks

            checks = doctor_checks(result.cluster)
        print_json({**result.to_json(), "doctor": None if checks is None else [c.to_json() for c in checks]})
    else:
        if not interactive:
            _print_steps(result.cluster)
        if result.ssh is not None:
            console.print(result.ssh.reason + (f" Backup: {result.ssh.backup}" if result.ssh.backup else ""))
        config_state = "updated" if result.config.changed else "already up to date"
        backup = f" Backup: {result.config.backup}" if result.config.backup else ""
        console.print(f"{result.config.path}: {config_state}.{backup}")
        for note in result.notes:
            console.print(Text.assemble(("note:", "yellow"), f" {note}"))
        if result.public_key:
            console.print("Your public key, to register with the site as its access steps say (copy the whole line):")
            console.print(result.public_key, soft_wrap=True)
        if run_doctor:
            console.print()
            checks = _doctor_in_words(result.cluster)
    if checks is not None:
        from hpcai.flows.onboarding.doctor import exit_code

        raise typer.Exit(exit_code(checks))


def _run_keygen(argv: list[str]) -> None:
    """ssh-keygen in the user's own terminal: the passphrase never passes through hpcai."""
    import subprocess
    from pathlib import Path

    Path(argv[argv.index("-f") + 1]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if subprocess.run(argv).returncode != 0:
        console.print("ssh-keygen did not create the key; create it by hand as the note says.", style="yellow")


def _print_steps(cluster: str) -> None:
    from hpcai.flows.onboarding.onboard import access_steps
    from hpcai.spec.profiles import load_profile

    steps = access_steps(load_profile(cluster))
    if not steps:
        return
    console.print(f"Getting access to {cluster}", style="bold")
    for number, step in enumerate(steps, 1):
        console.print(f"  {number}. {step}")


app.command()(onboard)
app.command()(doctor)
app.command()(budget)
