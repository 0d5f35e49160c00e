"""Slurm's maintenance reservations as `submit` reads them (`scontrol -o show reservation` with the cluster's
clock, the partition's nodes from sinfo), from recorded output: which reservations would hold a job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pytest

from hpcai.backends.schedulers.slurm import SlurmScheduler
from hpcai.backends.transport.base import CommandResult
from hpcai.backends.transport.local import LocalTransport

MAINT = (
    "ReservationName=maint_dec StartTime=2026-12-08T06:00:00 EndTime=2026-12-08T18:00:00 Duration=12:00:00 "
    "Nodes={nodes} NodeCnt=4 CoreCnt=288 Features=(null) PartitionName=(null) Flags={flags} TRES=cpu=288 "
    "Users=root Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) Watts=n/a "
    "MaxStartDelay=(null)"
)
HOSTS = {"lrdn[0001-0004]": "lrdn0001 lrdn0002 lrdn0003 lrdn0004", "lrdn[0001-0002]": "lrdn0001 lrdn0002"}


class Recorded(LocalTransport):
    def __init__(self, reservations: str, *, clock: str = "2026-12-07T20:00:00", ok: bool = True) -> None:
        super().__init__()
        self.reservations = reservations
        self.clock = clock
        self.ok = ok
        self.asked: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 60, **_: object) -> CommandResult:  # type: ignore[override]
        self.asked.append(list(argv))
        if argv[0] == "sh":
            out = f"{self.clock}\n{self.reservations}" if self.ok else ""
            return CommandResult(list(argv), 0 if self.ok else 1, out, "" if self.ok else "slurm_load_reservations")
        if argv[0] == "sinfo":
            return CommandResult(list(argv), 0, "boost_usr_prod* lrdn[0001-0004]\nlrd_all_serial lrdn0005\n", "")
        assert argv[:3] == ["scontrol", "show", "hostnames"], argv
        return CommandResult(list(argv), 0, HOSTS.get(argv[3], argv[3]).replace(" ", "\n") + "\n", "")


def test_a_maintenance_on_every_node_holds_any_job() -> None:
    transport = Recorded(MAINT.format(nodes="lrdn[0001-0004]", flags="MAINT,IGNORE_JOBS,SPEC_NODES,ALL_NODES"))
    found = SlurmScheduler(transport).maintenance("boost_usr_prod", 1)
    assert found is not None and found.now == datetime(2026, 12, 7, 20, 0)
    (window,) = found.windows
    assert (window.name, window.start, window.end) == ("maint_dec", datetime(2026, 12, 8, 6), datetime(2026, 12, 8, 18))


@pytest.mark.parametrize(("nodes", "held"), [(2, False), (3, True)])
def test_a_maintenance_on_some_nodes_holds_a_job_only_when_too_few_are_left(nodes: int, held: bool) -> None:
    transport = Recorded(MAINT.format(nodes="lrdn[0001-0002]", flags="MAINT,SPEC_NODES"))
    found = SlurmScheduler(transport).maintenance("boost_usr_prod", nodes)
    assert found is not None and bool(found.windows) is held


@pytest.mark.parametrize(
    "reservations",
    [
        "No reservations in the system",
        MAINT.format(nodes="lrdn[0001-0004]", flags="SPEC_NODES"),  # a user's reservation, not a maintenance
        MAINT.format(nodes="lrdn[0001-0004]", flags="MAINT").replace("2026-12-08T18:00:00", "2026-12-07T19:00:00"),
    ],
)
def test_reservations_that_are_not_maintenance_or_are_over_hold_nothing(reservations: str) -> None:
    found = SlurmScheduler(Recorded(reservations)).maintenance("boost_usr_prod", 1)
    assert found is not None and found.windows == ()


def test_no_answer_or_no_clock_tells_nothing() -> None:
    assert SlurmScheduler(Recorded("", ok=False), retries=0).maintenance("boost_usr_prod", 1) is None
    assert SlurmScheduler(Recorded(MAINT, clock="Mon Dec 7")).maintenance("boost_usr_prod", 1) is None
