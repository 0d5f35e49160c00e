"""Reading a run's loss history: a CSV (`step,loss[,grad_norm]`), a metrics JSONL, or any log with a regex."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcai.errors import ValidationError


@dataclass(frozen=True)
class Point:
    step: int
    loss: float
    grad_norm: float | None = None


def _number(text: object) -> float:
    if isinstance(text, int | float):
        return float(text)
    try:
        return float(str(text).strip())
    except ValueError:
        return math.nan  # "nan", "inf" and garbage all count as non-finite


def _step(value: object) -> int | None:
    """A step number, or None for anything that is not one (text, NaN, 1e999, a list)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except (ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) else None


def read_csv(path: Path) -> Iterator[Point]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        if not {"step", "loss"} <= fields:
            raise ValidationError(
                f"{path}: a CSV needs a header with step and loss (and optionally grad_norm); "
                f"found {', '.join(sorted(fields)) or 'no header'}."
            )
        for number, row in enumerate(reader, 2):
            grad = row.get("grad_norm")
            step = _step(row["step"])
            if step is None:
                raise ValidationError(f"{path}:{number}: step '{row['step']}' is not a step number.")
            yield Point(step, _number(row["loss"]), _number(grad) if grad not in (None, "") else None)


def parse_metrics_line(line: str) -> Point | None:
    """One metrics JSONL line, or None for a blank, half-written or step-less line."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or "step" not in record or "loss" not in record:
        return None
    step = _step(record["step"])
    if step is None:
        return None
    grad = record.get("grad_norm")
    return Point(step, _number(record["loss"]), _number(grad) if grad is not None else None)


def parse_log_line(regex: re.Pattern[str], line: str) -> Point | None:
    match = regex.search(line)
    if not match:
        return None
    grad = match.groupdict().get("grad_norm")
    step = _step(match["step"])
    if step is None:
        return None
    return Point(step, _number(match["loss"]), _number(grad) if grad else None)


def compile_log_regex(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValidationError(f"--regex: not a valid regular expression ({exc}).") from exc
    if not {"step", "loss"} <= set(regex.groupindex):
        raise ValidationError(
            "--regex: name the groups, e.g. 'iteration (?P<step>\\d+).*lm loss: (?P<loss>[0-9.e+-]+|nan)'."
        )
    return regex


def read_jsonl(path: Path) -> Iterator[Point]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        point = parse_metrics_line(line)
        if point is None:
            try:
                json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue  # a half-written last line
            raise ValidationError(f"{path}:{number}: a metrics line needs `step` (a number) and `loss`.")
        yield point


def read_log(path: Path, pattern: str) -> Iterator[Point]:
    """Lines matching `pattern`, which names groups `step` and `loss` (and optionally `grad_norm`)."""
    regex = compile_log_regex(pattern)
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            point = parse_log_line(regex, line)
            if point is not None:
                yield point


def kept_points(points: list[Point]) -> list[Point]:
    """The curve a resumed run kept: a step run again (after a resume, a rollback, a requeue) counts once,
    as its last run, in step order. Scanning every run of it listed the same spike once per attempt."""
    last: dict[int, Point] = {}
    for point in points:
        last.pop(point.step, None)
        last[point.step] = point
    return sorted(last.values(), key=lambda p: p.step)


def read_history(path: Path, regex: str | None = None) -> list[Point]:
    try:
        return _read_history(path, regex)
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): binary, or UTF-16 as some "
            "Windows tools write. Give the CSV, metrics .jsonl or log as UTF-8 text."
        ) from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot be read ({exc.strerror or exc}).") from None


def _read_history(path: Path, regex: str | None = None) -> list[Point]:
    if not path.is_file():
        raise ValidationError(f"{path}: no such file. Give a CSV, a metrics .jsonl, or a log with --regex.")
    if regex is not None:
        return list(read_log(path, regex))
    if path.suffix == ".csv":
        return list(read_csv(path))
    if path.suffix in {".jsonl", ".json"}:
        return list(read_jsonl(path))
    raise ValidationError(
        f"{path}: unknown format. Use a .csv (step,loss[,grad_norm]), a metrics .jsonl, or any log with "
        "--regex '(?P<step>...)...(?P<loss>...)'."
    )
