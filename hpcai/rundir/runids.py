"""Run ids: sortable by time, unique without coordination, safe in paths and directives."""

from __future__ import annotations

import datetime as dt
import secrets


def new_run_id(workload: str, stage: str | None = None) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    parts = [workload, *([stage] if stage else []), stamp, secrets.token_hex(2)]
    return "-".join(parts)
