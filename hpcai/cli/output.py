"""Printing: rich for people, JSON for scripts; errors as one paragraph on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A rich Console made on first use: importing rich.console is a third of the CLI's start-up, and
    `--version` or `--json` output never needs it. Pass `.real` where rich wants a Console instance."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Console | None = None

    @property
    def real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


# stdout carries data (names, paths, descriptions, log lines): never parsed as markup, so a `[/x]` in a
# path prints as typed. Styles are given as Text/style=, not as markup.
console = LazyConsole(highlight=False, soft_wrap=True, markup=False)
error_console = LazyConsole(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/bold red] {_escape(message)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
