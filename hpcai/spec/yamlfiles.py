"""Load YAML into pydantic models, turning every failure into one readable paragraph."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from hpcai.errors import ConfigError, closest

M = TypeVar("M", bound=pydantic.BaseModel)


def not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    line = exc.object[: exc.start].count(b"\n") + 1
    return (
        f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}). Save the file as UTF-8 "
        "(editors call it 'UTF-8'; `iconv -f latin1 -t utf-8` converts a Latin-1 file)."
    )


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse `path` as a YAML mapping, or raise ConfigError naming the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}). Check the path and permissions.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(not_utf8(path, exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{path}: malformed YAML{where}: {problem}. Fix the syntax there (indentation, a missing "
            "colon or an unclosed quote are the usual causes); `python -c 'import yaml,sys; "
            "yaml.safe_load(open(sys.argv[1]))' FILE` shows the same error."
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of field: value, not a {type(data).__name__}. "
            "Start the file with fields such as `scheduler: slurm`."
        )
    return data


def describe_validation_error(source: str, exc: pydantic.ValidationError, model: type[Any]) -> str:
    """One paragraph naming `source`, each offending field, what is allowed and how to fix it."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            field = str(err["loc"][-1])
            allowed = _allowed_fields(model, err["loc"][:-1])
            hint = closest(field, allowed)
            parts.append(
                f"unknown field '{loc}'.{hint} Allowed here: {', '.join(sorted(allowed))}"
                if allowed
                else f"unknown field '{loc}'.{hint}"
            )
        else:
            given = err.get("input")
            shown = "" if isinstance(given, dict | list) or given is None else f" (got {given!r})"
            parts.append(f"field '{loc}': {err['msg']}{shown}")
    return (
        f"{source}: invalid: " + "; ".join(parts) + ". Fix these fields; `hpcai clusters show NAME` or "
        "`hpcai workloads show NAME` prints a valid example with every field."
    )


def _allowed_fields(model: type[Any], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at `loc` inside `model`, following nested models, lists and dicts."""
    current: Any = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, str) and part in current.model_fields:
            current = _inner_model(current.model_fields[part].annotation)
        # list indexes and dict keys leave the already-unwrapped inner model in place
    return list(current.model_fields) if current is not None else []


def _inner_model(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as `list[Model]`, `dict[str, Model]`, `Model | None`."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def load_model(model: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc, model)) from exc


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursing into mappings; lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
