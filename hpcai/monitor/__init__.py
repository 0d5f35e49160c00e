"""Watching training: the streaming spike/divergence detector, metrics readers and the rollback policy.
Pure Python (no torch): the same code runs inside the job and in the client."""
