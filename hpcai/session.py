"""One command's session: user config and cluster profiles read once, at most one connection per cluster,
all closed when the command ends (like torchx's Runner).

The CLI opens one around every command (`with Session():` in `cli.main`); everything below it asks for
`Session.current()` instead of opening its own connection, so staging, the budget check, pre-flight,
submit and status share one SSH login per cluster. Code run outside an active session (tests calling
library functions) gets a fresh session of its own, as before.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hpcai.errors import HpcaiError

if TYPE_CHECKING:
    from hpcai.profiles import ClusterProfile
    from hpcai.schedulers import Scheduler
    from hpcai.transport.base import Transport
    from hpcai.userconfig import ClusterSettings, UserConfig

_ACTIVE: ContextVar[Session | None] = ContextVar("hpcai_session", default=None)


@dataclass
class Backend:
    """A cluster as one command sees it: its profile, the connection to it, and its scheduler."""

    profile: ClusterProfile
    transport: Transport
    scheduler: Scheduler


def transport_for(cluster: str, profile: ClusterProfile, settings: ClusterSettings | None = None) -> Transport:
    """SSH when the user configured `ssh_host` for the cluster; else this machine (the login node)."""
    from hpcai.transport import LocalTransport

    if settings is None:
        from hpcai.userconfig import load_user_config

        settings = load_user_config().for_cluster(cluster)
    if settings.ssh_host is None:
        return LocalTransport()
    if profile.scheduler == "local":
        raise HpcaiError(
            f"config.toml [clusters.{cluster}] ssh_host: the `{cluster}` profile runs jobs on this machine "
            "without a scheduler, so it cannot be reached over SSH. Remove ssh_host there."
        )
    from hpcai.transport.ssh import SshTransport

    hint = profile.access.notes or "Renew your certificate as your site describes."
    return SshTransport(
        settings.ssh_host, renew_hint=hint, certificates_required=profile.access.method == "ssh-certificate"
    )


class Session:
    """Caches for one command; a context manager that makes itself `current` and closes what it opened."""

    def __init__(self) -> None:
        self._config: UserConfig | None = None
        self._profiles: dict[str, ClusterProfile] = {}
        self._backends: dict[str, Backend] = {}
        self._token: Token[Session | None] | None = None
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
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
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
            session._config = None
            session._profiles.clear()

    # -- what a command needs -----------------------------------------------------------------------------

    def config(self, load: Any) -> UserConfig:
        """The user config, read once per session (`load` reads it: userconfig passes its reader)."""
        if self._config is None:
            self._config = load()
        return self._config

    def profile_cached(self, name: str, load: Any) -> ClusterProfile:
        if name not in self._profiles:
            self._profiles[name] = load()
        return self._profiles[name]

    def get(self, cluster: str) -> Backend:
        """The cluster's profile, connection and scheduler; the connection opens on first use."""
        if cluster not in self._backends:
            from hpcai.profiles import load_profile
            from hpcai.schedulers import scheduler_for
            from hpcai.userconfig import load_user_config

            profile = load_profile(cluster)
            transport = transport_for(cluster, profile, load_user_config().for_cluster(cluster))
            self._backends[cluster] = Backend(profile, transport, scheduler_for(profile, transport))
        return self._backends[cluster]

    @property
    def scheduler_calls(self) -> int:
        return sum(b.scheduler.calls for b in self._backends.values())
