"""Parsers for the sites' budget commands, each written against the format the site documents.

- CINECA `saldo -b`: a fixed table (account, start, end, total, localCluster consumed, totConsumed,
  totConsumed %, monthTotal, monthConsumed), hours in "local h". Source: docs.hpc.cineca.it/hpc/hpc_intro.html
- JSC `jutil user cpuquota -o parsable`: JSC documents the flags (`-o rows|columns|parsable`), not the
  columns, so columns are found by their header names (budget/project, total/quota, used), `|`-separated.
  Source: apps.fz-juelich.de/jsc/hps/jureca/accounting.html
- LUMI `lumi-allocations`: `Data updated: ...`, then one `|`-separated row per project with
  `used/allocated (pct%)` for CPU core-hours, GPU-hours and storage TB-hours. Source: the LUMI-tools
  user notes (github.com/Lumi-supercomputer/LUMI-SoftwareStack, lumi-tools) and docs.lumi-supercomputer.eu
- ALCF `sbank-list-allocations`: columns Allocation, Suballocation, Start, End, Resource, Project, Jobs,
  Charged, Available Balance, then a Totals block. Source: docs.alcf.anl.gov (sbank example commands)
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Allocation:
    account: str
    total: float
    used: float
    unit: str
    end: dt.date | None = None
    resource: str | None = None

    @property
    def remaining(self) -> float:
        return self.total - self.used

    @property
    def used_fraction(self) -> float:
        return self.used / self.total if self.total > 0 else 1.0

    def expired(self, today: dt.date | None = None) -> bool:
        return self.end is not None and (today or dt.date.today()) > self.end

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["end"] = self.end.isoformat() if self.end else None
        data["remaining"] = self.remaining
        return data


class BudgetParseError(ValueError):
    """The command printed something this parser does not recognise."""


def _number(token: str) -> float:
    return float(token.replace(",", "").replace("'", ""))


def _date(token: str) -> dt.date | None:
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y"):
        try:
            return dt.datetime.strptime(token, fmt).date()
        except ValueError:
            continue
    return None


def parse_saldo(text: str) -> list[Allocation]:
    rows = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) >= 9 and re.fullmatch(r"\d{8}", tokens[1]) and re.fullmatch(r"\d{8}", tokens[2]):
            rows.append(
                Allocation(
                    account=tokens[0],
                    total=_number(tokens[3]),
                    used=_number(tokens[5]),
                    unit="local core-hours",
                    end=_date(tokens[2]),
                )
            )
    return rows


def _column(header: list[str], *candidates: str) -> int | None:
    for candidate in candidates:
        for index, name in enumerate(header):
            if candidate in name:
                return index
    return None


def parse_jutil(text: str) -> list[Allocation]:
    lines = [line for line in text.splitlines() if "|" in line]
    if not lines:
        return []
    header = [h.strip().lower() for h in lines[0].strip().strip("|").split("|")]
    account = _column(header, "budget", "project")
    total = _column(header, "total", "quota", "granted", "allocated")
    used = _column(header, "used")
    end = _column(header, "end")
    if account is None or total is None or used is None:
        raise BudgetParseError(f"jutil: no budget/total/used columns in the header {header}")
    rows = []
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(header) or set(cells[total]) <= {"-", ""}:
            continue
        rows.append(
            Allocation(
                account=cells[account],
                total=_number(cells[total]),
                used=_number(cells[used]),
                unit="core-hours",
                end=_date(cells[end]) if end is not None else None,
            )
        )
    return rows


_USED_OF = re.compile(r"([0-9][0-9,.]*)\s*/\s*([0-9][0-9,.]*)")


def parse_lumi_allocations(text: str) -> list[Allocation]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 3 or not cells[0].startswith("project_"):
            continue
        match = _USED_OF.search(cells[2])  # GPU (used/allocated): LUMI-G jobs are billed in GPU-hours
        if match:
            rows.append(
                Allocation(
                    account=cells[0],
                    total=_number(match.group(2)),
                    used=_number(match.group(1)),
                    unit="GPU-hours",
                )
            )
    return rows


def parse_sbank(text: str) -> list[Allocation]:
    rows = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) >= 9 and _date(tokens[2]) and _date(tokens[3]) and tokens[0].isdigit():
            charged, available = _number(tokens[7]), _number(tokens[8])
            rows.append(
                Allocation(
                    account=tokens[5],
                    total=charged + available,
                    used=charged,
                    unit="node-hours",
                    end=_date(tokens[3]),
                    resource=tokens[4],
                )
            )
    return rows


PARSERS: dict[str, Callable[[str], list[Allocation]]] = {
    "saldo": parse_saldo,
    "jutil": parse_jutil,
    "lumi-allocations": parse_lumi_allocations,
    "sbank": parse_sbank,
}
