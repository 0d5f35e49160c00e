"""What `clusters list` shows of every profile, remembered between commands.

Validating every profile costs the pydantic import and the validation itself at each start (4x the
bare `import typer, rich` before this). A profile's summary is kept in the state directory under the
size and mtime of the files it was validated from; a changed, added or removed file is validated again
(and an invalid one fails as before). Nothing else is cached: a command that uses a profile still loads and
validates it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hpcai.spec.profile_files import profile_names, profile_source

CACHE_VERSION = 1


def _cache_path() -> Path:
    from hpcai.paths import state_dir

    return state_dir() / "profile-index.json"


def _key(files: list[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_mtime_ns, p.stat().st_size] for p in files]


def profile_summaries() -> list[dict[str, Any]]:
    """name, scheduler, accelerator, GPUs per node and description of every profile, validated."""
    path = _cache_path()
    try:
        cache = json.loads(path.read_text())
        entries = cache["profiles"] if cache.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        entries = {}
    summaries, changed = [], False
    for name in profile_names():
        key = _key(profile_source(name))
        entry = entries.get(name)
        if not isinstance(entry, dict) or entry.get("key") != key:
            from hpcai.spec.profiles import load_profile  # validates: an invalid profile fails here as before

            profile = load_profile(name)
            entry = {"key": key, "summary": {"name": name, "scheduler": profile.scheduler,
                                             "accelerator": profile.accelerator, "gpus_per_node": profile.node.gpus,
                                             "description": profile.description}}  # fmt: skip
            entries[name] = entry
            changed = True
        summaries.append(dict(entry["summary"]))
    if changed or set(entries) != {s["name"] for s in summaries}:
        _save(path, {k: v for k, v in entries.items() if k in {s["name"] for s in summaries}})
    return summaries


def _save(path: Path, entries: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "profiles": entries}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs the next listing its validation
