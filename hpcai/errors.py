"""Domain errors: each carries a one-paragraph message for people, and the CLI's exit code:
2 the input is wrong (an option, a file, a value), 3 the environment failed (the link to the cluster,
the scheduler, a full disk there), 4 the local run store cannot be used."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HpcaiError(Exception):
    """An error the user can fix; `str(err)` is the whole message (what, where, how to fix)."""

    exit_code = 2


class EnvironmentFailure(HpcaiError):
    """Nothing the user typed is wrong: the cluster, its scheduler or the link to it failed (exit 3)."""

    exit_code = 3


class StoreError(HpcaiError):
    """The local run store (SQLite under the state directory) cannot be read or written (exit 4)."""

    exit_code = 4


class ConfigError(HpcaiError):
    """A profile, workload spec or user config file is malformed."""


class ValidationError(HpcaiError):
    """The requested job does not fit the cluster (limits, walltime, account, syntax of overrides)."""


class NotFoundError(HpcaiError):
    """An unknown cluster, workload, run or stage."""


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' hint naming the closest choices, or '' when none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"'{m}'" for m in matches) + "?"
