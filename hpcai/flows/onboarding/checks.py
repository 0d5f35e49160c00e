"""The result of one doctor check, the order checks are reported in, and the state the checks share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcai.backends.transport.base import Transport
from hpcai.flows.budget.parsers import Allocation
from hpcai.spec.profiles import ClusterProfile
from hpcai.spec.userconfig import ClusterSettings

Status = Literal["pass", "warn", "fail", "skip"]
SEVERITY: dict[Status, int] = {"skip": 0, "pass": 1, "warn": 2, "fail": 3}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "fix": self.fix, **self.details}


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=lambda s: SEVERITY[s]) if statuses else "pass"


def onboard_hint(cluster: str, flag: str = "") -> str:
    """The onboard command for a cluster, as a fix line names it."""
    return f"`hpcai onboard --cluster {cluster}{flag}`"


@dataclass
class Doctor:
    """What the checks share: the cluster, its profile and settings, the connection, results so far."""

    cluster: str
    profile: ClusterProfile
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    transport: Transport | None = None
    remote_user: str | None = None
    allocations: list[Allocation] | None = None
    budget_error: str | None = None
    checks: list[Check] = field(default_factory=list)
    progress: Callable[[Check], None] | None = None  # told of each check as it finishes

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        if self.progress is not None:
            self.progress(check)
        return check

    def skip_rest(self, names: list[str], reason: str) -> None:
        for name in names:
            self.add(Check(name, "skip", reason))
