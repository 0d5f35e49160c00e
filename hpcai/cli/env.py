"""`hpcai env build` and `env check`: the job environment of a cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from hpcai.cli.options import (
    AccountOpt,
    ClusterOpt,
    ContainerOpt,
    JsonOpt,
    PartitionOpt,
    QosOpt,
    TimeOpt,
)
from hpcai.cli.output import console, print_json
from hpcai.cli.root import app

env_app = typer.Typer(
    help="The job environment: a Python with torch >= 2.6 (FSDP2), accelerate and transformers on the cluster.",
    no_args_is_help=True,
)


app.add_typer(env_app, name="env")


@env_app.command("build")
def env_build(
    cluster: ClusterOpt = None,
    account: AccountOpt = None,
    container: ContainerOpt = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build it again even when it is complete.")] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Download the wheels here, stage them and install without the index there "
            "(automatic where the profile says the login node has no index or another platform).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build the cluster's job environment on its login node, then check it.

    Where it goes and what it is built on come from the profile's `environment:` section; jobs refuse to
    start on a half-built one. Without the package index there (or for another platform): the wheels the
    cluster lacks are downloaded here, staged, and installed offline."""
    from hpcai.flows.jobenv import build_environment, require_ok

    result = build_environment(cluster, account=account, container=container, rebuild=rebuild,
                               show_progress=not json_out, offline=offline)  # fmt: skip
    if json_out:
        print_json(result)
    elif result["state"] == "nothing to build":
        console.print(f"{result['cluster']}: nothing to build: {result['detail']}.")
    else:
        verb = {"built": "built", "ready": "already complete (--rebuild builds it again)"}[result["state"]]
        console.print(f"{result['cluster']}: {result['home']} {verb}")
        if "offline" in result:
            got = result["offline"]
            console.print(f"offline: {len(got['wheels'])} wheel(s) for what the cluster lacked "
                          f"({', '.join(got['missing']) or 'nothing'}), staged to {got['staged']}")  # fmt: skip
        _print_env_check(result["check"])
    if "check" in result:
        require_ok(result["check"])


@env_app.command("check")
def env_check(
    cluster: ClusterOpt = None,
    account: AccountOpt = None,
    container: ContainerOpt = None,
    workload: Annotated[str, typer.Option("--workload", "-w", help="Check for this workload's needs.")] = "llava",
    in_job: Annotated[
        bool, typer.Option("--job", help="Also run the check as a short job on a compute node: GPUs seen, per node.")
    ] = False,
    partition: PartitionOpt = None,
    qos: QosOpt = None,
    time: TimeOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="With --job: seconds to wait for the job.")] = 1800,
    json_out: JsonOpt = False,
) -> None:
    """Run the job's Python as a job would (its modules, container, environment) and report versions and FSDP2.

    On the login node by default; `--job` also submits a one-node job of a few seconds (the `envcheck`
    workload) that reports what a compute node sees, GPUs included. Exits 2 when jobs could not train
    with it, naming the fix."""
    from rich.text import Text

    from hpcai.flows.jobenv import check_environment, check_in_job, require_ok

    result = check_environment(cluster, account=account, container=container, workload=workload)
    if json_out and not in_job:
        print_json(result)
    elif not json_out:
        _print_env_check(result)
    require_ok(result)
    if not in_job:
        return
    job = check_in_job(cluster, account=account, container=container, partition=partition, qos=qos, time=time,
                       wait_s=wait, show_progress=not json_out)  # fmt: skip
    if json_out:
        print_json({**result, "job": job})
        return
    for rank, node in enumerate(job["nodes"]):
        gpus = f"{node.get('gpus', '?')} GPU(s) ({node.get('backend', '?')})"
        names = f": {', '.join(node['gpu_names'])}" if node.get("gpu_names") else ""
        console.print(f"node {rank} {node.get('host', '?')}: torch {node.get('torch', '?')}, {gpus}{names}")
    saw = f" the job on {job['cluster']} saw what it asked for (run {job['run_id']})"
    console.print(Text.assemble(("ok:", "green"), saw))


def _print_env_check(result: dict[str, object]) -> None:
    from rich.text import Text

    console.print(f"{result['cluster']}: jobs use {result['environment']}")
    if not result["checked"]:
        console.print(Text.assemble(("warning:", "yellow"), f" not checked on the login node: {result['summary']}"))
    elif result["ok"]:
        cached = " (remembered)" if result.get("cached") else ""
        console.print(Text.assemble(("ok:", "green"), f" {result['summary']}{cached}"))
