"""`hpcai watch RUN`: the spike guard from the client, for workloads that do not use the hpcai runtime.

It follows the run's metrics (its metrics.jsonl, or the job's output parsed with the workload's
`log_metrics_regex`), feeds the same detector and policy as the in-job guard, and on a divergence or
non-finite loss cancels the job; when the run keeps hpcai-layout checkpoints it submits the next attempt
from the newest complete one before the onset with the LR scaled (the decision is in
`<run dir>/ROLLBACK.json` for the workload to read), otherwise it stops and says why.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcai.backends.schedulers import JobState
from hpcai.backends.session import Session
from hpcai.backends.transport import Transport
from hpcai.errors import HpcaiError
from hpcai.flows.runs.control import complete_checkpoints, pick_attempt, resume_run
from hpcai.flows.runs.reconcile import refresh
from hpcai.monitor.history import Point, compile_log_regex, parse_log_line, parse_metrics_line
from hpcai.monitor.policy import RollbackPolicy, decide
from hpcai.monitor.spikes import SpikeDetector
from hpcai.rundir.layout import RunDir
from hpcai.store.db import Store


@dataclass
class Source:
    """New points since the last read: whole lines only, from one file."""

    path: str
    regex: re.Pattern[str] | None
    offset: int = 0
    pending: bytes = b""
    points: list[Point] = field(default_factory=list)

    def read(self, transport: Transport) -> list[Point]:
        chunk = transport.read_from(self.path, self.offset)
        self.offset += len(chunk)
        self.pending += chunk
        if b"\n" not in self.pending:
            return []
        complete, _, self.pending = self.pending.rpartition(b"\n")
        found = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            point = self._parse(line)
            if point is not None:
                found.append(point)
        return found

    def _parse(self, line: str) -> Point | None:
        return parse_metrics_line(line) if self.regex is None else parse_log_line(self.regex, line)


def _policy(params: dict[str, Any]) -> RollbackPolicy:
    return RollbackPolicy(
        lr_factor=float(params.get("rollback_lr_factor", 0.5)),
        margin_steps=int(params.get("rollback_margin_steps", 0)),
        skip_batches=int(params.get("rollback_skip_batches", 0)),
        max_rollbacks=int(params.get("max_rollbacks", 3)),
        rollback_transient=bool(params.get("rollback_transient", False)),
    )


def watch_run(
    store: Store, run_id: str, *, say: Callable[[str], None], poll_s: float = 2.0, max_wait_s: float | None = None
) -> dict[str, Any]:
    from hpcai.spec.workloads import load_workload

    run = store.run(run_id)
    backends = Session.current()
    transport = backends.get(run.cluster).transport
    workload = load_workload(run.workload)
    pattern = workload.spec.log_metrics_regex
    params = dict(run.spec.get("parameters", {}))
    policy = _policy(params)
    detector = SpikeDetector()
    rollbacks = 0
    deadline = time.monotonic() + max_wait_s if max_wait_s else None
    attempt_number = None
    source: Source | None = None
    while True:
        refresh(store, [store.run(run.id)], backends)
        attempt = pick_attempt(store, run, None)
        if attempt.number != attempt_number and attempt.job_id is not None:
            attempt_number = attempt.number
            if pattern:
                log_path = backends.get(run.cluster).scheduler.log_paths(run.run_dir, attempt.job_id)[0]
                source = Source(log_path, compile_log_regex(pattern))
            elif source is None:
                source = Source(RunDir(run.run_dir).metrics, None)
            say(f"watching attempt {attempt.number} (job {attempt.job_id})")
        for point in source.read(transport) if source else []:
            for event in detector.update(point.step, point.loss, point.grad_norm):
                decision = decide(
                    event,
                    policy,
                    checkpoint_steps=complete_checkpoints(transport, run.run_dir),
                    rollbacks_so_far=rollbacks,
                    lr_scale=attempt.lr_scale,
                    rerun=False,  # the rerun check lives in the hpcai runtime, which `watch` is not
                )
                _log(transport, RunDir(run.run_dir).events, {**event.to_json(), "decision": decision.action})
                say(f"{event.kind} at step {event.onset_step} ({event.status}): {decision.action}")
                if decision.action not in {"rollback", "give_up"}:
                    continue
                if attempt.job_id and not JobState(attempt.state).terminal:
                    backends.get(run.cluster).scheduler.cancel(attempt.job_id)
                    store.add_event(run.id, "cancel", f"hpcai watch cancelled job {attempt.job_id}: {decision.reason}")
                record = {**decision.to_json(), "step": point.step, "time": time.time(), "by": "hpcai watch"}
                _log(transport, RunDir(run.run_dir).decisions, record)
                if decision.action == "give_up" or decision.checkpoint_step is None:
                    _wait_ended(store, run.id, backends)
                    store.update_attempt(run.id, attempt.number, reason=f"stopped by hpcai watch: {decision.reason}")
                    return {"run_id": run.id, "action": "stopped", "reason": decision.reason}
                _wait_ended(store, run.id, backends)
                store.update_attempt(run.id, attempt.number, reason=f"rolled back by hpcai watch: {decision.reason}")
                rollbacks += 1
                resume_run(
                    store,
                    run.id,
                    from_step=decision.checkpoint_step,
                    lr_scale=decision.lr_scale,
                    skip_batches=(decision.skip_to or 0) - (decision.skip_from or 0),
                )
                detector = SpikeDetector()
                source = None
                attempt_number = None
                break
            else:
                continue
            break
        latest = pick_attempt(store, run, None)
        if JobState(latest.state).terminal and latest.number == attempt_number:
            tail = source.read(transport) if source else []
            for point in tail:
                detector.update(point.step, point.loss, point.grad_norm)
            return {"run_id": run.id, "action": "finished", "state": latest.state, "rollbacks": rollbacks}
        if deadline and time.monotonic() > deadline:
            raise HpcaiError(f"hpcai watch: run {run.id} still {latest.state} after {max_wait_s:g} s.")
        time.sleep(poll_s)


def _wait_ended(store: Store, run_id: str, backends: Session, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        refresh(store, [store.run(run_id)], backends)
        if JobState(store.attempts(run_id)[-1].state).terminal or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def _log(transport: Transport, path: str, record: dict[str, Any]) -> None:
    transport.append_text(path, json.dumps(record) + "\n")
