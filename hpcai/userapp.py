"""A user's own program as a Workload the planner, renderer and store handle like a built-in one
(the program's spec and its checks: hpcai.appspec)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError as PydanticValidationError

from hpcai.appspec import AppSpec, check_app
from hpcai.errors import ValidationError
from hpcai.workloads import Resources, Workload, WorkloadSpec

_LAUNCHER_NEEDS = {"torchrun": ["torch"], "accelerate": ["accelerate"]}


def app_name(app: AppSpec) -> str:
    """The workload's name in the store and in run ids: the script's stem or the module's last part."""
    base = Path(app.script).stem if app.script else str(app.module).rsplit(".", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._") or "app"
    return cleaned if cleaned[0].isalpha() else f"app-{cleaned}"


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
    from hpcai.appspec import parse_resume_args

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
        from hpcai.appspec import check_stop_signal

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
