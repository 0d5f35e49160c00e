"""The run lifecycle: submission, reconciliation with the schedulers, views, and steering."""
