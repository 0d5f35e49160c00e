"""Spec files read once per command: a command opens a scope (its session does), and `load_profile` /
`load_user_config` reuse within it what they read. Outside a scope every call reads the files.

This lives with the spec (not the session) so the spec imports nothing above it: the session opens and
closes the scope, the loaders only ask it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

_SCOPE: ContextVar[dict[str, object] | None] = ContextVar("hpcai_read_once", default=None)


@contextmanager
def read_once() -> Iterator[None]:
    """Within this block each spec file is read and validated at most once."""
    token = _SCOPE.set({})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def remembered(key: str, load: Callable[[], T]) -> T:
    """`load()`'s value, read once per scope under `key`; read every time outside a scope."""
    scope = _SCOPE.get()
    if scope is None:
        return load()
    if key not in scope:
        scope[key] = load()
    return scope[key]  # type: ignore[return-value]


def forget() -> None:
    """The command itself rewrote a spec file (onboard writes config.toml): read them again from here on."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.clear()
