"""`hpcai status`, `list`, `logs`, `cancel`, `resume`, `sync`, `watch`, `plot`, `nodes`: following and steering runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hpcai.cli.options import (
    JsonOpt,
    RunArg,
)
from hpcai.cli.output import console, error_console, print_json
from hpcai.cli.root import app
from hpcai.errors import HpcaiError


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="Run id, a unique prefix, or `last` (default: all runs).")] = None,
    json_out: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until every run has ended.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 5.0,
) -> None:
    """Ask the schedulers (one call per cluster) and show runs: state, attempt, job, elapsed, step, loss."""
    from hpcai.cli.present import runs_table
    from hpcai.flows.runs.views import status as run_status
    from hpcai.store.db import Store

    store = Store()
    if run is not None and not watch:
        from hpcai.cli.present import show_run_detail
        from hpcai.flows.runs.views import run_detail

        detail = run_detail(store, run)
        if json_out:
            print_json(detail)
        else:
            show_run_detail(detail)
        return
    if not watch:
        views, session = run_status(store, run)
        if json_out:
            print_json([v.to_json() for v in views])
        else:
            console.print(runs_table(views))
        for warning in session.warnings:  # what could not be learnt: said on stderr, --json stays a list
            from rich.markup import escape

            error_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
        return
    from rich.live import Live

    from hpcai.backends.schedulers import JobState
    from hpcai.cli.present import StepRate, watch_summary

    rates = StepRate()
    max_steps: dict[str, int | None] = {}  # a run's spec does not change: read it once, not every poll
    said: dict[str, str] = {}  # off a terminal: one line per run whenever its state or step changes

    def poll() -> tuple[list[Any], dict[str, str]]:
        views, _ = run_status(store, run)
        now = time.monotonic()
        steps = {}
        for v in views:
            if v.run_id not in max_steps:
                value = store.run(v.run_id).spec.get("parameters", {}).get("max_steps")
                max_steps[v.run_id] = value if isinstance(value, int) else None
            described = rates.describe(v, max_steps[v.run_id], now)
            if described is not None:
                steps[v.run_id] = described
        return views, steps

    if console.is_terminal and not json_out:
        with Live(console=console.real, auto_refresh=False) as live:
            while True:
                views, steps = poll()
                live.update(runs_table(views, steps), refresh=True)
                if all(JobState(v.state).terminal for v in views):
                    break
                time.sleep(interval)
    else:  # a pipe, a file, a CI log, --json: progress as lines (on stderr with --json), no redraws
        while True:
            views, steps = poll()
            for v in views:
                line = f"{v.run_id}: {v.state}" + (f", step {steps.get(v.run_id) or v.step}" if v.step else "")
                if said.get(v.run_id) != line:
                    said[v.run_id] = line
                    (error_console if json_out else console).print(line, markup=False, highlight=False)
            if all(JobState(v.state).terminal for v in views):
                break
            time.sleep(interval)
    if json_out:
        print_json([v.to_json() for v in views])
    else:
        console.print(watch_summary(views))
    if any(v.state != JobState.COMPLETED.value for v in views):
        raise typer.Exit(1)  # `hpcai status --watch RUN && next-step` goes on only after a run that completed


@app.command("list")
def list_runs(
    cluster: Annotated[str | None, typer.Option("--cluster", "-c", help="Only runs on this cluster.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List recorded runs from the store, without asking any scheduler."""
    from hpcai.backends.session import Session
    from hpcai.cli.present import runs_table
    from hpcai.flows.runs.views import views
    from hpcai.store.db import Store

    store = Store()
    found = views(store, store.runs(cluster=cluster), Session.current(), with_progress=False)
    if json_out:
        print_json([v.to_json() for v in found])
    else:
        console.print(runs_table(found))


@app.command()
def logs(
    run: RunArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream new lines until the job ends.")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", help="Attempt number (default: latest).")] = None,
    stderr: Annotated[bool, typer.Option("--stderr", help="Show standard error instead of output.")] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="The bytes as written, escape sequences included (default: made visible).")
    ] = False,
) -> None:
    """Print a run's job output (or stderr); -f follows it while the job runs. Escape sequences and other
    control characters are shown as \\x1b and the like (a log may hold what someone else wrote): --raw."""
    from hpcai.flows.runs.control import follow_logs
    from hpcai.rundir.visible import visible_log
    from hpcai.store.db import Store

    def write(text: str) -> None:
        sys.stdout.write(text if raw else visible_log(text))
        sys.stdout.flush()

    follow_logs(Store(), run, attempt_number=attempt, stderr=stderr, follow=follow, write=write)


@app.command()
def cancel(run: RunArg, json_out: JsonOpt = False) -> None:
    """Cancel a run's current job."""
    from hpcai.flows.runs.control import cancel_run
    from hpcai.store.db import Store

    result = cancel_run(Store(), run)
    if json_out:
        print_json(result)
    elif result["cancelled"]:
        console.print(f"cancel requested for run {result['run_id']} (job {result['job_id']})")
    else:
        console.print(f"run {result['run_id']} already finished ({result['state']}); nothing to cancel")


@app.command()
def resume(
    run: RunArg,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="A complete checkpoint, e.g. step-00000200.")
    ] = None,
    from_step: Annotated[
        int | None, typer.Option("--from-step", help="Newest complete checkpoint at or before S.")
    ] = None,
    lr_scale: Annotated[float | None, typer.Option("--lr-scale", help="LR relative to the configured one.")] = None,
    skip_batches: Annotated[int, typer.Option("--skip-batches", help="Batches to skip after the checkpoint.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Submit a run's next attempt by hand (default: from its latest complete checkpoint)."""
    from hpcai.flows.runs.control import resume_run
    from hpcai.store.db import Store

    if checkpoint is not None and from_step is not None:
        raise HpcaiError("--checkpoint and --from-step: give one of them, not both.")
    if skip_batches < 0:
        raise HpcaiError("--skip-batches: give 0 or more.")
    result = resume_run(
        Store(), run, checkpoint=checkpoint, from_step=from_step, lr_scale=lr_scale, skip_batches=skip_batches
    )
    if json_out:
        print_json(result)
    else:
        start = f"step {result['checkpoint_step']}" if result["checkpoint_step"] is not None else "the start"
        console.print(
            f"run {result['run_id']}: attempt {result['attempt']} submitted as job {result['job_id']}, "
            f"from {start}, LR x{result['lr_scale']:g}"
        )


@app.command()
def sync(
    run: RunArg,
    python: Annotated[
        str | None, typer.Option("--python", help="Interpreter with wandb on the login node (default: the job's).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload a run's offline Weights & Biases runs (tracker=wandb) from the login node; only new ones."""
    from contextlib import nullcontext

    from hpcai.flows.runs.sync import sync_run
    from hpcai.store.db import Store

    with console.status(f"wandb sync of run {run}...") if not json_out else nullcontext():
        result = sync_run(Store(), run, python=python)
    if json_out:
        print_json(result)
        return
    for folder in result["synced"]:
        console.print(f"uploaded {folder}")
    if result["already_synced"]:
        console.print(f"{len(result['already_synced'])} offline run(s) were uploaded before; not sent again")


@app.command()
def watch(
    run: RunArg,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between reads.")] = 2.0,
    json_out: JsonOpt = False,
) -> None:
    """Guard a run from here: detect spikes in its metrics or log, cancel and roll back when needed."""
    from hpcai.flows.runs.watch import watch_run
    from hpcai.store.db import Store

    def say(text: str) -> None:
        if not json_out:
            console.print(f"hpcai watch: {text}")

    result = watch_run(Store(), run, say=say, poll_s=interval)
    if json_out:
        print_json(result)
    else:
        console.print(f"hpcai watch: {result['action']}" + (f" ({result.get('reason')})" if "reason" in result else ""))


@app.command()
def plot(
    run: RunArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write a PNG here (needs matplotlib).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Loss (and grad norm) against step across all attempts, spikes and rollbacks marked."""
    from hpcai.flows.runs.plot import load_plot_data, terminal_chart, write_png
    from hpcai.store.db import Store

    data = load_plot_data(Store(), run)
    if output is not None:
        write_png(data, output)
    if json_out:
        print_json(
            {
                "run_id": data.run_id,
                "output": str(output) if output else None,
                "attempts": [
                    {"steps": seg.steps, "loss": seg.losses, "grad_norm": seg.grad_norms} for seg in data.segments
                ],
                "events": [{"kind": kind, "onset_step": onset} for kind, onset in data.spikes],
                "rollbacks": [{"onset_step": onset, "to_step": to} for onset, to in data.rollbacks],
            }
        )
    elif output is None:
        console.print(terminal_chart(data))
    else:
        console.print(f"wrote {output}")


@app.command()
def nodes(
    cluster: Annotated[str | None, typer.Option("--cluster", "-c", help="Only this cluster.")] = None,
    clear: Annotated[
        str | None, typer.Option("--clear", help="Forget the failures of this node (or 'all') on --cluster.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Nodes your runs found failing, per cluster, and which ones later submissions leave out (--exclude).

    A node is left out after one failure of its own (its task died with it, a device/NCCL/RCCL error) or
    two hangs, for 3 days from the failure; --clear forgets it sooner (after the site repaired it)."""
    from rich.table import Table
    from rich.text import Text

    from hpcai.spec.profiles import resolve_alias
    from hpcai.store.db import Store
    from hpcai.store.nodes import exclusions

    store = Store()
    if clear is not None:
        if cluster is None:
            raise HpcaiError("--clear: name the cluster too, e.g. hpcai nodes --clear nid001234 --cluster lumi-g.")
        name = resolve_alias(cluster)
        removed = store.clear_bad_nodes(name, None if clear == "all" else clear)
        if json_out:
            print_json({"cluster": name, "cleared": clear, "records_removed": removed})
        else:
            console.print(f"{name}: forgot {removed} failure record(s) of {'every node' if clear == 'all' else clear}")
        return
    entries = store.bad_nodes(resolve_alias(cluster) if cluster else None)
    rows: list[dict[str, Any]] = []
    for name in sorted({e.cluster for e in entries}):
        mine = [e for e in entries if e.cluster == name]
        out = {x.node: x for x in exclusions(mine)}
        for node_name in sorted({e.node for e in mine}):
            records = [e for e in mine if e.node == node_name]
            excluded = out.get(node_name)
            rows.append({
                "cluster": name, "node": node_name, "excluded": excluded is not None,
                "until": excluded.until if excluded else None, "failures": len(records),
                "reason": excluded.reason if excluded else records[-1].reason,
                "runs": sorted({r.run_id for r in records if r.run_id}),
            })  # fmt: skip
    if json_out:
        print_json({"nodes": rows})
        return
    if not rows:
        console.print("no node failures on record" + (f" for {cluster}" if cluster else ""))
        return
    table = Table("cluster", "node", "left out", "failures", "reason", "runs")
    for row in rows:
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["until"])) if row["until"] else None
        table.add_row(row["cluster"], row["node"], f"until {until}" if until else "no (one hang)",
                      str(row["failures"]), Text(str(row["reason"])), ", ".join(row["runs"]))  # fmt: skip
    console.print(table)
