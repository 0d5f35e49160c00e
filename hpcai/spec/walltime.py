"""Walltimes: parse the forms users type, print the forms schedulers want."""

from __future__ import annotations

import re

from hpcai.errors import ValidationError

_FORMS = re.compile(r"(?:(?P<days>\d+)-)?(?P<h>\d{1,3}):(?P<m>\d{2}):(?P<s>\d{2})")


def parse_walltime(text: str, *, source: str = "--time") -> int:
    """Seconds in `HH:MM:SS` or `D-HH:MM:SS` (Slurm's forms); ValidationError otherwise."""
    match = _FORMS.fullmatch(text.strip())
    if match is None:
        raise ValidationError(
            f"{source}: '{text}' is not a walltime. Use HH:MM:SS (e.g. 02:00:00) or D-HH:MM:SS "
            "(e.g. 1-12:00:00 for a day and a half)."
        )
    days = int(match["days"] or 0)
    hours, minutes, seconds = int(match["h"]), int(match["m"]), int(match["s"])
    if minutes >= 60 or seconds >= 60 or (match["days"] is not None and hours >= 24):
        raise ValidationError(
            f"{source}: '{text}' has minutes or seconds over 59 (or hours over 23 after a day count). "
            "Write e.g. 01:30:00, not 00:90:00."
        )
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total == 0:
        raise ValidationError(f"{source}: a walltime of zero cannot run anything. Give e.g. 00:30:00.")
    return total


def slurm_walltime(seconds: int) -> str:
    """`D-HH:MM:SS` when a day or more, else `HH:MM:SS`."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def pbs_walltime(seconds: int) -> str:
    """`H:MM:SS` with hours beyond 24 allowed, as PBS Pro expects."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
