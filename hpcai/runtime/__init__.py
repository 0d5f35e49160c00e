"""Imported inside the job: metrics, atomic checkpoints, the stop request before walltime, data order.

Submodules that need torch import it themselves; importing this package does not.
"""
