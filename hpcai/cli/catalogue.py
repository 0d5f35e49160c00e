"""`hpcai clusters` and `hpcai workloads`: what hpcai knows about sites and what it can run."""

from __future__ import annotations

from typing import Annotated

import typer

from hpcai.cli.options import (
    JsonOpt,
)
from hpcai.cli.output import console, print_json
from hpcai.cli.root import app

clusters_app = typer.Typer(help="Cluster profiles: what hpcai knows about each site.", no_args_is_help=True)
workloads_app = typer.Typer(help="Workloads hpcai can launch.", no_args_is_help=True)
app.add_typer(clusters_app, name="clusters")
app.add_typer(workloads_app, name="workloads")


@clusters_app.command("list")
def clusters_list(json_out: JsonOpt = False) -> None:
    """List the cluster profiles (shipped and your own)."""
    from hpcai.spec.profile_index import profile_summaries

    summaries = profile_summaries()
    if json_out:
        print_json([{k: s[k] for k in ("name", "scheduler", "accelerator", "description")} for s in summaries])
        return
    from rich.table import Table

    table = Table("cluster", "scheduler", "accelerator", "GPUs/node", "description")
    for s in summaries:
        table.add_row(s["name"], s["scheduler"], s["accelerator"], str(s["gpus_per_node"]), s["description"])
    console.print(table)


@clusters_app.command("show")
def clusters_show(
    name: Annotated[str, typer.Argument(help="Cluster profile name.")], json_out: JsonOpt = False
) -> None:
    """Show a cluster profile: limits, node shape, filesystems, budget commands and sources."""
    from hpcai.cli.present import show_profile
    from hpcai.spec.profiles import load_profile, profile_source, resolve_alias

    name = resolve_alias(name)
    profile = load_profile(name)
    if json_out:
        print_json({"name": name, "files": [str(p) for p in profile_source(name)], **profile.model_dump()})
        return
    show_profile(name, profile, profile_source(name))


@workloads_app.command("list")
def workloads_list(json_out: JsonOpt = False) -> None:
    """List the workloads."""
    from rich.table import Table

    from hpcai.spec.workloads import load_workload, workload_names

    loaded = [load_workload(n) for n in workload_names()]
    if json_out:
        print_json([{"name": w.name, "description": w.spec.description, "stages": list(w.spec.stages)} for w in loaded])
        return
    table = Table("workload", "stages", "description")
    for w in loaded:
        table.add_row(w.name, ", ".join(w.spec.stages), w.spec.description)
    console.print(table)


@workloads_app.command("show")
def workloads_show(name: Annotated[str, typer.Argument(help="Workload name.")], json_out: JsonOpt = False) -> None:
    """Show a workload: entrypoint, stages, parameters (for --set), resources and FSDP settings."""
    from hpcai.cli.present import show_workload
    from hpcai.spec.workloads import load_workload

    workload = load_workload(name)
    if json_out:
        print_json({"name": name, "directory": str(workload.directory), **workload.spec.model_dump(),
                    "parameter_help": workload.parameter_help()})  # fmt: skip
        return
    show_workload(workload)
