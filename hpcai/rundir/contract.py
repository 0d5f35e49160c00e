"""What the job script, the in-job runtime and the client share: the run folder's file names and the job's
exit codes, each named once here (the job script's template gets them from render/script.py)."""

# The job asks the training to stop (walltime near): created by the job script, read by the runtime.
STOP_FILE = "STOP"
# The run's checkpoints, one folder each; `latest` names the newest complete one.
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
# Start/end/requeue/rollback/submitted events, one JSON per line, written by the job script.
ATTEMPTS_LOG = "attempts.jsonl"
# The job's output and error files (the scheduler writes them).
LOGS_DIR = "logs"
# Touched by the job script when a launch starts: markers older than it were left by an earlier attempt.
ATTEMPT_START_FILE = ".attempt-start"
# Walltime requeues so far (digits), counted by the job script against MAX_REQUEUES.
REQUEUE_COUNT_FILE = "requeues"
# The job writes its own id here first thing.
JOB_ID_FILE = "job_id"
# A pipeline's next run folder: submitted by this run's job when it completes.
NEXT_STAGE_FILE = "next_stage"

# The runtime checkpointed because the job asked it to stop (walltime near): requeue and resume.
EXIT_REQUEUE = 85
# Times a run may checkpoint-and-requeue on its own before it stops and asks for a human.
MAX_REQUEUES = 20
# Jobs one run may start in all (walltime requeues, rollbacks, resubmissions), counted by the job script
# itself: whatever went wrong in Python, a chain of self-submitted jobs stops here.
MAX_ATTEMPTS = 30
ATTEMPT_COUNT_FILE = "attempt_count"
# Name of the rendered script inside the run directory (PBS/local resubmit it from there).
SCRIPT_NAME = "job.sh"
# Written by the runtime (rank 0) once its stop-checkpoint is complete. The launcher (torchrun) turns any
# non-zero worker exit into 1, so the job script trusts this marker, not the exit code, to requeue.
REQUEUE_MARKER = "REQUEUE"
# The spike guard decided to roll back: the runtime wrote the decision (JSON) to this file and exits with
# EXIT_ROLLBACK; the job script submits the next attempt, which applies the decision when it starts.
EXIT_ROLLBACK = 86
ROLLBACK_FILE = "ROLLBACK.json"
# The guard gave up (max_rollbacks reached, or nothing to roll back to): decision in this file, exit 87.
EXIT_GAVE_UP = 87
GAVE_UP_FILE = "GAVE_UP.json"
# Every decision the guard or `hpcai resume` made, one JSON per line (the run's lineage).
DECISIONS_LOG = "decisions.jsonl"
# Timed events besides steps (checkpoint saves, hangs), one JSON per line: the goodput account's input.
TIMELINE_LOG = "timeline.jsonl"
# Every detector event (spikes that recovered included), one JSON per line.
EVENTS_LOG = "events.jsonl"
# One live attempt per run: the job script holds this lease (job id and host on one line) while it
# trains and refreshes its time every LEASE_REFRESH_S; a lease older than LEASE_STALE_S is abandoned
# (its job died with its node). Another attempt that finds a fresh lease waits for it to go stale, and
# gives up with EXIT_LEASE_HELD if it does not; `hpcai resume` refuses while it is fresh.
LEASE_FILE = ".lease"
LEASE_REFRESH_S = 30
LEASE_STALE_S = 120
EXIT_LEASE_HELD = 88
# A node's hang watchdog stopped the workers (no rank progressed in time) and the run went back to the
# queue (hpcai.runtime.recovery: the node hung twice, or hangs kept coming back in this allocation).
EXIT_HANG = 89
# A node failed (its task killed with it, or a device/NCCL/RCCL error) and no spare node was left: the
# run went back to the queue without it.
EXIT_NODE_FAILED = 90
# Nodes the run's next launches and attempts leave out (srun --nodelist, sbatch --exclude), one a line.
EXCLUDE_FILE = "exclude_nodes"
# Nodes the job's recovery found failing (hpcai.runtime.recovery), one JSON per line: job, node, why,
# whether a spare replaced it and whether it is left out. The client's per-cluster exclusion list
# (`hpcai nodes`) is fed from it.
NODE_LOG = "node_failures.jsonl"
# Each failing rank's exception, errors/rank-N.json (hpcai.runtime.failure writes them).
ERRORS_DIR = "errors"
# Each experiment tracker's folder in the run folder (the runtime writes there; `hpcai sync` uploads wandb's).
TRACKER_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb"}
