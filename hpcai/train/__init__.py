"""The workloads' model, data and loss code (imported by workloads/*/train.py inside the job)."""
