"""The run-folder contract: every file name once, typed readers of its records, job exit codes."""
