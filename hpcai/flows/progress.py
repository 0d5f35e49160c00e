"""How flows show progress without knowing how it is drawn: a flow asks the installed `Reporter` for a
byte counter or a waiting line; the CLI installs one that draws with rich (cli/progress.py), and a flow
called from a library or a test reports nothing unless one is installed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Reporter(Protocol):
    def counter(
        self, description: str, total: int, *, eta: bool = False
    ) -> AbstractContextManager[Callable[[int], None]]:
        """A byte counter towards `total`: the context gives the function to call with each increment."""

    def waiting(self, description: str) -> AbstractContextManager[Callable[[str], None]]:
        """A line saying what is being waited for: the context gives the function that rewrites it."""


class Quiet:
    """Reports nothing (--json, libraries, tests)."""

    @contextmanager
    def counter(self, description: str, total: int, *, eta: bool = False) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    @contextmanager
    def waiting(self, description: str) -> Iterator[Callable[[str], None]]:
        yield lambda text: None


_INSTALLED: list[Reporter] = [Quiet()]


def install(reporter: Reporter) -> None:
    _INSTALLED[0] = reporter


def reporter(show: bool = True) -> Reporter:
    """The installed reporter, or a quiet one when `show` is false."""
    return _INSTALLED[0] if show else Quiet()
