"""Printing: rich for people, JSON for scripts; errors as one paragraph on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

# stdout carries data (names, paths, descriptions, log lines): never parsed as markup, so a `[/x]` in a
# path prints as typed. Styles are given as Text/style=, not as markup.
console = Console(highlight=False, soft_wrap=True, markup=False)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/bold red] {_escape(message)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
