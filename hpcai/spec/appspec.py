"""A user's own training program: `hpcai submit ./train.py -- ARGS` or `-m package.module`.

`AppSpec` is what the user says about the program (script or module, its arguments, the launcher, how it
resumes, how its output shows progress and loss); `app_workload` turns it into a `Workload` the planner,
renderer and store handle like a built-in one. Everything is checked here, before anything is staged or
queued: a missing script, a regex without a `loss` group, an unknown placeholder in the resume arguments
are ValidationErrors (exit 2) naming the option and the fix.

What runs on the nodes is `hpcai.runtime.supervisor` (standard library only): it adds the resume
arguments on later attempts, stops the program before walltime with the signal asked for, reads step and
loss from its output, and names the failing rank's exception.
"""

from __future__ import annotations

import re
import shlex
import signal
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hpcai.errors import ValidationError

Launcher = Literal["accelerate", "torchrun", "srun", "python"]
LAUNCHERS: tuple[str, ...] = ("accelerate", "torchrun", "srun", "python")
# What the resume arguments may name; filled on the node at each attempt (hpcai.runtime.supervisor).
RESUME_PLACEHOLDERS = {
    "checkpoint": "the newest match of --checkpoint-pattern (the argument is left out while none exists)",
    "run_dir": "the run directory",
    "attempt": "the attempt number (1 for the first)",
}
STOP_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class AppSpec(BaseModel):
    """The user's program and how hpcai protects it (every field has a `submit` option of the same name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    script: str | None = Field(default=None, description="The training script, relative to the workload folder")
    module: str | None = Field(default=None, description="Or a module to run with `python -m`")
    args: list[str] = Field(default=[], description="The program's own arguments, passed byte for byte")
    accelerate_config: str | None = Field(
        default=None, description="An accelerate config file passed as --config_file (launcher accelerate)"
    )
    resume_args: list[str] = Field(
        default=[],
        description="Arguments added on every attempt after the first, e.g. ['--resume_from_checkpoint', "
        "'{checkpoint}']; placeholders: " + ", ".join(f"{{{k}}}" for k in RESUME_PLACEHOLDERS),
    )
    checkpoint_pattern: str | None = Field(
        default=None,
        description="Glob (relative to the run directory) of the program's checkpoints, e.g. 'out/checkpoint-*': "
        "the newest one fills {checkpoint}",
    )
    metrics_pattern: str | None = Field(
        default=None,
        description="Regex with a named group `loss` (and optionally `step`, `grad_norm`, `lr`) matched against "
        "each output line; HF Trainer/TRL log dicts, tqdm counters and `step N ... loss: x` prints are read "
        "without it",
    )
    stop_signal: str = Field(default="USR1", description="Signal sent to the program before walltime")
    stop_grace_s: int = Field(
        default=120, ge=0, description="Seconds the program has after the stop signal before SIGTERM"
    )
    hang_timeout_s: int = Field(
        default=1800,
        ge=30,
        description="A hang: no output line and no progress for this long (or 10x the usual time between "
        "progress lines, if longer): stacks saved, the program stopped and restarted from its newest checkpoint",
    )


def _fail(option: str, problem: str, fix: str) -> ValidationError:
    return ValidationError(f"{option}: {problem} {fix}")


def check_metrics_pattern(pattern: str, option: str = "--metrics-pattern") -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise _fail(
            option,
            f"'{pattern}' is not a valid regular expression ({exc}).",
            "Write e.g. --metrics-pattern 'step (?P<step>\\d+) loss (?P<loss>[0-9.eE+-]+)'.",
        ) from exc
    if "loss" not in compiled.groupindex:
        raise _fail(
            option,
            f"'{pattern}' has no named group for the loss.",
            "Name it (?P<loss>...), and the step (?P<step>...) if the line has one.",
        )
    return compiled


def check_resume_args(words: list[str], option: str = "--resume-args") -> None:
    for word in words:
        try:
            fields = [name for _, name, spec, conv in string.Formatter().parse(word) if name is not None]
        except ValueError as exc:
            raise _fail(
                option, f"'{word}' is not a valid template ({exc}).", "Write a literal brace as {{ or }}."
            ) from exc
        unknown = [name for name in fields if name not in RESUME_PLACEHOLDERS]
        if unknown:
            known = ", ".join(f"{{{k}}}" for k in RESUME_PLACEHOLDERS)
            raise _fail(option, f"'{word}' names the unknown placeholder {{{unknown[0]}}}.", f"Use one of {known}.")


def check_stop_signal(name: str) -> str:
    bare = name.upper().removeprefix("SIG")
    if bare not in STOP_SIGNALS or not hasattr(signal, f"SIG{bare}"):
        raise _fail(
            "--stop-signal",
            f"'{name}' is not a signal hpcai sends to a program before walltime.",
            f"Use one of {', '.join(STOP_SIGNALS)} (USR1 is what Lightning expects).",
        )
    return bare


def parse_resume_args(text: str) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise _fail(
            "--resume-args",
            f"'{text}' cannot be split into arguments ({exc}).",
            "Quote it as one shell word, e.g. --resume-args '--resume_from_checkpoint {checkpoint}'.",
        ) from exc
    check_resume_args(words)
    return words


def check_app(app: AppSpec, launcher: str, where: str) -> None:
    """Everything about the program that can be known on this machine; `where` names its folder."""
    if (app.script is None) == (app.module is None):
        raise _fail(
            "submit",
            "give either a script (./train.py) or a module (-m package.module).",
            "For example: hpcai submit ./train.py -- --lr 1e-4",
        )
    if app.module is not None and not _MODULE.fullmatch(app.module):
        raise _fail("-m", f"'{app.module}' is not a Python module name.", "Write it dotted, e.g. -m trl.scripts.sft.")
    if app.script is not None:
        if not app.script.endswith(".py"):
            raise _fail(
                "submit",
                f"'{app.script}' is not a Python script (*.py).",
                "Give the script's path, or -m package.module for an installed program.",
            )
        if not (Path(where) / app.script).is_file():
            raise _fail(
                "submit",
                f"the script {Path(where) / app.script} does not exist.",
                "Check the path (relative to the current folder), or use -m for an installed module.",
            )
    if launcher not in LAUNCHERS:
        raise _fail("--launcher", f"'{launcher}' is not a launcher hpcai knows.", f"Use one of {', '.join(LAUNCHERS)}.")
    if app.accelerate_config is not None and launcher != "accelerate":
        raise _fail(
            "--accelerate-config",
            f"the launcher is {launcher}, which does not read accelerate's config.",
            "Add --launcher accelerate, or leave --accelerate-config out.",
        )
    if app.metrics_pattern is not None:
        check_metrics_pattern(app.metrics_pattern)
    check_resume_args(app.resume_args)
    uses_checkpoint = any("{checkpoint}" in word for word in app.resume_args)
    if uses_checkpoint and not app.checkpoint_pattern:
        raise _fail(
            "--resume-args",
            "names {checkpoint}, and no --checkpoint-pattern says where checkpoints are.",
            "Add e.g. --checkpoint-pattern 'out/checkpoint-*' (relative to the run directory).",
        )
    if app.checkpoint_pattern is not None and (
        app.checkpoint_pattern.startswith("/") or ".." in Path(app.checkpoint_pattern).parts
    ):
        raise _fail(
            "--checkpoint-pattern",
            f"'{app.checkpoint_pattern}' leaves the run directory.",
            "Give a glob relative to the run directory, e.g. 'out/checkpoint-*'.",
        )
    check_stop_signal(app.stop_signal)
