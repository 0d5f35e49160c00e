"""Options shared by several commands, declared once.

`render`, `submit` and `init` take the same program options and `render` and `submit` the same job options
(17 of them); a command asks for a group by a parameter typed with its class, and `with_options` spreads the
group's fields into the command's signature (what typer reads) and hands the command one value:

    @app.command()
    @with_options
    def render(program: ProgramOptions, job: JobOptions, json_out: JsonOpt = False) -> None: ...
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from hpcai.errors import HpcaiError

if TYPE_CHECKING:  # pydantic models load only for the commands that need them: `--version` stays fast
    from hpcai.spec.jobspec import Overrides
    from hpcai.spec.workloads import Workload

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", "-c", help="Cluster profile (default: config's default_cluster, else local)."),
]
AccountOpt = Annotated[str | None, typer.Option("--account", "-A", help="Account/budget/project to charge.")]
ContainerOpt = Annotated[str | None, typer.Option("--container", help="Container image (.sif) path on the cluster.")]
PartitionOpt = Annotated[str | None, typer.Option("--partition", "-p", help="Partition (Slurm) or queue (PBS).")]
QosOpt = Annotated[str | None, typer.Option("--qos", help="Quality of service.")]
TimeOpt = Annotated[str | None, typer.Option("--time", "-t", help="Walltime, HH:MM:SS or D-HH:MM:SS.")]
RunArg = Annotated[str, typer.Argument(help="Run id: a unique prefix is enough, `last` is the newest run.")]


@dataclass(frozen=True)
class ProgramOptions:
    """What to run: a workload's name, or the user's own program with its launcher and resume settings."""

    target: Annotated[
        str | None,
        typer.Argument(
            help="A workload's name (hpcai workloads list), or your own script: ./train.py -- ARGS.",
            show_default=False,
        ),
    ] = None
    program_args: Annotated[
        list[str] | None,
        typer.Argument(help="Your program's own arguments, after --, passed byte for byte.", show_default=False),
    ] = None
    module: Annotated[
        str | None, typer.Option("--module", "-m", help="Run an installed module: -m pkg.mod -- ARGS.")
    ] = None
    launcher: Annotated[
        str | None,
        typer.Option(
            "--launcher",
            help="Your program's launcher: torchrun (default), accelerate, srun (a task per GPU), python.",
        ),
    ] = None
    accelerate_config: Annotated[
        Path | None,
        typer.Option("--accelerate-config", help="Your accelerate config file (with --launcher accelerate)."),
    ] = None
    resume_args: Annotated[
        str | None,
        typer.Option(
            "--resume-args", help="Added on every later attempt, e.g. '--resume_from_checkpoint {checkpoint}'."
        ),
    ] = None
    checkpoint_pattern: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-pattern", help="Glob of your checkpoints in the run folder, e.g. 'out/checkpoint-*'."
        ),
    ] = None
    metrics_pattern: Annotated[
        str | None,
        typer.Option(
            "--metrics-pattern", help="Regex with (?P<loss>...) (and (?P<step>...)) for your output's loss lines."
        ),
    ] = None
    stop_signal: Annotated[
        str | None, typer.Option("--stop-signal", help="Sent to your program before walltime (USR1).")
    ] = None
    stop_grace: Annotated[
        int | None, typer.Option("--stop-grace", help="Seconds from that signal to SIGTERM (120).")
    ] = None
    hang_timeout: Annotated[
        int | None, typer.Option("--hang-timeout", help="Seconds without output or progress that make a hang (1800).")
    ] = None

    def chosen(self) -> Workload | str:
        """The Workload of `./train.py` / `-m pkg.mod`, or the workload name TARGET."""
        from hpcai.spec.userapp import program_workload

        workload = program_workload(
            self.target, list(self.program_args or ()), module=self.module, launcher=self.launcher,
            accelerate_config=self.accelerate_config, resume_args=self.resume_args,
            checkpoint_pattern=self.checkpoint_pattern, metrics_pattern=self.metrics_pattern,
            stop_signal=self.stop_signal, stop_grace_s=self.stop_grace, hang_timeout_s=self.hang_timeout,
        )  # fmt: skip
        if workload is not None:
            return workload
        if self.target is None:
            raise HpcaiError(
                "submit: name a workload (hpcai workloads list) or your script: hpcai submit ./train.py -- ARGS"
            )
        return self.target


@dataclass(frozen=True)
class JobOptions:
    """Where and how the job runs: the cluster, its resources and the workload's parameters."""

    cluster: ClusterOpt = None
    nodes: Annotated[int | None, typer.Option("--nodes", "-N", help="Number of nodes.")] = None
    spare_nodes: Annotated[
        int | None,
        typer.Option(
            "--spare-nodes",
            help="Extra nodes (Slurm) that take a failed or hung node's place without going back to the queue.",
        ),
    ] = None
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs per node (default: all of the node's).")
    ] = None
    time: TimeOpt = None
    partition: PartitionOpt = None
    qos: QosOpt = None
    account: AccountOpt = None
    name: Annotated[str | None, typer.Option("--name", help="Job name (sanitised for the scheduler).")] = None
    container: ContainerOpt = None
    stage: Annotated[str | None, typer.Option("--stage", help="Workload stage, e.g. pretrain or finetune.")] = None
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE exported in the job (repeatable).")
    ] = None
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Workload parameter KEY=VALUE (repeatable).")
    ] = None
    run_id: Annotated[str | None, typer.Option("--run-id", help="Run id (default: generated).", hidden=True)] = None
    run_dir: Annotated[str | None, typer.Option("--run-dir", help="Run directory (default: from the profile).")] = None
    from_run: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start from a finished run's exported model (<its run dir>/model), e.g. LLaVA stage 2 from stage 1.",
        ),
    ] = None

    def overrides(self, workload: str, **changes: Any) -> Overrides:
        """The overrides of a submission of `workload` (`changes`: stage, set_, run_id or run_dir of one
        stage of a pipeline)."""
        from hpcai.rundir.runids import new_run_id
        from hpcai.spec.jobspec import Overrides, sanitize_job_name

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        run_id = values["run_id"]
        if run_id is not None and sanitize_job_name(run_id) != run_id:
            raise HpcaiError(f"--run-id: '{run_id}' must be letters, digits, _ . - and start with a letter.")
        assignments = _from_run(values["from_run"], workload, values["cluster"], values["set_"])
        return Overrides(
            nodes=values["nodes"], spare_nodes=values["spare_nodes"], gpus_per_node=values["gpus_per_node"],
            time=values["time"], partition=values["partition"], qos=values["qos"], account=values["account"],
            name=values["name"], container=values["container"], stage=values["stage"],
            env=tuple(values["env"] or ()), set=tuple(assignments),
            run_id=run_id or new_run_id(workload, values["stage"]), run_dir=values["run_dir"],
        )  # fmt: skip


def _from_run(from_run: str | None, workload: str, cluster: str | None, set_: list[str] | None) -> list[str]:
    """`--from RUN` as the parameter it stands for: model_path=<RUN's run dir>/model, on RUN's cluster."""
    assignments = list(set_ or ())
    if from_run is None:
        return assignments
    from hpcai.flows.resolve import default_cluster
    from hpcai.spec.profiles import resolve_alias
    from hpcai.store.db import Store

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


_GROUPS = (ProgramOptions, JobOptions)


def with_options(func: F) -> F:
    """`func` with each parameter typed ProgramOptions/JobOptions replaced, in typer's eyes, by that group's
    fields (in the group's order, where the parameter stood); called with one value of the group."""
    own = inspect.signature(func, eval_str=True).parameters.values()
    spread: list[inspect.Parameter] = []
    groups: dict[str, type] = {}
    for parameter in own:
        if parameter.annotation in _GROUPS:
            group = parameter.annotation
            groups[parameter.name] = group
            hints = typing.get_type_hints(group, include_extras=True)
            spread += [
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
                for f in fields(group)
            ]
        else:
            spread.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    def command(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = group(**{f.name: values.pop(f.name) for f in fields(group)})
        return func(**values)

    command.__name__, command.__qualname__, command.__doc__ = func.__name__, func.__qualname__, func.__doc__
    command.__module__ = func.__module__
    command.__signature__ = inspect.Signature(spread)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in spread}
    return command  # type: ignore[return-value]
