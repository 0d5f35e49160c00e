"""A user's own program as a Workload the planner, renderer and store handle like a built-in one
(the program's spec and its checks: hpcai.spec.appspec)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError as PydanticValidationError

from hpcai.errors import ValidationError
from hpcai.spec.appspec import AppSpec, check_app
from hpcai.spec.workloads import Resources, Workload, WorkloadSpec

_LAUNCHER_NEEDS = {"torchrun": ["torch"], "accelerate": ["accelerate"]}


def app_name(app: AppSpec) -> str:
    """The workload's name in the store and in run ids: the script's stem or the module's last part."""
    return _clean(Path(app.script).stem if app.script else str(app.module).rsplit(".", 1)[-1])


def app_workload(app: AppSpec, launcher: str, *, directory: Path, time: str = "01:00:00") -> Workload:
    """The user's program as a Workload: code folder `directory` (staged to the cluster like a workload's)."""
    check_app(app, launcher, str(directory))
    spec = WorkloadSpec(
        description=f"your program: {app.script or '-m ' + str(app.module)}",
        entrypoint=app.script or "",
        launcher=launcher,  # type: ignore[arg-type]  # checked by check_app
        parameters={},
        resources=Resources(time=time),
        checkpoint_lead_s=300,
        app=app,
        # What the pre-flight checks the job's Python imports before queueing: the launcher, and the
        # program's top-level package when it is a module (a script's own imports are its business).
        requires=[*_LAUNCHER_NEEDS.get(launcher, []), *([str(app.module).split(".")[0]] if app.module else [])],
    )
    return Workload(name=app_name(app), directory=directory.resolve(), spec=spec)


def is_program(target: str | None) -> bool:
    """Whether `submit TARGET` names a script (a path, or a *.py name) rather than a workload."""
    return target is not None and (target.endswith(".py") or "/" in target or Path(target).is_file())


def program_workload(
    target: str | None,
    args: list[str],
    *,
    module: str | None,
    launcher: str | None,
    accelerate_config: Path | None,
    resume_args: str | None,
    checkpoint_pattern: str | None,
    metrics_pattern: str | None,
    stop_signal: str | None,
    stop_grace_s: int | None,
    hang_timeout_s: int | None,
) -> Workload | None:
    """The command line's program (`submit ./train.py -- ARGS`, `submit -m pkg.mod -- ARGS`) as a Workload;
    None when TARGET is a workload's name and no program option was given."""
    from hpcai.spec.appspec import parse_resume_args

    program_options = {
        "--launcher": launcher,
        "--accelerate-config": accelerate_config,
        "--resume-args": resume_args,
        "--checkpoint-pattern": checkpoint_pattern,
        "--metrics-pattern": metrics_pattern,
        "--stop-signal": stop_signal,
        "--stop-grace": stop_grace_s,
        "--hang-timeout": hang_timeout_s,
    }
    if target is not None and module is None and (found := workload_file(target)) is not None:
        workload = load_program_workload(found)
        app = workload.spec.app
        assert app is not None
        if args:  # `submit ./workload.yaml -- MORE`: after the file's own arguments
            spec = workload.spec.model_copy(update={"app": app.model_copy(update={"args": [*app.args, *args]})})
            workload = workload.model_copy(update={"spec": spec})
        return workload
    if module is None and not is_program(target):
        given = [name for name, value in program_options.items() if value is not None]
        if args or given:
            what = f"'{' '.join(args)}' after --" if args else ", ".join(given)
            raise ValidationError(
                f"submit {target}: {what} is for your own program, and '{target}' is a workload's name. Give the "
                f"script's path (./train.py) or -m package.module; a workload takes --set KEY=VALUE."
            )
        return None
    if module is not None and target is not None:
        args = [target, *args]  # `-m pkg.mod -- ARGS`: click hands the first word after -- to TARGET
        target = None
    script_path = Path(target).expanduser().resolve() if target else None
    directory = script_path.parent if script_path else Path.cwd()
    config = None
    if accelerate_config is not None:
        config_path = accelerate_config.expanduser().resolve()
        if not config_path.is_file():
            raise ValidationError(
                f"--accelerate-config: {accelerate_config} does not exist. Give the path of an accelerate config "
                "file (`accelerate config` writes one), or leave the option out."
            )
        config = str(config_path)
    spec_fields: dict[str, object] = {
        "script": script_path.name if script_path else None,
        "module": module,
        "args": list(args),
        "accelerate_config": config,
        "resume_args": parse_resume_args(resume_args) if resume_args else [],
        "checkpoint_pattern": checkpoint_pattern,
        "metrics_pattern": metrics_pattern,
    }
    if stop_signal is not None:
        from hpcai.spec.appspec import check_stop_signal

        spec_fields["stop_signal"] = check_stop_signal(stop_signal)
    if stop_grace_s is not None:
        spec_fields["stop_grace_s"] = stop_grace_s
    if hang_timeout_s is not None:
        spec_fields["hang_timeout_s"] = hang_timeout_s
    try:
        app = AppSpec.model_validate(spec_fields)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValidationError(f"--{field.replace('_', '-')}: {first['msg']}.") from exc
    return app_workload(app, launcher or "torchrun", directory=directory)


WORKLOAD_FILE = "workload.yaml"


def workload_file(target: str) -> Path | None:
    """`submit ./workload.yaml` or `submit ./folder/` (holding one): the file; None otherwise."""
    path = Path(target).expanduser()
    if path.name == WORKLOAD_FILE and path.is_file():
        return path
    if path.is_dir() and (path / WORKLOAD_FILE).is_file():
        return path / WORKLOAD_FILE
    return None


def load_program_workload(path: Path) -> Workload:
    """A program's workload.yaml (written by `hpcai init`): its folder is the code folder."""
    from hpcai.spec.yamlfiles import load_model, read_yaml_mapping

    spec = load_model(WorkloadSpec, read_yaml_mapping(path), str(path))
    if spec.app is None:
        raise ValidationError(
            f"{path}: has no `app:` section, so it names no program of yours. Put a built-in-style workload in "
            "~/.config/hpcai/workloads/<name>/ and submit it by name, or write this one with `hpcai init ./train.py`."
        )
    directory = path.parent.resolve()
    if spec.app.accelerate_config is not None:
        config = (directory / Path(spec.app.accelerate_config).expanduser()).resolve()
        if not config.is_file():
            raise ValidationError(
                f"{path}: app.accelerate_config: {config} does not exist. Fix the path or remove the field."
            )
        spec = spec.model_copy(update={"app": spec.app.model_copy(update={"accelerate_config": str(config)})})
    assert spec.app is not None
    check_app(spec.app, spec.launcher, str(directory))
    return Workload(name=app_name(spec.app) if directory.name in ("", ".") else _clean(directory.name),
                    directory=directory, spec=spec)  # fmt: skip


def _clean(name: str) -> str:
    """A name fit for run ids and job names: letters, digits, `_ . -`, starting with a letter."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._") or "app"
    return cleaned if cleaned[0].isalpha() else f"app-{cleaned}"


def _yaml(value: object) -> str:
    import json

    return json.dumps(value)  # JSON scalars and lists are YAML


def render_workload_file(workload: Workload) -> str:
    """A workload.yaml for the program, every field explained (what `hpcai init` writes)."""
    app = workload.spec.app
    assert app is not None
    what = f"script: {_yaml(app.script)}" if app.script else f"module: {_yaml(app.module)}"
    return f"""\
# hpcai workload for your own program, written by `hpcai init`. Submit it with
#   hpcai submit {WORKLOAD_FILE} --cluster CLUSTER [--set KEY=VALUE ...] [-- MORE_ARGS]
# description and entrypoint are required; every other field can be left out (its default is shown).
description: {_yaml(workload.spec.description)}
entrypoint: {_yaml(app.script or "")}   # the script, relative to this folder ("" for a module)
# How the program starts on each node: torchrun (one process per GPU), accelerate (accelerate launch,
# one per GPU, your --accelerate-config if any), srun (one Slurm task per GPU), python (one per node).
launcher: {_yaml(workload.spec.launcher)}
# Typed defaults passed to the program as --KEY VALUE after `args`; change one with --set KEY=VALUE.
# Example: parameters: {{lr: 1.0e-4, epochs: 3}}
parameters: {{}}
# Python packages the job's Python must import, checked before queueing (e.g. "transformers>=4.50").
requires: {_yaml(workload.spec.requires)}
resources:
  nodes: {workload.spec.resources.nodes}      # default node count (-N)
  time: {_yaml(workload.spec.resources.time)}   # default walltime (--time)
app:
  {what}
  # The program's own arguments, passed byte for byte before the parameters.
  args: {_yaml(app.args)}
  # Added on every attempt after the first (walltime requeue, rollback, node failure). Placeholders:
  # {{checkpoint}} the newest match of checkpoint_pattern (left out with its option while none exists),
  # {{run_dir}} the run directory, {{attempt}} the attempt number.
  resume_args: {_yaml(app.resume_args)}
  # Where the program writes its checkpoints, relative to the run directory (the job runs there).
  checkpoint_pattern: {_yaml(app.checkpoint_pattern)}
  # A regex naming (?P<loss>...) and optionally (?P<step>...) for output lines hpcai does not read by itself
  # (HF Trainer/TRL dicts, tqdm counters and "step N ... loss: x" it reads without one).
  metrics_pattern: {_yaml(app.metrics_pattern)}
  # Sent to the program before walltime (USR1, USR2, TERM, INT, HUP), then SIGTERM after stop_grace_s.
  stop_signal: {_yaml(app.stop_signal)}
  stop_grace_s: {app.stop_grace_s}
  # No output line for this long (or 10x the usual time between progress lines) is a hang.
  hang_timeout_s: {app.hang_timeout_s}
  # Your accelerate config file (launcher: accelerate), absolute or relative to this folder.
  accelerate_config: {_yaml(app.accelerate_config)}
"""


def write_workload_file(workload: Workload, *, force: bool) -> Path:
    """`hpcai init`: workload.yaml beside the script (in the current folder for a module)."""
    target = workload.directory / WORKLOAD_FILE
    if target.exists() and not force:
        raise ValidationError(
            f"hpcai init: {target} exists already. Edit it, or pass --force to replace it with a new one."
        )
    text = render_workload_file(workload)
    import yaml

    WorkloadSpec.model_validate(yaml.safe_load(text))  # what init writes loads back as it is
    target.write_text(text, encoding="utf-8")
    return target
