"""One command's session: user config and cluster profiles read once, at most one connection per cluster,
all closed when the command ends (like torchx's Runner).

The CLI opens one around every command (`with Session():` in `cli.main`); everything below it asks for
`Session.current()` instead of opening its own connection, so staging, the budget check, pre-flight,
submit and status share one SSH login per cluster. Code run outside an active session (tests calling
library functions) gets a fresh session of its own, as before.
"""

from __future__ import annotations

from contextlib import ExitStack
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from hpcai.errors import HpcaiError
from hpcai.spec.read_once import forget, read_once

if TYPE_CHECKING:
    from hpcai.backends.schedulers import Scheduler
    from hpcai.backends.transport.base import Transport
    from hpcai.spec.profiles import ClusterProfile
    from hpcai.spec.userconfig import ClusterSettings

_ACTIVE: ContextVar[Session | None] = ContextVar("hpcai_session", default=None)


@dataclass
class Backend:
    """A cluster as one command sees it: its profile, the connection to it, and its scheduler."""

    profile: ClusterProfile
    transport: Transport
    scheduler: Scheduler


def transport_for(cluster: str, profile: ClusterProfile, settings: ClusterSettings | None = None) -> Transport:
    """SSH when the user configured `ssh_host` for the cluster; else this machine (the login node)."""
    from hpcai.backends.transport import LocalTransport

    if settings is None:
        from hpcai.spec.userconfig import load_user_config

        settings = load_user_config().for_cluster(cluster)
    if settings.ssh_host is None:
        return LocalTransport()
    if profile.scheduler == "local":
        raise HpcaiError(
            f"config.toml [clusters.{cluster}] ssh_host: the `{cluster}` profile runs jobs on this machine "
            "without a scheduler, so it cannot be reached over SSH. Remove ssh_host there."
        )
    from hpcai.backends.transport.ssh import SshTransport

    hint = profile.access.notes or "Renew your certificate as your site describes."
    return SshTransport(
        settings.ssh_host, renew_hint=hint, certificates_required=profile.access.method == "ssh-certificate"
    )


class Session:
    """Caches for one command; a context manager that makes itself `current` and closes what it opened."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self._token: Token[Session | None] | None = None
        self._reads = ExitStack()  # the spec files' read-once scope, open while the session is active
        self.warnings: list[str] = []  # what the command could not learn, said once at its end

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    # -- lifecycle ----------------------------------------------------------------------------------------

    @classmethod
    def current(cls) -> Session:
        """The active session, or a new one (not activated) when none is."""
        return _ACTIVE.get() or cls()

    @classmethod
    def active(cls) -> Session | None:
        return _ACTIVE.get()

    def __enter__(self) -> Session:
        self._token = _ACTIVE.set(self)
        self._reads.enter_context(read_once())
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._reads.close()
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        self.close()

    def close(self) -> None:
        for backend in self._backends.values():
            backend.transport.close()
        self._backends.clear()

    @classmethod
    def settings_changed(cls) -> None:
        """The command itself rewrote config.toml or ~/.ssh/config (onboard): drop what the active session
        read or opened, so what follows (doctor) sees the new settings."""
        session = _ACTIVE.get()
        if session is not None:
            session.close()
        forget()

    # -- what a command needs -----------------------------------------------------------------------------

    def get(self, cluster: str) -> Backend:
        """The cluster's profile, connection and scheduler; the connection opens on first use."""
        if cluster not in self._backends:
            from hpcai.backends.schedulers import scheduler_for
            from hpcai.spec.profiles import load_profile
            from hpcai.spec.userconfig import load_user_config

            profile = load_profile(cluster)
            transport = transport_for(cluster, profile, load_user_config().for_cluster(cluster))
            self._backends[cluster] = Backend(profile, transport, scheduler_for(profile, transport))
        return self._backends[cluster]

    @property
    def scheduler_calls(self) -> int:
        return sum(b.scheduler.calls for b in self._backends.values())
