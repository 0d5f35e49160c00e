"""The LLaVA loss is the mean over every supervised token of the step on all ranks (torchtitan's and current
transformers' normalisation), not a mean of per-rank means: on 2 real ranks (gloo) with 3 and 30 supervised
tokens, the averaged gradient equals the one-process gradient of the same tokens."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hpcai.train.chat import IGNORE  # noqa: E402
from hpcai.train.llava import token_scale  # noqa: E402

VOCAB, WIDTH = 11, 5


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    labels = torch.randint(0, VOCAB, (2, 24), generator=generator)
    supervised = 3 if rank == 0 else 30  # rank 0's batch has few answer tokens, rank 1's many
    mask = torch.ones(2 * 23, dtype=torch.bool)
    mask[torch.randperm(2 * 23, generator=generator)[:supervised]] = False
    shifted = labels[:, 1:].reshape(-1).clone()
    shifted[mask] = IGNORE
    labels[:, 1:] = shifted.reshape(2, 23)
    inputs = torch.randn(2, 23, WIDTH, generator=generator)
    return inputs, labels


def _loss(weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, accelerator: object) -> torch.Tensor:
    logits = inputs @ weight
    flat = logits.reshape(-1, VOCAB)
    summed = torch.nn.functional.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")
    return summed * token_scale(labels, accelerator)


class _Ranks:
    """What token_scale needs of accelerate's Accelerator, over torch.distributed."""

    num_processes = 2

    @staticmethod
    def reduce(tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        torch.distributed.all_reduce(tensor)
        return tensor


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    weight = torch.ones(WIDTH, VOCAB).mul_(0.1).requires_grad_()
    _loss(weight, *_data(rank), _Ranks()).backward()
    assert weight.grad is not None
    torch.distributed.all_reduce(weight.grad)
    weight.grad /= 2  # FSDP's and DDP's gradient averaging over ranks
    if rank == 0:
        torch.save(weight.grad, out)
    torch.distributed.destroy_process_group()


def test_the_gradient_is_the_mean_over_every_token_of_the_step(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "grad.pt")
    torch.multiprocessing.spawn(_rank, args=(port, out), nprocs=2, join=True)
    distributed = torch.load(out)
    weight = torch.ones(WIDTH, VOCAB).mul_(0.1).requires_grad_()
    (inputs0, labels0), (inputs1, labels1) = _data(0), _data(1)
    one = _loss(weight, torch.cat([inputs0, inputs1]), torch.cat([labels0, labels1]), object())
    one.backward()
    assert torch.allclose(distributed, weight.grad, atol=1e-6), (distributed - weight.grad).abs().max()
    # what the mean of per-rank means gave: far from it
    per_rank = (
        sum(
            torch.autograd.grad(_loss(weight, x, y, object()), weight)[0]
            for x, y in ((inputs0, labels0), (inputs1, labels1))
        )
        / 2
    )
    assert not torch.allclose(per_rank, weight.grad, atol=1e-3)
