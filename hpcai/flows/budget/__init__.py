"""Compute budgets: the sites' own accounting commands, parsed, and what a job would cost."""
