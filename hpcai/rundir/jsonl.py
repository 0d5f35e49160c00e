"""JSON-lines records of a run folder, read through any FileReader: malformed and partial lines (one being
written right now, or one planted) are left out, and only objects are kept."""

from __future__ import annotations

import json
from typing import Any

from hpcai.rundir.batch import FileReader


def read_jsonl(transport: FileReader, path: str) -> list[dict[str, Any]]:
    text = transport.read_text(path) or ""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(record, dict):
            records.append(record)
    return records
