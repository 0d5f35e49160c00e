"""The job script from a JobSpec: the script, shell quoting, setup lines."""
