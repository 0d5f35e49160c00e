"""Batches made ahead of the step in DataLoader workers: images decoded and samples tokenized off the
critical path, in pinned memory, `prefetch` batches per worker ahead.

The loader is indexed by step, not by sample: item k is the batch of step `start + k`, which the batch
order (a pure function of seed and step, with the skips a rollback asked for) names. So a resume or a
relaunch at step s sees exactly the batches an uninterrupted run would have, with or without workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from hpcai.runtime.data_order import BatchOrder

Collate = Callable[[list[int]], dict[str, torch.Tensor]]


def sample_step(step: int, skips: list[tuple[int, int]]) -> int:
    """The position in the batch order that training step `step` reads: skipped batches moved past."""
    return step + sum(n for first, n in skips if step >= first)


class StepBatches(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, collate: Collate, order: BatchOrder, skips: list[tuple[int, int]], start: int, end: int):
        self.collate = collate
        self.order = order
        self.skips = list(skips)
        self.start = start
        self.end = end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.collate(self.order.indices(sample_step(self.start + k, self.skips)))


def step_batches(
    collate: Collate, order: BatchOrder, skips: list[tuple[int, int]], start: int, end: int, workers: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The CPU batches of steps start..end-1, in order; `workers` = 0 makes them inline."""
    dataset = StepBatches(collate, order, skips, start, end)
    if workers <= 0:
        return (dataset[k] for k in range(len(dataset)))
    loader: Any = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # each item already is a batch
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2,
        persistent_workers=False,
    )
    return iter(loader)


# A batch's count of samples its collate could not make (a tensor of one number): the trainer takes it out
# before the batch goes to the model, sums it over ranks, shows it and fails the run past max_left_out.
LEFT_OUT = "hpcai_left_out"


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
