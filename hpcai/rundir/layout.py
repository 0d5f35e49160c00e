"""A run directory's layout, named once: the files the client, the job script and the in-job runtime share.

The job script (templates/_body.sh.j2) and the runtime write these names; `RunDir` is how the client
refers to them on any transport (paths are strings: the directory may be on a cluster)."""

from __future__ import annotations

from dataclasses import dataclass

from hpcai.rundir.contract import (
    ATTEMPT_COUNT_FILE,
    ATTEMPTS_LOG,
    CHECKPOINTS_DIR,
    DECISIONS_LOG,
    ERRORS_DIR,
    EVENTS_LOG,
    GAVE_UP_FILE,
    JOB_ID_FILE,
    LEASE_FILE,
    LOGS_DIR,
    NEXT_STAGE_FILE,
    NODE_LOG,
    REQUEUE_MARKER,
    ROLLBACK_FILE,
    SCRIPT_NAME,
    TIMELINE_LOG,
)

METRICS_LOG = "metrics.jsonl"  # one line per step, written by the runtime (rank 0)
SPEC_FILE = "spec.json"  # the resolved job, written at submit


@dataclass(frozen=True)
class RunDir:
    root: str

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def script(self) -> str:
        return self.path(SCRIPT_NAME)

    @property
    def spec(self) -> str:
        return self.path(SPEC_FILE)

    @property
    def logs(self) -> str:
        return self.path(LOGS_DIR)

    @property
    def attempts(self) -> str:
        return self.path(ATTEMPTS_LOG)

    @property
    def next_stage(self) -> str:
        return self.path(NEXT_STAGE_FILE)

    @property
    def job_id(self) -> str:
        return self.path(JOB_ID_FILE)

    @property
    def metrics(self) -> str:
        return self.path(METRICS_LOG)

    @property
    def node_log(self) -> str:
        return self.path(NODE_LOG)

    @property
    def timeline(self) -> str:
        return self.path(TIMELINE_LOG)

    @property
    def events(self) -> str:
        return self.path(EVENTS_LOG)

    @property
    def decisions(self) -> str:
        return self.path(DECISIONS_LOG)

    @property
    def rollback(self) -> str:
        return self.path(ROLLBACK_FILE)

    @property
    def gave_up(self) -> str:
        return self.path(GAVE_UP_FILE)

    @property
    def attempt_count(self) -> str:
        return self.path(ATTEMPT_COUNT_FILE)

    @property
    def lease(self) -> str:
        return self.path(LEASE_FILE)

    @property
    def requeue_marker(self) -> str:
        return self.path(REQUEUE_MARKER)

    @property
    def errors(self) -> str:
        return self.path(ERRORS_DIR)

    @property
    def checkpoints(self) -> str:
        return self.path(CHECKPOINTS_DIR)
