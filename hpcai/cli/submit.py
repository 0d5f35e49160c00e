"""`hpcai init`, `render` and `submit`: a workload or the user's own program, planned, shown or submitted."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcai.cli.options import (
    JobOptions,
    JsonOpt,
    ProgramOptions,
    with_options,
)
from hpcai.cli.output import console, error_console, print_json
from hpcai.cli.root import app
from hpcai.errors import HpcaiError, ValidationError


@app.command()
@with_options
def init(
    program: ProgramOptions,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing workload.yaml.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write workload.yaml beside your script (./train.py, or -m pkg.mod in this folder): launcher, arguments,
    resume and metrics settings and typed parameters, every field explained. Submit it with
    `hpcai submit ./workload.yaml`."""
    from hpcai.spec.userapp import write_workload_file

    chosen = program.chosen()
    if isinstance(chosen, str):
        raise HpcaiError(f"hpcai init: '{chosen}' is a workload's name; give your script (./train.py) or -m pkg.mod.")
    path = write_workload_file(chosen, force=force)
    if json_out:
        print_json({"workload_file": str(path), "name": chosen.name})
    else:
        console.print(f"wrote {path}; submit it with: hpcai submit {path} --cluster CLUSTER", markup=False)


@app.command()
@with_options
def render(
    program: ProgramOptions,
    job: JobOptions,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the script here.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print (or write with -o) the complete batch script for WORKLOAD (or your script) on a cluster: the one
    `submit` would submit, staged paths included."""
    from hpcai.flows.plan import plan_submit

    chosen = program.chosen()
    workload = chosen if isinstance(chosen, str) else chosen.name

    plan = plan_submit(chosen, job.cluster, job.overrides(workload))
    _emit_script(plan.rendered.script, plan.to_json(), output, json_out)
    _say_warnings()


_YES_HELP = (
    "Submit the built-in demo (tiny model, synthetic data) to a cluster that charges an allocation (a smoke "
    "test); asked for otherwise."
)


@app.command()
@with_options
def submit(
    program: ProgramOptions,
    job: JobOptions,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages",
            help="Several stages as one pipeline, e.g. pretrain,finetune: each starts from the previous one's "
            "exported model; its job is submitted by the previous stage's job when that completes.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the script `render` would, submit nothing.")
    ] = False,
    force_budget: Annotated[
        bool, typer.Option("--force-budget", help="Submit even when the run can cost more than the budget left.")
    ] = False,
    no_preflight: Annotated[
        bool,
        typer.Option(
            "--no-preflight", help="Do not check first that the job's Python imports what the workload needs."
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help=_YES_HELP),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit WORKLOAD -- or your own script, `./train.py -- ARGS` or `-m pkg.mod -- ARGS` -- to a cluster and
    record the run (with --dry-run: print the plan, submit nothing)."""
    from hpcai.flows.plan import execute, plan_submit

    chosen = program.chosen()
    workload = chosen if isinstance(chosen, str) else chosen.name

    if stages is not None:
        if not isinstance(chosen, str):
            raise HpcaiError("--stages: stages belong to a named workload; your own program runs as one job.")
        if job.stage is not None or job.from_run is not None or job.run_dir is not None or job.run_id is not None:
            raise HpcaiError("--stages: give the stages there, without --stage, --from, --run-dir or --run-id.")
        _submit_pipeline(workload, job, stages, dry_run=dry_run, json_out=json_out, force_budget=force_budget,
                         preflight=not no_preflight, yes=yes)  # fmt: skip
        return
    plan = plan_submit(chosen, job.cluster, job.overrides(workload))
    _confirm_demo(plan, yes=yes, dry_run=dry_run)
    if dry_run:
        _emit_script(plan.rendered.script, plan.to_json(), None, json_out)
        _say_warnings()
        if not json_out:
            for action in plan.staging:
                error_console.print(f"would stage {action.what}: {action.local} -> {action.remote_path}")
            error_console.print(f"would run: {shlex.join(plan.submit_command)}")
            if plan.memory is not None:
                error_console.print(f"memory: {plan.memory.line()}", markup=False, highlight=False)
        return
    result = execute(plan, force_budget=force_budget, show_progress=not json_out, preflight=not no_preflight)
    _say_warnings()
    budget = result.pop("budget")
    if json_out:
        print_json({**result, "budget": budget})
    else:
        cost = budget["cost"]
        if budget["remaining"] is not None:
            error_console.print(
                f"cost: at most {cost['amount']:,.0f} {cost['unit']} of {budget['remaining']:,.0f} left on "
                f"{budget['account']}" + (f" ({budget['note']})" if budget["note"] else "")
            )
        elif budget["note"] and budget["note"].startswith("budget not checked"):
            error_console.print(f"[yellow]{budget['note']}[/yellow]")
        console.print(result["run_id"])


def _say_warnings() -> None:
    from rich.markup import escape

    from hpcai.backends.session import Session

    for warning in Session.current().warnings:
        error_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def _confirm_demo(plan: Any, *, yes: bool, dry_run: bool) -> None:
    """The built-in demo on a cluster that charges an allocation: said on a dry run, refused without --yes."""
    from hpcai.flows.plan import demo_spend

    why = None if yes else demo_spend(plan.rendered)
    if why is None:
        return
    if dry_run:
        error_console.print(f"[yellow]warning:[/yellow] {why}", markup=True, highlight=False)
        return
    raise ValidationError(f"submit: {why} Nothing was submitted.")


def _submit_pipeline(
    workload: str, job: JobOptions, stages: str, *, dry_run: bool, json_out: bool, force_budget: bool,
    preflight: bool, yes: bool,
) -> None:  # fmt: skip
    """`--stages a,b,...`: run a now; b is recorded WAITING with model_path = a's export, and a's job
    submits it when a completes (and so on)."""
    from hpcai.flows.plan import execute, execute_waiting, plan_submit

    names = [n.strip() for n in stages.split(",") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise HpcaiError(f"--stages: give two or more different stages, comma-separated (e.g. pretrain,finetune), "
                         f"not '{stages}'.")  # fmt: skip
    plans = []
    previous_dir: str | None = None
    for number, name in enumerate(names):
        assignments = list(job.set_ or ())
        if previous_dir is not None:
            if any(a.split("=", 1)[0].strip() == "model_path" for a in assignments):
                raise HpcaiError("--stages with --set model_path: the later stages start from the earlier ones' "
                                 "models; give model_path to a single --stage run instead.")  # fmt: skip
            assignments.append(f"model_path={previous_dir}/model")
        plan = plan_submit(workload, job.cluster, job.overrides(workload, set_=assignments, stage=name))
        if number == 0 and "model_path" not in plan.rendered.workload.spec.parameters:
            raise HpcaiError(f"--stages: workload '{workload}' takes no model_path, so a stage cannot start from "
                             "the previous one's model.")  # fmt: skip
        plans.append(plan)
        previous_dir = plan.rendered.job.run_dir.rstrip("/")
    _confirm_demo(plans[0], yes=yes, dry_run=dry_run)
    if dry_run:
        if json_out:
            print_json([p.to_json() for p in plans])
            return
        for plan in plans:
            console.print(f"# ---- stage {plan.rendered.job.stage}: run {plan.rendered.job.run_id} ----", markup=False)
            console.print(plan.rendered.script, markup=False, highlight=False)
        return
    first = execute(plans[0], force_budget=force_budget, show_progress=not json_out, preflight=preflight,
                    then=plans[1:])  # fmt: skip
    first.pop("budget")
    results = [first]
    for plan in plans[1:]:
        results.append(execute_waiting(plan, after=results[-1]["run_id"], show_progress=not json_out))
    if json_out:
        print_json({"pipeline": results})
        return
    for result in results:
        after = f"waits for {result['after']}" if result.get("after") else f"job {result['job_id']}"
        console.print(f"{result['run_id']}  ({after})")


def _emit_script(script: str, plan: dict[str, object], output: Path | None, json_out: bool) -> None:
    if output is not None:
        try:
            output.write_text(script, encoding="utf-8")
        except OSError as exc:
            raise HpcaiError(f"-o {output}: cannot write ({exc.strerror}). Choose a writable path.") from exc
    if json_out:
        print_json({**plan, "output": str(output) if output else None})
    elif output is None:
        sys.stdout.write(script)
