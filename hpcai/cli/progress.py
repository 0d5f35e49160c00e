"""Progress drawn with rich on stderr: the Reporter the CLI installs for the flows (flows/progress.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hpcai.cli.output import console, error_console


class RichReporter:
    @contextmanager
    def counter(self, description: str, total: int, *, eta: bool = False) -> Iterator[Callable[[int], None]]:
        """A transient byte-count bar on stderr (packing, staging)."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        extra = [TimeRemainingColumn()] if eta else []
        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), *extra, console=error_console.real, transient=True) as bar:  # fmt: skip
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    @contextmanager
    def waiting(self, description: str) -> Iterator[Callable[[str], None]]:
        with console.real.status(description) as status:
            yield lambda text: status.update(text)
