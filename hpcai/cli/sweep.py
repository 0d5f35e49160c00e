"""`hpcai sweep`: a grid of a workload's parameters as one Slurm job array; `sweep status|cancel|resume SWEEP`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hpcai.cli.options import JobOptions, JsonOpt, with_options
from hpcai.cli.output import console, error_console, print_json
from hpcai.cli.root import app
from hpcai.errors import HpcaiError

ACTIONS = ("status", "cancel", "resume")


@app.command()
@with_options
def sweep(
    target: Annotated[str, typer.Argument(help="The workload to sweep; or status, cancel, resume (of SWEEP).")],
    sweep_id: Annotated[
        str | None, typer.Argument(help="With status/cancel/resume: the sweep's id or a prefix.")
    ] = None,
    job: JobOptions = JobOptions(),
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", "-g", help="NAME=V1,V2,... (repeatable: the points are every combination)."),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", help="Points running at once (the array's %N; default: all).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the array script, submit nothing.")] = False,
    force_budget: Annotated[
        bool, typer.Option("--force-budget", help="Submit even when the points can cost more than the budget left.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run every combination of --grid values as one Slurm job array (each point a run of its own), or show,
    cancel or resume a sweep."""
    from hpcai.store.db import Store

    if target in ACTIONS:
        if sweep_id is None:
            raise HpcaiError(f"sweep {target}: name the sweep (its id, or a unique prefix; `hpcai sweep` printed it).")
        _act(Store(), target, sweep_id, json_out)
        return
    if sweep_id is not None:
        raise HpcaiError(f"sweep {target}: unexpected '{sweep_id}'; the points come from --grid.")
    if job.run_id is not None:
        raise HpcaiError("sweep: each point gets its own run id; leave out --run-id.")
    from hpcai.flows.resolve import default_cluster
    from hpcai.flows.runs.sweep import plan_sweep, submit_sweep

    plan = plan_sweep(target, job.cluster or default_cluster(), job.overrides(target), grid or [], max_parallel)
    if dry_run:
        if json_out:
            print_json(plan.to_json())
        else:
            console.print(plan.script, markup=False, highlight=False)
            error_console.print(f"would queue {len(plan.points)} points, {plan.parallel} at once, as {plan.sweep_id}")
        return
    result = submit_sweep(plan, force_budget=force_budget, show_progress=not json_out)
    from hpcai.cli.submit import _say_warnings

    _say_warnings()
    if json_out:
        print_json(result)
        return
    error_console.print(f"job array {result['job_id']}: {len(result['runs'])} points, {result['parallel']} at once")
    console.print(result["sweep"])


def _act(store: object, action: str, sweep_id: str, json_out: bool) -> None:
    from hpcai.flows.runs.sweep import cancel_sweep, resume_sweep, sweep_status
    from hpcai.store.db import Store

    assert isinstance(store, Store)
    if action == "status":
        shown = sweep_status(store, sweep_id)
        if json_out:
            print_json(shown)
            return
        table = Table(title=f"sweep {shown['sweep']} on {shown['cluster']}")
        for column in ("#", "point", "run", "state", "step", "loss"):
            table.add_column(column)
        for row in shown["points"]:
            mark = " *" if row["run_id"] == shown["best"] else ""
            loss = f"{row['loss']:.4f}" if row["loss"] is not None else "-"
            point = " ".join(f"{k}={v}" for k, v in row["point"].items())
            step = str(row["step"] if row["step"] is not None else "-")
            table.add_row(str(row["index"]), point, row["run_id"] + mark, row["state"], step, loss)
        console.print(table)
        if shown["best"]:
            console.print(f"best ({shown['metric']}{'' if shown['best_final'] else ', none completed yet'}): "
                          f"{shown['best']}")  # fmt: skip
        return
    results = cancel_sweep(store, sweep_id) if action == "cancel" else resume_sweep(store, sweep_id)
    if json_out:
        print_json(results)
        return
    for result in results:
        console.print(f"{result['run_id']}: " + ", ".join(f"{k} {v}" for k, v in result.items() if k != "run_id"))
