"""hpcai: multimodal training on EuroHPC machines, from allocation to a run that looks after itself."""

__version__ = "0.1.0"
