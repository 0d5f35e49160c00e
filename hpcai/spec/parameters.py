"""A workload's parameters as typed values: `--set KEY=VALUE` parsed, coerced to the default's type, checked
against the workload's rules (ranges, choices, paths that must exist, JSON lists), and the stage chosen."""

from __future__ import annotations

import math
from pathlib import Path

from hpcai.errors import ValidationError, closest
from hpcai.spec.workloads import Scalar, Workload


def parse_assignments(items: tuple[str, ...], option: str) -> dict[str, str]:
    """`KEY=VALUE` strings into a dict; the value may itself contain `=`."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(
                f"{option}: '{item}' is not KEY=VALUE. Write e.g. {option} "
                + ("NCCL_DEBUG=INFO" if option == "--env" else "lr=3e-4")
                + " (quote the whole argument if the value has spaces)."
            )
        result[key.strip()] = value
    return result


def coerce_parameter(key: str, raw: str, default: Scalar) -> Scalar:
    """`raw` converted to the type of the workload's default for `key`."""
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered in {"true", "1", "yes", "on"}:
                return True
            if lowered in {"false", "0", "no", "off"}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise ValidationError(
            f"--set {key}={raw}: {key} takes a {kind} (its default is {default!r}). Give e.g. --set {key}={default}."
        ) from None
    return raw


def resolve_parameters(workload: Workload, stage: str | None, assignments: dict[str, str]) -> dict[str, Scalar]:
    spec = workload.spec
    params: dict[str, Scalar] = dict(spec.parameters)
    if stage is not None:
        params.update(spec.stages[stage].parameters)
    for key, raw in assignments.items():
        if key not in spec.parameters:
            raise ValidationError(
                f"--set: '{key}' is not a parameter of workload '{workload.name}'.{closest(key, spec.parameters)} "
                f"Parameters: {', '.join(sorted(spec.parameters))} (see `hpcai workloads show {workload.name}`)."
            )
        params[key] = coerce_parameter(key, raw, spec.parameters[key])
    for key, value in params.items():
        check_parameter(workload, key, value, given=key in assignments)
    return params


def check_parameter(workload: Workload, key: str, value: Scalar, *, given: bool) -> None:
    """Ranges, choices and finiteness; paths are made absolute (relative ones name this machine's files)."""
    where = f"--set {key}={value}" if given else f"{key}={value!r} (the workload's default)"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{where}: {key} must be a finite number, not {value}.")
    rule = workload.spec.parameter_rules.get(key)
    if rule is None:
        return
    if rule.choices is not None and value not in rule.choices:
        names = [str(c) for c in rule.choices]
        raise ValidationError(f"{where}: {key} must be one of {', '.join(names)}.{closest(str(value), names)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low = f">= {rule.min:g}" if rule.min is not None else ""
        high = f"<= {rule.max:g}" if rule.max is not None else ""
        if (rule.min is not None and value < rule.min) or (rule.max is not None and value > rule.max):
            raise ValidationError(
                f"{where}: {key} must be {' and '.join(x for x in (low, high) if x)} "
                f"(see `hpcai workloads show {workload.name}`)."
            )


def absolute_paths(workload: Workload, params: dict[str, Scalar], *, here: bool) -> dict[str, Scalar]:
    """Relative path parameters name files on this machine: made absolute here, since the job would
    resolve them against its run directory. One that does not exist is refused. `here`: the cluster's
    files are this machine's (no SSH), so absolute paths are local too."""
    fixed = dict(params)
    for key in workload.spec.path_parameters():
        value = params.get(key)
        if not isinstance(value, str) or not value:
            continue
        local = Path(value).expanduser()
        if not value.startswith("/"):
            if not local.exists():
                raise ValidationError(
                    f"--set {key}={value}: no such file or folder here. A relative path names this machine's "
                    "files (staged to the cluster when it is remote); a path on the cluster must be absolute."
                )
            fixed[key] = str(local.resolve())
        elif not here:
            continue
        rule = workload.spec.parameter_rules[key]
        if rule.json_list and local.exists():
            check_json_lists(key, value, local)
    return fixed


def check_json_lists(key: str, value: str, path: Path) -> None:
    """Each JSON file of the data starts a list (its first character is `[`): a file of another shape would
    end the job at its start, after the queue wait. Only the first bytes are read, whatever the size."""
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    for file in files:
        try:
            with open(file, "rb") as handle:
                head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        except OSError as exc:
            raise ValidationError(f"--set {key}={value}: {file} cannot be read ({exc.strerror or exc}).") from None
        if not head.startswith(b"["):
            shape = "an object" if head.startswith(b"{") else "empty" if not head else "not JSON"
            raise ValidationError(
                f"--set {key}={value}: {file} is {shape}, not a list of samples. A LLaVA data file is a JSON list "
                'of {"id", "image", "conversations"} records (LLaVA-1.5\'s llava_v1_5_mix665k.json is one); '
                "nothing was queued."
            )


def resolve_stage(workload: Workload, requested: str | None) -> str | None:
    stages = workload.spec.stages
    if requested is None:
        return workload.spec.default_stage
    if requested not in stages:
        known = ", ".join(stages) or "(none)"
        raise ValidationError(
            f"--stage: workload '{workload.name}' has no stage '{requested}'.{closest(requested, stages)} "
            f"Stages: {known}."
        )
    return requested
