"""`hpcai move RUN --to CLUSTER`: a run carried to another cluster from its last checkpoint, one lineage."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from hpcai.cli.options import AccountOpt, ContainerOpt, JsonOpt, PartitionOpt, QosOpt, RunArg, TimeOpt
from hpcai.cli.output import console, error_console, print_json
from hpcai.cli.root import app


@app.command()
def move(
    run: RunArg,
    to: Annotated[str, typer.Option("--to", help="The cluster to go on with the run on.")],
    nodes: Annotated[int | None, typer.Option("--nodes", "-N", help="Nodes there (default: the profile's).")] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs per node there (default: all of the node's).")
    ] = None,
    time: TimeOpt = None,
    partition: PartitionOpt = None,
    qos: QosOpt = None,
    account: AccountOpt = None,
    container: ContainerOpt = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE exported in the job (repeatable).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Change a parameter there, e.g. data=PATH on the new cluster (repeatable)."),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="A complete checkpoint to carry (default: the newest).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; carry and submit nothing.")] = False,
    force_budget: Annotated[
        bool, typer.Option("--force-budget", help="Submit even when the run can cost more than the budget left.")
    ] = False,
    no_preflight: Annotated[
        bool, typer.Option("--no-preflight", help="Do not check first that the job's Python imports what it needs.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Go on with a run on another cluster: its newest complete checkpoint is carried there (verified), resharded
    for the new number of GPUs at the same global batch, and the run keeps one lineage (status, goodput, plot)."""
    from hpcai.cli.submit import _say_warnings
    from hpcai.flows.runs.move import MoveOptions, move_run, plan_move
    from hpcai.store.db import Store

    store = Store()
    options = MoveOptions(to=to, nodes=nodes, gpus_per_node=gpus_per_node, time=time, partition=partition, qos=qos,
                          account=account, container=container, env=tuple(env or ()), set=tuple(set_ or ()),
                          checkpoint=checkpoint)  # fmt: skip
    plan = plan_move(store, run, options)
    if dry_run:
        _say_warnings()
        if json_out:
            print_json(plan.to_json())
            return
        summary = plan.to_json()
        console.print(plan.submit.rendered.script, markup=False, highlight=False)
        error_console.print(
            f"would carry {summary['checkpoint']} (step {plan.step}) from {plan.run.cluster} to "
            f"{summary['to']['run_dir']} on {plan.target}, {summary['from']['processes']} -> "
            f"{summary['to']['processes']} processes, global batch {plan.global_batch}",
            markup=False, highlight=False,
        )  # fmt: skip
        error_console.print(f"would run: {shlex.join(plan.submit.submit_command)}", markup=False, highlight=False)
        return
    result = move_run(store, plan, force_budget=force_budget, show_progress=not json_out, preflight=not no_preflight)
    _say_warnings()
    for note in plan.notes:
        error_console.print(f"[yellow]note:[/yellow] {note}")
    if json_out:
        print_json(result)
    else:
        console.print(
            f"run {result['run_id']}: moved to {result['cluster']} ({result['run_dir']}); attempt {result['attempt']} "
            f"submitted as job {result['job_id']}, from {result['checkpoint']} ({result['files']} files, "
            f"{result['bytes'] / 1e6:,.1f} MB carried)",
            markup=False, highlight=False,
        )  # fmt: skip
