"""The batch order: a pure function of (seed, step), every sample once per epoch, and -- with lengths --
batches of similar lengths, so little of a padded batch is padding."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("torch", reason="the training stack is the `train` extra")

from hpcai.runtime.data_order import BatchOrder
from hpcai.runtime.loader import sample_step, step_batches


def long_tailed_lengths(n: int, seed: int = 0) -> list[int]:
    """Mean ~500 tokens, up to 2048, 6% short text-only samples (the shape of LLaVA-665k's mix)."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        if rng.random() < 0.06:
            lengths.append(rng.randint(20, 200))
        else:
            lengths.append(min(2048, 576 + int(rng.lognormvariate(-1.5, 1.2) * 400)))
    return lengths


def padding_waste(order: list[list[int]], lengths: list[int]) -> float:
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in order)
    return 1 - sum(lengths[i] for batch in order for i in batch) / slots


def rank_batches(n: int, lengths: list[int] | None, world: int = 4, per_rank: int = 8) -> list[list[int]]:
    orders = [BatchOrder(n, per_rank * world, world, r, seed=1, lengths=lengths) for r in range(world)]
    return [o.indices(step) for step in range(n // (per_rank * world)) for o in orders]


@pytest.mark.parametrize("grouped", [False, True])
def test_every_sample_once_per_epoch_and_the_same_order_every_time(grouped: bool) -> None:
    n = 4096
    lengths = long_tailed_lengths(n) if grouped else None
    batches = rank_batches(n, lengths)
    seen = [i for b in batches for i in b]
    assert sorted(seen) == list(range(n))
    assert rank_batches(n, lengths) == batches  # deterministic: a resume sees the same batches


def test_length_grouping_cuts_the_padding_of_a_long_tailed_mix() -> None:
    lengths = long_tailed_lengths(8192)
    random_waste = padding_waste(rank_batches(8192, None), lengths)
    grouped_waste = padding_waste(rank_batches(8192, lengths), lengths)
    assert random_waste > 0.3 and grouped_waste < 0.05, (random_waste, grouped_waste)


def test_the_loader_gives_the_same_batches_with_or_without_workers() -> None:
    import torch

    order = BatchOrder(64, 8, 2, 1, seed=3)

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        return {"ids": torch.tensor(indices)}

    skips = [(3, 2)]
    inline = [b["ids"].tolist() for b in step_batches(collate, order, skips, 2, 9, workers=0)]
    ahead = [b["ids"].tolist() for b in step_batches(collate, order, skips, 2, 9, workers=2)]
    assert inline == ahead
    assert inline == [order.indices(sample_step(s, skips)) for s in range(2, 9)]
    assert sample_step(2, skips) == 2 and sample_step(3, skips) == 5  # steps from 3 read two batches later
