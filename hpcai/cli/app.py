"""The `hpcai` command line assembled: every command module adds its commands to the root app; `main` runs
the one invoked inside one session. Thin on purpose: a command parses, calls one flow, prints (rich or
--json).

Nothing here imports torch, accelerate or transformers: `hpcai --help` must stay fast.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

# Each module adds its commands to the root app when imported.
from hpcai.cli import catalogue, data, env, move, onboarding, runs, spikes, submit, sweep  # noqa: F401
from hpcai.cli.output import print_error
from hpcai.cli.progress import RichReporter
from hpcai.cli.root import app
from hpcai.errors import HpcaiError
from hpcai.flows.progress import install

__all__ = ["app", "main"]

# `hpcai --help` lists the commands in a newcomer's order: set up, run, follow, steer.
COMMAND_ORDER = ("onboard", "doctor", "budget", "init", "render", "submit", "sweep", "status", "list", "logs",
                 "cancel", "resume", "move", "watch", "plot", "sync", "stage", "nodes")  # fmt: skip
app.registered_commands.sort(key=lambda c: COMMAND_ORDER.index(c.name or getattr(c.callback, "__name__", "")))


def _keep_only_the_invoked_command(root: typer.Typer, argv: list[str]) -> None:
    """Typer builds every command of the app at each start (51 signatures, every annotation evaluated: a
    third of `hpcai clusters list`); only the invoked one is needed. Pruned to it when argv names one; a
    bare `hpcai`, `--help` or a typo keeps them all (the help and "no such command" list every name)."""
    if not argv or argv[0].startswith("-"):
        return
    from typer.main import get_command_name

    def name(command: Any) -> str:
        return str(command.name or get_command_name(command.callback.__name__))

    commands = [c for c in root.registered_commands if name(c) == argv[0]]
    groups = [g for g in root.registered_groups if g.name == argv[0]]
    if commands or groups:
        root.registered_commands, root.registered_groups = commands, groups


def main() -> None:
    from hpcai.backends.session import Session

    for stream in (sys.stdout, sys.stderr):
        # Names from argv or a file may hold bytes that are not UTF-8 (surrogate-escaped): print them
        # escaped instead of failing on the way out.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    install(RichReporter())
    try:
        with Session():  # one connection per cluster for the whole command, closed at its end
            everything = (app.registered_commands, app.registered_groups)
            try:
                _keep_only_the_invoked_command(app, sys.argv[1:])
                app()
            finally:  # the app is a module global: main() may run again in the same process (tests)
                app.registered_commands, app.registered_groups = everything
    except HpcaiError as exc:
        print_error(str(exc))
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print_error("interrupted.")
        raise SystemExit(130) from None
    except Exception as exc:
        sqlite3 = sys.modules.get("sqlite3")  # loaded by whatever opened the store; not imported for --version
        if sqlite3 is not None and isinstance(exc, sqlite3.Error):  # the store broke after it opened
            from hpcai.store.db import store_failure, store_path

            failure = store_failure(store_path(), exc)
            print_error(str(failure))
            raise SystemExit(failure.exit_code) from None
        if not isinstance(exc, OSError):
            raise
        # the last net: a file or folder this machine refused (space, permissions, names)
        where = f" ({exc.filename})" if exc.filename else ""
        print_error(f"{exc.strerror or exc}{where}. Nothing else went wrong; fix that and run the same command again.")
        raise SystemExit(3) from None
