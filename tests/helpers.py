"""Shared test helpers: submit the probe, wait for states."""

from __future__ import annotations

import time
from pathlib import Path

from hpcai.backends.schedulers import JobState
from hpcai.flows.resolve import prepare_job
from hpcai.flows.runs.submission import submit_run
from hpcai.flows.runs.views import RunView, status
from hpcai.spec.jobspec import Overrides
from hpcai.store.db import Store


def submit_probe(
    store: Store, cluster: str, *, time_limit: str = "00:10:00", nodes: int | None = None, **params: object
) -> str:
    settings = tuple(f"{k}={v}" for k, v in params.items())
    rendered = prepare_job(
        "probe", cluster, Overrides(set=settings, time=time_limit, nodes=nodes, run_id=_run_id(cluster))
    )
    return str(submit_run(rendered, store)["run_id"])


_counter = 0


def _run_id(cluster: str) -> str:
    global _counter
    _counter += 1
    return f"probe-{cluster}-{int(time.time() * 1000) % 10**9}-{_counter}"


def wait_for(store: Store, run_id: str, states: set[str], timeout: float = 120) -> RunView:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        (view,), _ = status(store, run_id)
        seen.append(view.state)
        if view.state in states:
            return view
        assert time.monotonic() < deadline, (
            f"{run_id} never reached {states}; states seen: {seen[-10:]}\n{_log_tail(view.run_dir)}"
        )
        time.sleep(0.5)


def _log_tail(run_dir: str | None, chars: int = 4000) -> str:
    """The end of what the run's job wrote, so that a run that never ended says why in CI's output."""
    if not run_dir or not (Path(run_dir) / "logs").is_dir():
        return "(no logs)"
    parts = []
    for path in sorted((Path(run_dir) / "logs").iterdir()):
        if path.is_file():
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)[-2 * chars :] or "(empty logs)"


def wait_terminal(store: Store, run_id: str, timeout: float = 120) -> RunView:
    return wait_for(store, run_id, {s.value for s in JobState if s.terminal}, timeout)


def wait_for_file(path: Path, timeout: float = 60, what: str = "the job never started") -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
