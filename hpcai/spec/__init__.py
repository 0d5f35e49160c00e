"""What to run and where, as pure data: cluster profiles, workloads, users' programs, user config, jobspec."""
