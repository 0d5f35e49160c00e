"""The `hpcai` command line: parse, call one service function, print (rich or --json). Thin on purpose.

Nothing here imports torch, accelerate or transformers: `hpcai --help` must stay fast.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hpcai import __version__
from hpcai.errors import EnvironmentFailure, HpcaiError, ValidationError
from hpcai.output import console, error_console, print_error, print_json

if TYPE_CHECKING:  # pydantic models load only for the commands that need them: `--version` stays fast
    from hpcai.jobspec import Overrides


app = typer.Typer(
    name="hpcai",
    help="From a EuroHPC allocation to multimodal training that survives loss spikes, walltime and node failures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
clusters_app = typer.Typer(help="Cluster profiles: what hpcai knows about each site.", no_args_is_help=True)
workloads_app = typer.Typer(help="Workloads hpcai can launch.", no_args_is_help=True)
app.add_typer(clusters_app, name="clusters")
app.add_typer(workloads_app, name="workloads")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", "-c", help="Cluster profile (default: config's default_cluster, else local)."),
]
NodesOpt = Annotated[int | None, typer.Option("--nodes", "-N", help="Number of nodes.")]
SpareOpt = Annotated[
    int | None,
    typer.Option(
        "--spare-nodes",
        help="Extra nodes (Slurm) that take a failed or hung node's place without going back to the queue.",
    ),
]
GpusOpt = Annotated[int | None, typer.Option("--gpus-per-node", help="GPUs per node (default: all of the node's).")]
TimeOpt = Annotated[str | None, typer.Option("--time", "-t", help="Walltime, HH:MM:SS or D-HH:MM:SS.")]
PartitionOpt = Annotated[str | None, typer.Option("--partition", "-p", help="Partition (Slurm) or queue (PBS).")]
QosOpt = Annotated[str | None, typer.Option("--qos", help="Quality of service.")]
AccountOpt = Annotated[str | None, typer.Option("--account", "-A", help="Account/budget/project to charge.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Job name (sanitised for the scheduler).")]
ContainerOpt = Annotated[str | None, typer.Option("--container", help="Container image (.sif) path on the cluster.")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="Workload stage, e.g. pretrain or finetune.")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE exported in the job (repeatable).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Workload parameter KEY=VALUE (repeatable).")]
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="Run id (default: generated).", hidden=True)]
RunDirOpt = Annotated[str | None, typer.Option("--run-dir", help="Run directory (default: from the profile).")]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Start from a finished run's exported model (<its run dir>/model), e.g. LLaVA stage 2 from stage 1.",
    ),
]


TargetArg = Annotated[
    str | None,
    typer.Argument(
        help="A workload's name (hpcai workloads list), or your own script: ./train.py -- ARGS.", show_default=False
    ),
]
ProgramArgs = Annotated[
    list[str] | None,
    typer.Argument(help="Your program's own arguments, after --, passed byte for byte.", show_default=False),
]
ModuleOpt = Annotated[str | None, typer.Option("--module", "-m", help="Run an installed module: -m pkg.mod -- ARGS.")]
LauncherOpt = Annotated[
    str | None,
    typer.Option(
        "--launcher", help="Your program's launcher: torchrun (default), accelerate, srun (a task per GPU), python."
    ),
]
AccelerateConfigOpt = Annotated[
    Path | None, typer.Option("--accelerate-config", help="Your accelerate config file (with --launcher accelerate).")
]
ResumeArgsOpt = Annotated[
    str | None,
    typer.Option("--resume-args", help="Added on every later attempt, e.g. '--resume_from_checkpoint {checkpoint}'."),
]
CheckpointPatternOpt = Annotated[
    str | None,
    typer.Option("--checkpoint-pattern", help="Glob of your checkpoints in the run folder, e.g. 'out/checkpoint-*'."),
]
MetricsPatternOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-pattern", help="Regex with (?P<loss>...) (and (?P<step>...)) for your output's loss lines."
    ),
]
StopSignalOpt = Annotated[
    str | None, typer.Option("--stop-signal", help="Sent to your program before walltime (USR1).")
]
StopGraceOpt = Annotated[int | None, typer.Option("--stop-grace", help="Seconds from that signal to SIGTERM (120).")]
HangTimeoutOpt = Annotated[
    int | None, typer.Option("--hang-timeout", help="Seconds without output or progress that make a hang (1800).")
]


def _program(target: str | None, args: list[str] | None, **options: Any) -> Any:
    """The Workload of `submit ./train.py` / `-m pkg.mod`, or the workload name TARGET."""
    from hpcai.userapp import program_workload

    workload = program_workload(target, list(args or ()), **options)
    if workload is not None:
        return workload
    if target is None:
        raise HpcaiError(
            "submit: name a workload (hpcai workloads list) or your script: hpcai submit ./train.py -- ARGS"
        )
    return target


@app.command()
def init(
    target: TargetArg = None,
    program_args: ProgramArgs = None,
    module: ModuleOpt = None,
    launcher: LauncherOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    resume_args: ResumeArgsOpt = None,
    checkpoint_pattern: CheckpointPatternOpt = None,
    metrics_pattern: MetricsPatternOpt = None,
    stop_signal: StopSignalOpt = None,
    stop_grace: StopGraceOpt = None,
    hang_timeout: HangTimeoutOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing workload.yaml.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write workload.yaml beside your script (./train.py, or -m pkg.mod in this folder): launcher, arguments,
    resume and metrics settings and typed parameters, every field explained. Submit it with
    `hpcai submit ./workload.yaml`."""
    from hpcai.userapp import write_workload_file

    chosen = _program(target, program_args, module=module, launcher=launcher, accelerate_config=accelerate_config,
                      resume_args=resume_args, checkpoint_pattern=checkpoint_pattern, metrics_pattern=metrics_pattern,
                      stop_signal=stop_signal, stop_grace_s=stop_grace, hang_timeout_s=hang_timeout)  # fmt: skip
    if isinstance(chosen, str):
        raise HpcaiError(f"hpcai init: '{chosen}' is a workload's name; give your script (./train.py) or -m pkg.mod.")
    path = write_workload_file(chosen, force=force)
    if json_out:
        print_json({"workload_file": str(path), "name": chosen.name})
    else:
        console.print(f"wrote {path}; submit it with: hpcai submit {path} --cluster CLUSTER", markup=False)


def _from_run(from_run: str | None, workload: str, cluster: str | None, set_: list[str] | None) -> list[str]:
    """`--from RUN` as the parameter it stands for: model_path=<RUN's run dir>/model, on RUN's cluster."""
    assignments = list(set_ or ())
    if from_run is None:
        return assignments
    from hpcai.profiles import resolve_alias
    from hpcai.service import default_cluster
    from hpcai.store import Store

    source = Store().run(from_run)
    target = resolve_alias(cluster or default_cluster())
    if source.workload != workload:
        raise HpcaiError(f"--from {source.id}: that run trained '{source.workload}', not '{workload}'.")
    if source.cluster != target:
        raise HpcaiError(
            f"--from {source.id}: that run's model is on cluster '{source.cluster}', not '{target}'; submit with "
            f"--cluster {source.cluster}, or stage the model folder and pass --set model_path=DIR."
        )
    if any(a.split("=", 1)[0].strip() == "model_path" for a in assignments):
        raise HpcaiError("--from and --set model_path=... both name the starting model; give one of them.")
    return [*assignments, f"model_path={source.run_dir.rstrip('/')}/model"]


def _overrides(
    workload: str,
    *,
    nodes: int | None,
    spare_nodes: int | None = None,
    gpus_per_node: int | None,
    time: str | None,
    partition: str | None,
    qos: str | None,
    account: str | None,
    name: str | None,
    container: str | None,
    stage: str | None,
    env: list[str] | None,
    set_: list[str] | None,
    run_id: str | None,
    run_dir: str | None,
) -> Overrides:
    from hpcai.jobspec import Overrides
    from hpcai.runids import new_run_id

    if run_id is not None:
        from hpcai.jobspec import sanitize_job_name

        if sanitize_job_name(run_id) != run_id:
            raise HpcaiError(f"--run-id: '{run_id}' must be letters, digits, _ . - and start with a letter.")
    return Overrides(
        nodes=nodes,
        spare_nodes=spare_nodes,
        gpus_per_node=gpus_per_node,
        time=time,
        partition=partition,
        qos=qos,
        account=account,
        name=name,
        container=container,
        stage=stage,
        env=tuple(env or ()),
        set=tuple(set_ or ()),
        run_id=run_id or new_run_id(workload, stage),
        run_dir=run_dir,
    )


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"hpcai {__version__}\n")  # not rich: its console is a third of the start-up
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """hpcai: render, submit and look after multimodal training jobs on HPC clusters."""


@clusters_app.command("list")
def clusters_list(json_out: JsonOpt = False) -> None:
    """List the cluster profiles (shipped and your own)."""
    from hpcai.profile_index import profile_summaries

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
    from hpcai.present import show_profile
    from hpcai.profiles import load_profile, profile_source, resolve_alias

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

    from hpcai.workloads import load_workload, workload_names

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
    from hpcai.present import show_workload
    from hpcai.workloads import load_workload

    workload = load_workload(name)
    if json_out:
        print_json({"name": name, "directory": str(workload.directory), **workload.spec.model_dump(),
                    "parameter_help": workload.parameter_help()})  # fmt: skip
        return
    show_workload(workload)


@app.command()
def render(
    target: TargetArg = None,
    program_args: ProgramArgs = None,
    module: ModuleOpt = None,
    launcher: LauncherOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    resume_args: ResumeArgsOpt = None,
    checkpoint_pattern: CheckpointPatternOpt = None,
    metrics_pattern: MetricsPatternOpt = None,
    stop_signal: StopSignalOpt = None,
    stop_grace: StopGraceOpt = None,
    hang_timeout: HangTimeoutOpt = None,
    cluster: ClusterOpt = None,
    nodes: NodesOpt = None,
    spare_nodes: SpareOpt = None,
    gpus_per_node: GpusOpt = None,
    time: TimeOpt = None,
    partition: PartitionOpt = None,
    qos: QosOpt = None,
    account: AccountOpt = None,
    name: NameOpt = None,
    container: ContainerOpt = None,
    stage: StageOpt = None,
    env: EnvOpt = None,
    set_: SetOpt = None,
    run_id: RunIdOpt = None,
    run_dir: RunDirOpt = None,
    from_run: FromOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the script here.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print (or write with -o) the complete batch script for WORKLOAD (or your script) on a cluster: the one
    `submit` would submit, staged paths included."""
    from hpcai.plan import plan_submit

    chosen = _program(target, program_args, module=module, launcher=launcher, accelerate_config=accelerate_config,
                      resume_args=resume_args, checkpoint_pattern=checkpoint_pattern, metrics_pattern=metrics_pattern,
                      stop_signal=stop_signal, stop_grace_s=stop_grace, hang_timeout_s=hang_timeout)  # fmt: skip
    workload = chosen if isinstance(chosen, str) else chosen.name

    overrides = _overrides(
        workload, nodes=nodes, spare_nodes=spare_nodes, gpus_per_node=gpus_per_node, time=time,
        partition=partition, qos=qos, account=account, name=name, container=container, stage=stage, env=env,
        set_=_from_run(from_run, workload, cluster, set_), run_id=run_id, run_dir=run_dir,
    )  # fmt: skip
    plan = plan_submit(chosen, cluster, overrides)
    _emit_script(plan.rendered.script, plan.to_json(), output, json_out)


_YES_HELP = (
    "Submit the built-in demo (tiny model, synthetic data) to a cluster that charges an allocation (a smoke "
    "test); asked for otherwise."
)


@app.command()
def submit(
    target: TargetArg = None,
    program_args: ProgramArgs = None,
    module: ModuleOpt = None,
    launcher: LauncherOpt = None,
    accelerate_config: AccelerateConfigOpt = None,
    resume_args: ResumeArgsOpt = None,
    checkpoint_pattern: CheckpointPatternOpt = None,
    metrics_pattern: MetricsPatternOpt = None,
    stop_signal: StopSignalOpt = None,
    stop_grace: StopGraceOpt = None,
    hang_timeout: HangTimeoutOpt = None,
    cluster: ClusterOpt = None,
    nodes: NodesOpt = None,
    spare_nodes: SpareOpt = None,
    gpus_per_node: GpusOpt = None,
    time: TimeOpt = None,
    partition: PartitionOpt = None,
    qos: QosOpt = None,
    account: AccountOpt = None,
    name: NameOpt = None,
    container: ContainerOpt = None,
    stage: StageOpt = None,
    env: EnvOpt = None,
    set_: SetOpt = None,
    run_id: RunIdOpt = None,
    run_dir: RunDirOpt = None,
    from_run: FromOpt = None,
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
    from hpcai.plan import execute, plan_submit

    chosen = _program(target, program_args, module=module, launcher=launcher, accelerate_config=accelerate_config,
                      resume_args=resume_args, checkpoint_pattern=checkpoint_pattern, metrics_pattern=metrics_pattern,
                      stop_signal=stop_signal, stop_grace_s=stop_grace, hang_timeout_s=hang_timeout)  # fmt: skip
    workload = chosen if isinstance(chosen, str) else chosen.name

    if stages is not None:
        if not isinstance(chosen, str):
            raise HpcaiError("--stages: stages belong to a named workload; your own program runs as one job.")
        if stage is not None or from_run is not None or run_dir is not None or run_id is not None:
            raise HpcaiError("--stages: give the stages there, without --stage, --from, --run-dir or --run-id.")
        common = dict(nodes=nodes, spare_nodes=spare_nodes, gpus_per_node=gpus_per_node, time=time,
                      partition=partition, qos=qos, account=account, name=name, container=container, env=env,
                      set_=set_)  # fmt: skip
        _submit_pipeline(workload, cluster, stages, common, dry_run=dry_run, json_out=json_out,
                         force_budget=force_budget, preflight=not no_preflight, yes=yes)  # fmt: skip
        return
    overrides = _overrides(
        workload, nodes=nodes, spare_nodes=spare_nodes, gpus_per_node=gpus_per_node, time=time,
        partition=partition, qos=qos, account=account, name=name, container=container, stage=stage, env=env,
        set_=_from_run(from_run, workload, cluster, set_), run_id=run_id, run_dir=run_dir,
    )  # fmt: skip
    plan = plan_submit(chosen, cluster, overrides)
    _confirm_demo(plan, yes=yes, dry_run=dry_run)
    if dry_run:
        _emit_script(plan.rendered.script, plan.to_json(), None, json_out)
        if not json_out:
            for action in plan.staging:
                error_console.print(f"would stage {action.what}: {action.local} -> {action.remote_path}")
            error_console.print(f"would run: {shlex.join(plan.submit_command)}")
        return
    result = execute(plan, force_budget=force_budget, show_progress=not json_out, preflight=not no_preflight)
    from rich.markup import escape

    from hpcai.session import Session

    for warning in Session.current().warnings:
        error_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
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


def _confirm_demo(plan: Any, *, yes: bool, dry_run: bool) -> None:
    """The built-in demo on a cluster that charges an allocation: said on a dry run, refused without --yes."""
    from hpcai.plan import demo_spend

    why = None if yes else demo_spend(plan.rendered)
    if why is None:
        return
    if dry_run:
        error_console.print(f"[yellow]warning:[/yellow] {why}", markup=True, highlight=False)
        return
    raise ValidationError(f"submit: {why} Nothing was submitted.")


def _submit_pipeline(
    workload: str, cluster: str | None, stages: str, common: dict[str, Any], *, dry_run: bool, json_out: bool,
    force_budget: bool, preflight: bool, yes: bool,
) -> None:  # fmt: skip
    """`--stages a,b,...`: run a now; b is recorded WAITING with model_path = a's export, and a's job
    submits it when a completes (and so on)."""
    from hpcai.plan import execute, execute_waiting, plan_submit

    names = [n.strip() for n in stages.split(",") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise HpcaiError(f"--stages: give two or more different stages, comma-separated (e.g. pretrain,finetune), "
                         f"not '{stages}'.")  # fmt: skip
    plans = []
    previous_dir: str | None = None
    for number, name in enumerate(names):
        assignments = list(common["set_"] or ())
        if previous_dir is not None:
            if any(a.split("=", 1)[0].strip() == "model_path" for a in assignments):
                raise HpcaiError("--stages with --set model_path: the later stages start from the earlier ones' "
                                 "models; give model_path to a single --stage run instead.")  # fmt: skip
            assignments.append(f"model_path={previous_dir}/model")
        overrides = _overrides(workload, **{**common, "set_": assignments}, stage=name, run_id=None, run_dir=None)
        plan = plan_submit(workload, cluster, overrides)
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
    first = execute(plans[0], force_budget=force_budget, show_progress=not json_out, preflight=preflight)
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


data_app = typer.Typer(help="Data sets for the workloads.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def data_synth(
    kind: Annotated[str, typer.Argument(help="llava (conversation JSON) or clip (image-text JSONL).")],
    directory: Annotated[Path, typer.Argument(help="Folder to create.")],
    samples: Annotated[int, typer.Option("--samples", "-n", help="Number of samples.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
    shards: Annotated[
        int, typer.Option("--shards", help="clip: tar shards of this many samples (img2dataset layout) instead")
    ] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Generate a small data set in the real format, with learnable structure (for tests and trials)."""
    import importlib.util

    from hpcai.train.synth import synth_clip, synth_llava

    if importlib.util.find_spec("PIL") is None:
        raise EnvironmentFailure(
            "data synth draws its images with Pillow, which is not installed here. Install the training extra "
            "(pip install 'hpcai[train]') or just Pillow (pip install pillow), then run the same command again."
        )
    directory = directory.expanduser().absolute()  # the hint below must work from any folder

    makers = {"llava": synth_llava, "clip": synth_clip}
    if kind not in makers:
        raise HpcaiError(f"data synth: unknown kind '{kind}'. Use llava or clip.")
    if samples < 1:
        raise HpcaiError("--samples: give at least 1.")
    if shards < 0 or (shards and kind != "clip"):
        raise HpcaiError("--shards: a positive number of samples per shard, for clip only.")
    if shards:
        from hpcai.train.synth import synth_clip_shards

        index = synth_clip_shards(directory, samples=samples, seed=seed, per_shard=shards)[0]
    else:
        index = makers[kind](directory, samples=samples, seed=seed)
    if json_out:
        print_json({"kind": kind, "directory": str(directory), "index": str(index), "samples": samples})
    else:
        console.print(f"{samples} {kind} samples in {directory} (index: {index.name}); use --set data={directory}")


models_app = typer.Typer(help="Pretrained models for the workloads.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("stage")
def models_stage(
    model: Annotated[str, typer.Argument(help="A Hugging Face id in your local cache (org/name) or a model folder.")],
    cluster: ClusterOpt = None,
    revision: Annotated[str, typer.Option("--revision", help="Cached revision (branch or commit).")] = "main",
    to: Annotated[str | None, typer.Option("--to", help="Filesystem of the profile (scratch, work, fast...).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Copy a pretrained model to the cluster (compute nodes are offline) and print the path to pass as
    model_path, vision_tower or language_model."""
    from hpcai.models import resolve
    from hpcai.service import default_cluster
    from hpcai.stage_service import stage_paths

    folder = resolve(model, revision)
    (report,) = stage_paths(cluster or default_cluster(), [folder.path], filesystem=to, show_progress=not json_out,
                            follow_links=True)  # fmt: skip  # a cache snapshot is links into blobs/
    if json_out:
        print_json({**folder.to_json(), **report.to_json()})
        return
    missing = [what for what, ok in (("tokenizer", folder.has_tokenizer), ("image processor", folder.has_processor))
               if not ok]  # fmt: skip
    kind = folder.model_type or "unknown type"
    console.print(f"{model} ({kind}) -> {report.remote_path} ({report.files} files, {report.bytes_total / 1e6:.1f} MB)")
    if missing:
        console.print(f"  (no {' or '.join(missing)} in it: fine for a language model's weights or a vision tower "
                      "only if the workload does not need it)")  # fmt: skip
    console.print(f"  use it with: --set model_path={report.remote_path}  (or vision_tower= / language_model=)")


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
    json_out: JsonOpt = False,
) -> None:
    """Build the cluster's job environment on its login node (pip needs the index there), then check it.

    Where it goes and what it is built on come from the profile's `environment:` section; jobs refuse to
    start on a half-built one."""
    from hpcai.env_service import build_environment, require_ok

    result = build_environment(cluster, account=account, container=container, rebuild=rebuild,
                               show_progress=not json_out)  # fmt: skip
    if json_out:
        print_json(result)
    elif result["state"] == "nothing to build":
        console.print(f"{result['cluster']}: nothing to build: {result['detail']}.")
    else:
        verb = {"built": "built", "ready": "already complete (--rebuild builds it again)"}[result["state"]]
        console.print(f"{result['cluster']}: {result['home']} {verb}")
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

    from hpcai.env_service import check_environment, check_in_job, require_ok

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


spikes_app = typer.Typer(help="Loss spikes and divergence.", no_args_is_help=True)
app.add_typer(spikes_app, name="spikes")


_SCAN_TARGET_HELP = "A run (id, unique prefix, `last`), or a CSV (step,loss[,grad_norm]), metrics .jsonl or log."


@spikes_app.command("scan")
def spikes_scan(
    target: Annotated[str, typer.Argument(help=_SCAN_TARGET_HELP)],
    regex: Annotated[
        str | None, typer.Option("--regex", help="For logs: a regex with named groups step and loss (grad_norm).")
    ] = None,
    floor: Annotated[
        float, typer.Option("--floor", help="Report spikes from this excess over the trend up (0.2 = +20%).", min=0)
    ] = 0.2,
    json_out: JsonOpt = False,
) -> None:
    """Run the spike detector over a run's (or anyone's) loss curve and list what it would have flagged.

    Steps run again after a resume count once (their last run). Excursions that pass the statistics but
    stay below --floor are outliers: counted, not listed."""
    from rich.table import Table

    from hpcai.monitor.history import kept_points, read_history
    from hpcai.monitor.policy import RollbackPolicy, needs_rollback
    from hpcai.monitor.spikes import DetectorConfig, SpikeDetector

    path: Path | str = Path(target)
    if Path(target).exists() or regex is not None or "/" in target or Path(target).suffix:
        points = read_history(Path(target), regex)
    else:  # not a file: a run of the store
        from hpcai.runs.views import run_history
        from hpcai.store import Store

        run, points = run_history(Store(), target)
        path = f"run {run.id}"
    points = kept_points(points)
    if not points:
        raise HpcaiError(f"{path}: no points found" + (" with that --regex." if regex else "."))
    detector = SpikeDetector(DetectorConfig(report_floor=floor))
    for point in points:
        detector.update(point.step, point.loss, point.grad_norm)
    policy = RollbackPolicy()
    events = [{**e.to_json(), "rollback": needs_rollback(e, policy)} for e in detector.events]
    last = detector.outlier_steps[-10:]
    outliers = {"count": detector.outliers, "floor": floor, "last_steps": last}
    if json_out:
        print_json({"file": str(path), "points": len(points), "events": events, "outliers": outliers})
        return
    console.print(f"{path}: {len(points)} points, steps {points[0].step}-{points[-1].step}, {len(events)} events")
    if detector.outliers:
        console.print(
            f"{detector.outliers} smaller outlier(s) below +{floor:.0%}, not listed (last at steps "
            f"{', '.join(map(str, last))})"
        )
    table = Table("kind", "onset", "detected", "loss before", "peak", "after", "status", "rollback?")
    for e in events:
        table.add_row(
            str(e["kind"]), str(e["onset_step"]), str(e["detected_step"]), _fmt(e["loss_before"]),
            _fmt(e["loss_peak"]), _fmt(e["loss_after"]), str(e["status"]), "yes" if e["rollback"] else "no",
        )  # fmt: skip
    console.print(table)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "-"


RunArg = Annotated[str, typer.Argument(help="Run id: a unique prefix is enough, `last` is the newest run.")]


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="Run id, a unique prefix, or `last` (default: all runs).")] = None,
    json_out: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until every run has ended.")] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 5.0,
) -> None:
    """Ask the schedulers (one call per cluster) and show runs: state, attempt, job, elapsed, step, loss."""
    from hpcai.present import runs_table
    from hpcai.runs.views import status as run_status
    from hpcai.store import Store

    store = Store()
    if run is not None and not watch:
        from hpcai.present import show_run_detail
        from hpcai.runs.views import run_detail

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

    from hpcai.present import StepRate, watch_summary
    from hpcai.schedulers import JobState

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
    from hpcai.present import runs_table
    from hpcai.runs.views import views
    from hpcai.session import Session
    from hpcai.store import Store

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
    from hpcai.runs.control import follow_logs
    from hpcai.store import Store
    from hpcai.visible import visible_log

    def write(text: str) -> None:
        sys.stdout.write(text if raw else visible_log(text))
        sys.stdout.flush()

    follow_logs(Store(), run, attempt_number=attempt, stderr=stderr, follow=follow, write=write)


@app.command()
def cancel(run: RunArg, json_out: JsonOpt = False) -> None:
    """Cancel a run's current job."""
    from hpcai.runs.control import cancel_run
    from hpcai.store import Store

    result = cancel_run(Store(), run)
    if json_out:
        print_json(result)
    elif result["cancelled"]:
        console.print(f"cancel requested for run {result['run_id']} (job {result['job_id']})")
    else:
        console.print(f"run {result['run_id']} already finished ({result['state']}); nothing to cancel")


@app.command()
def stage(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to stage.")],
    cluster: ClusterOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="Filesystem of the profile (scratch, work, fast...).")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check every staged byte by sha256 on the cluster; repair damage.")
    ] = False,
    follow_links: Annotated[
        bool, typer.Option("--follow-links", help="Stage what links pointing outside the folder point to.")
    ] = False,
    pack: Annotated[
        bool, typer.Option("--pack", help="Stage a folder of many small files as tar shards (+ its manifests).")
    ] = False,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Target shard size with --pack.")] = "256M",
    squashfs: Annotated[
        bool, typer.Option("--squashfs", help="Stage a folder as one SquashFS image (needs mksquashfs here).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy data, containers or code to the cluster: only what changed moves, resumable, verified."""
    from rich.text import Text

    from hpcai.service import default_cluster
    from hpcai.stage_service import parse_bytes, stage_paths

    shard_bytes = parse_bytes(shard_size, option="--shard-size")
    reports = stage_paths(
        cluster or default_cluster(), paths, filesystem=to, show_progress=not json_out, verify=verify,
        follow_links=follow_links, pack=pack, shard_bytes=shard_bytes, squashfs=squashfs,
    )  # fmt: skip
    if json_out:
        print_json([r.to_json() for r in reports])
        return
    for r in reports:
        sent = f"sent {r.objects_sent} file(s), {r.bytes_sent / 1e6:.1f} MB" if r.objects_sent else "nothing to send"
        links = f", {r.links} link(s)" if r.links else ""
        repaired = "; damaged or missing files repaired" if r.repaired else ""
        size = f"{r.bytes_total / 1e6:.1f} MB"
        console.print(f"{r.source} -> {r.remote_path} ({r.files} files{links}, {size}; {sent}{repaired})")
        if r.packed is not None:
            console.print(f"  packed: {r.packed['files_before']} files as {r.packed['shards']} shard(s) + manifests "
                          f"({r.packed['files_after']} files on the cluster); pass data={r.remote_path}")  # fmt: skip
        if r.squashfs is not None:
            console.print(f"  one SquashFS image holding {r.squashfs['files_before']} files. Mount it where the job "
                          f"runs: in its container with --bind {r.squashfs['bind']} (Apptainer, Singularity; the "
                          f"folder is then /data), or with `squashfuse {r.remote_path} DIR` on a node that has "
                          "squashfuse.", soft_wrap=True)  # fmt: skip
        for warning in r.warnings:
            console.print(Text.assemble(("warning:", "yellow"), f" {warning}"))


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
    from hpcai.runs.control import resume_run
    from hpcai.store import Store

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

    from hpcai.runs.sync import sync_run
    from hpcai.store import Store

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
    from hpcai.store import Store
    from hpcai.watch import watch_run

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
    from hpcai.plotting import load_plot_data, terminal_chart, write_png
    from hpcai.store import Store

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

    from hpcai.nodes import exclusions
    from hpcai.profiles import resolve_alias
    from hpcai.store import Store

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


from hpcai.cli_onboarding import register as _register_onboarding  # noqa: E402 -- after the app's own commands

_register_onboarding(app)


def _keep_only_the_invoked_command(root: typer.Typer, argv: list[str]) -> None:
    """Typer builds every command of the app at each start (51 signatures, every annotation evaluated: a
    third of `hpcai clusters list`); only the invoked one is needed. Pruned to it when argv names one; a
    bare `hpcai`, `--help` or a typo keeps them all (the help and "no such command" list every name)."""
    if not argv or argv[0].startswith("-"):
        return
    from typer.main import get_command_name

    def name(command: Any) -> str:
        return str(command.name or get_command_name(command.callback.__name__))

    commands = [c for c in root.registered_commands if name(c) == argv[0]]
    groups = [g for g in root.registered_groups if g.name == argv[0]]
    if commands or groups:
        root.registered_commands, root.registered_groups = commands, groups


def main() -> None:
    from hpcai.session import Session

    for stream in (sys.stdout, sys.stderr):
        # Names from argv or a file may hold bytes that are not UTF-8 (surrogate-escaped): print them
        # escaped instead of failing on the way out.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        with Session():  # one connection per cluster for the whole command, closed at its end
            everything = (app.registered_commands, app.registered_groups)
            try:
                _keep_only_the_invoked_command(app, sys.argv[1:])
                app()
            finally:  # the app is a module global: main() may run again in the same process (tests)
                app.registered_commands, app.registered_groups = everything
    except HpcaiError as exc:
        print_error(str(exc))
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print_error("interrupted.")
        raise SystemExit(130) from None
    except Exception as exc:
        sqlite3 = sys.modules.get("sqlite3")  # loaded by whatever opened the store; not imported for --version
        if sqlite3 is not None and isinstance(exc, sqlite3.Error):  # the store broke after it opened
            from hpcai.store import store_failure, store_path

            failure = store_failure(store_path(), exc)
            print_error(str(failure))
            raise SystemExit(failure.exit_code) from None
        if not isinstance(exc, OSError):
            raise
        # the last net: a file or folder this machine refused (space, permissions, names)
        where = f" ({exc.filename})" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}. Nothing else went wrong; fix that and run the same command again.")
        raise SystemExit(3) from None
