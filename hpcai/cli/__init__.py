"""The `hpcai` command line: the typer app split by command group, printing and tables."""
