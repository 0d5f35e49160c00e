"""Callbacks that give a framework's training loop hpcai's guard (hpcai.runtime.api): HF Trainer / TRL."""
