"""The contrastive losses against direct full-batch reference computations (no launch needed)."""

from __future__ import annotations

import math

import pytest
import torch

from hpcai.train.losses import infonce_loss, sigmoid_loss


def reference_infonce(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """CLIP's loss written out term by term."""
    n = image.shape[0]
    sims = [[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    i2t = -sum(sims[i][i] - math.log(sum(math.exp(s) for s in sims[i])) for i in range(n)) / n
    t2i = -sum(sims[j][j] - math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


def reference_sigmoid(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float) -> float:
    """SigLIP: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * float(image[i] @ text[j]) + bias
            total += math.log(1 / (1 + math.exp(-z * logit)))
    return -total / n


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen, dtype=torch.float64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen, dtype=torch.float64), dim=-1)
    return image, text


def test_infonce_matches_reference_and_sharding_is_exact(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, text = batch
    log_scale = torch.tensor([math.log(1 / 0.07)], dtype=torch.float64)
    full = infonce_loss(image, text, image, text, 0, log_scale)
    assert float(full) == pytest.approx(reference_infonce(image, text, 1 / 0.07), rel=1e-9)
    # Two "ranks" of 4, each scoring its slice against the gathered batch, average to the full loss.
    shards = [
        infonce_loss(image[r * 4 : r * 4 + 4], text[r * 4 : r * 4 + 4], image, text, r * 4, log_scale) for r in (0, 1)
    ]
    assert float(sum(shards) / 2) == pytest.approx(float(full), rel=1e-12)


def test_sigmoid_matches_reference_and_sharding_is_exact(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    image, text = batch
    log_scale = torch.tensor([math.log(10.0)], dtype=torch.float64)
    bias = torch.tensor([-10.0], dtype=torch.float64)
    full = sigmoid_loss(image, text, 0, log_scale, bias)
    assert float(full) == pytest.approx(reference_sigmoid(image, text, 10.0, -10.0), rel=1e-9)
    shards = [sigmoid_loss(image[r * 4 : r * 4 + 4], text, r * 4, log_scale, bias) for r in (0, 1)]
    assert float(sum(shards) / 2) == pytest.approx(float(full), rel=1e-12)


def test_siglip_initialisation_is_log10_and_minus10() -> None:
    from hpcai.train.clip import build_model

    model = build_model("tiny", "sigmoid")
    assert float(model.logit_scale.detach()) == pytest.approx(math.log(10))
    assert float(model.logit_bias.detach()) == -10.0 and model.logit_bias.requires_grad
    assert not build_model("tiny", "infonce").logit_bias.requires_grad
