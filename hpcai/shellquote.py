"""Shell quoting for rendered scripts: every value is a literal unless the template says otherwise."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

# Variables a profile value may refer to as ${NAME}; they are expanded by the job's shell on the cluster
# (e.g. LUMI's MIOPEN_USER_DB_PATH=/tmp/miopen-config-${USER}). User-supplied values never expand.
PROFILE_VARIABLES = frozenset(
    {"USER", "HOME", "TMPDIR", "SLURM_JOB_ID", "SLURM_JOB_ACCOUNT", "PBS_JOBID", "HPCAI_RUN_DIR"}
)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Expr(str):
    """Shell text written by hpcai's own templates or code, inserted as is (e.g. `"$MASTER_ADDR"`)."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ANSI_C_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _literal(text: str) -> str:
    """One shell word meaning exactly `text`. Control characters (newlines above all) are written as
    bash `$'...'` escapes, so no user value can ever start a line of the script (a `#SBATCH` line, say)."""
    if not _CONTROL.search(text):
        return shlex.quote(text)
    body = "".join(_ANSI_C_ESCAPES.get(ch, f"\\x{ord(ch):02x}" if _CONTROL.match(ch) else ch) for ch in text)
    return f"$'{body}'"


def quote(value: object) -> str:
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return _literal(str(value))


def join(words: Iterable[object]) -> str:
    return " ".join(quote(w) for w in words)


def quote_with_variables(value: str) -> str:
    """Quote `value`, leaving `${NAME}` references to PROFILE_VARIABLES expandable, everything else literal."""
    parts: list[str] = []
    position = 0
    for match in _REFERENCE.finditer(value):
        if match.group(1) not in PROFILE_VARIABLES:
            continue
        if match.start() > position:
            parts.append(_literal(value[position : match.start()]))
        parts.append(f'"${{{match.group(1)}}}"')
        position = match.end()
    if position < len(value) or not parts:
        parts.append(_literal(value[position:]))
    return "".join(parts)
