"""Exit codes shared by the job script, the in-job runtime and the client."""

# The runtime checkpointed because the job asked it to stop (walltime near): requeue and resume.
EXIT_REQUEUE = 85
# Times a run may checkpoint-and-requeue on its own before it stops and asks for a human.
MAX_REQUEUES = 20
# Name of the rendered script inside the run directory (PBS/local resubmit it from there).
SCRIPT_NAME = "job.sh"
# Written by the runtime (rank 0) once its stop-checkpoint is complete. The launcher (torchrun) turns any
# non-zero worker exit into 1, so the job script trusts this marker, not the exit code, to requeue.
REQUEUE_MARKER = "REQUEUE"
