"""Which samples each rank sees at each step: a pure function of (seed, step), so a resume at step s sees
exactly the batches an uninterrupted run would have seen, and skipping batches is just moving s.

With `lengths`, batches are length-grouped (LLaVA's `group_by_modality_length`, transformers'
LengthGroupedSampler): each epoch's shuffled order is cut into mega-batches of `group` global batches,
each sorted by length and cut into global batches, and the batches are shuffled again. Every rank's
share is then of similar lengths, so little of a padded batch is padding; the order stays a pure
function of (seed, epoch)."""

from __future__ import annotations

import random


class BatchOrder:
    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        world_size: int,
        rank: int,
        seed: int,
        lengths: list[int] | None = None,
        group: int = 32,
    ) -> None:
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
        self.lengths = lengths
        self.group = group
        self._epoch = -1
        self._perm: list[int] = []

    def indices(self, step: int) -> list[int]:
        """Sample indices of this rank's share of global batch number `step` (0-based)."""
        epoch, batch = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._perm = self._epoch_order(epoch)
            self._epoch = epoch
        start = batch * self.global_batch
        share = self.global_batch // self.world_size
        chunk = self._perm[start : start + self.global_batch]
        return chunk[self.rank * share : (self.rank + 1) * share]

    def _epoch_order(self, epoch: int) -> list[int]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        perm = list(range(self.num_samples))
        rng.shuffle(perm)
        if self.lengths is None:
            return perm
        lengths = self.lengths
        perm = perm[: self.batches_per_epoch * self.global_batch]
        mega = self.global_batch * self.group
        batches = []
        for start in range(0, len(perm), mega):
            chunk = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
            batches += [chunk[k : k + self.global_batch] for k in range(0, len(chunk), self.global_batch)]
        rng.shuffle(batches)
        return [i for batch in batches for i in batch]
