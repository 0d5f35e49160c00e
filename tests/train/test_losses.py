"""The contrastive losses against direct full-batch reference computations (no launch needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the training stack is the `train` extra")

from hpcai.train.losses import infonce_loss, sigmoid_loss  # noqa: E402


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


def clip_model(tmp_path: Path, kind: str = "clip") -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    from hpcai.train.parts import tiny_clip

    folder = tiny_clip(tmp_path, kind)
    return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_siglip_initialisation_is_log10_and_minus10(tmp_path: Path) -> None:
    from hpcai.train.clip import Contrastive

    model, tok = clip_model(tmp_path)
    wrapped = Contrastive(model, "sigmoid", tok.eos_token_id, pretrained=False)
    assert float(wrapped.logit_scale.detach()) == pytest.approx(math.log(10))
    assert float(wrapped.logit_bias.detach()) == -10.0 and wrapped.logit_bias.requires_grad
    model, tok = clip_model(tmp_path)
    assert not Contrastive(model, "infonce", tok.eos_token_id, pretrained=False).logit_bias.requires_grad


def test_the_temperature_keeps_its_gradient_and_is_clamped_after_the_step() -> None:
    """A clamp inside the loss zeroed the temperature's gradient once it reached ln 100 (open_clip clamps
    the parameter after the optimizer step instead)."""
    from types import SimpleNamespace

    from hpcai.train.clip import ClipTask
    from hpcai.train.losses import MAX_LOGIT_SCALE

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.nn.Parameter(torch.tensor([MAX_LOGIT_SCALE + 0.5]))
    infonce_loss(image, text, image, text, 0, scale).backward()
    assert scale.grad is not None and float(scale.grad.abs()) > 0
    holder = SimpleNamespace(logit_scale=scale)
    ClipTask.after_optimizer_step(None, holder)  # type: ignore[arg-type]
    assert float(scale.detach()) == pytest.approx(MAX_LOGIT_SCALE)


def test_clip_pools_the_text_at_its_end_token_not_at_the_highest_id(tmp_path: Path) -> None:
    """With a vocabulary whose end-of-text token has a low id (any tokenizer but OpenAI's), transformers'
    legacy `argmax(input_ids)` pooling picks a word in the middle: captions that differ only after it got
    identical features."""
    from hpcai.train.clip import Contrastive

    model, tok = clip_model(tmp_path)
    assert tok.eos_token_id < 10  # low, unlike OpenAI's 49407
    wrapped = Contrastive(model, "infonce", tok.eos_token_id, pretrained=False).eval()
    captions = ["a red square on a grey background", "a red square on a blue background"]
    batch = tok([c + tok.eos_token for c in captions], add_special_tokens=False, padding="max_length",
                max_length=32, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        features = wrapped.text_features(batch["input_ids"], batch["attention_mask"])
    assert not torch.allclose(features[0], features[1], atol=1e-5)
    # and the pooled position is the end token, not padding beyond it
    ids = batch["input_ids"][0]
    assert int((ids == tok.eos_token_id).nonzero()[0]) == int(batch["attention_mask"][0].sum()) - 1


def test_weight_decay_spares_gains_biases_and_temperatures() -> None:
    from hpcai.runtime.trainer import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.ones(1)))
    decay, spared = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert spared["weight_decay"] == 0.0 and len(spared["params"]) == 4  # bias, LN weight and bias, scale


def test_gradients_are_reduced_in_fp32_under_bf16() -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from hpcai.runtime.distributed import fp32_gradient_reduction

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's default
    fp32_gradient_reduction(plugin)
    policy = plugin.mixed_precision_policy
    assert isinstance(policy, MixedPrecisionPolicy)
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
