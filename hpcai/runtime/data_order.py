"""Which samples each rank sees at each step: a pure function of (seed, step), so a resume at step s sees
exactly the batches an uninterrupted run would have seen, and skipping batches is just moving s."""

from __future__ import annotations

import random


class BatchOrder:
    def __init__(self, num_samples: int, global_batch: int, world_size: int, rank: int, seed: int) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {global_batch}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.batches_per_epoch = num_samples // global_batch
        self._epoch = -1
        self._perm: list[int] = []

    def indices(self, step: int) -> list[int]:
        """Sample indices of this rank's share of global batch number `step` (0-based)."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._perm = list(range(self.num_samples))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._perm)
            self._epoch = epoch
        start = batch * self.global_batch
        share = self.global_batch // self.world_size
        chunk = self._perm[start : start + self.global_batch]
        return chunk[self.rank * share : (self.rank + 1) * share]
